"""Dependency floors exclude versions with known advisories: in pyproject.toml, and in what is installed."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

#: package → (first fixed version, advisory) for each advisory that matters to the service
ADVISORIES: dict[str, list[tuple[str, str]]] = {
    "torch": [
        ("2.6.0", "CVE-2025-32434: torch.load(weights_only=True) runs code from a crafted checkpoint"),
        ("2.10.0", "CVE-2026-24747: the weights_only unpickler corrupts memory on a crafted checkpoint"),
    ],
    "starlette": [
        ("0.40.0", "CVE-2024-47874: multipart form fields without a size limit (DoS)"),
        ("0.47.2", "CVE-2025-54121: large multipart files block the event loop (DoS)"),
        ("0.49.1", "CVE-2025-62727: quadratic Range header merging in FileResponse (DoS)"),
        ("1.0.1", "CVE-2026-48710: Host header poisons request.url"),
        ("1.3.0", "CVE-2026-54282: request path moves request.url's authority"),
        ("1.3.1", "CVE-2026-54283: form limits ignored for urlencoded bodies (DoS)"),
    ],
    "python-multipart": [
        ("0.0.18", "CVE-2024-53981: bytes around the boundaries parsed one at a time (DoS)"),
        ("0.0.22", "CVE-2026-24486: path traversal with UPLOAD_KEEP_FILENAME"),
        ("0.0.26", "CVE-2026-40347: large preamble or epilogue (DoS)"),
        ("0.0.27", "CVE-2026-42561: unbounded part headers (DoS)"),
        ("0.0.30", "CVE-2026-53538, CVE-2026-53539: urlencoded field separators and limits"),
        ("0.0.31", "CVE-2026-53540: negative Content-Length reads the whole body"),
    ],
}


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    return {(r := Requirement(d)).name.lower(): r for d in deps}


def _floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", ">", "==", "~=")]
    assert floors, f"{req} has no lower bound"
    return max(floors)


@pytest.mark.parametrize("package", sorted(ADVISORIES))
def test_pyproject_floor_excludes_every_advisory(package: str) -> None:
    req = _requirements().get(package)
    assert req is not None, f"{package} must be a direct dependency so that its floor holds"
    for fixed, advisory in ADVISORIES[package]:
        assert _floor(req) >= Version(fixed), f"{req}: the floor must be >= {fixed} ({advisory})"


@pytest.mark.parametrize("package", sorted(ADVISORIES))
def test_installed_version_is_past_every_advisory(package: str) -> None:
    installed = Version(version(package))
    for fixed, advisory in ADVISORIES[package]:
        assert installed >= Version(fixed), f"{package} {installed} is affected by {advisory}"


@pytest.mark.parametrize("package", [*sorted(ADVISORIES), "fastapi"])
def test_installed_versions_satisfy_pyproject(package: str) -> None:
    req = _requirements()[package]
    installed = version(package)
    assert req.specifier.contains(installed, prereleases=True), f"installed {package} {installed} is outside {req}"


def test_the_pinned_torch_build_is_allowed() -> None:
    """The Makefile installs ``torch==2.13.0`` first (the CPU build): the range must keep it."""
    assert _requirements()["torch"].specifier.contains("2.13.0")
