"""Data cards: found from the source tree, refused for unsafe names, and found from an installed wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from models import get_model_spec, list_models
from pipelines.common.cards import CARDS_SUBDIR, data_card_path, data_cards_dirs, read_data_card

REPO = Path(__file__).resolve().parents[3]
SOURCE_CARDS = REPO / "data_cards"
PIP = ["-m", "pip", "--disable-pip-version-check", "--no-input"]

# Runs inside the installed copy; prints nothing on success.
_CHECK_INSTALLED = """
import sys
from pathlib import Path

import pipelines.common.cards as cards

root, repo = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
module = Path(cards.__file__).resolve()
assert module.is_relative_to(root) and not module.is_relative_to(repo), module
path = cards.data_card_path("brats.md")
assert path is not None, cards.data_cards_dirs()
assert path.resolve().is_relative_to(root / "share" / "medinfer" / "data_cards"), path
text = cards.read_data_card("brats.md")
assert text == Path(sys.argv[3]).read_text(encoding="utf-8"), "card text differs from the source card"
assert cards.read_data_card("../README.md") is None
"""


def _registry_cards() -> list[str]:
    return sorted({get_model_spec(name).data_card for name in list_models()})


@pytest.mark.parametrize("name", [*_registry_cards(), "synthetic.md"])
def test_source_tree_finds_every_card(name: str) -> None:
    path = data_card_path(name)
    assert path is not None
    assert path.is_file()
    assert path.parent == data_cards_dirs()[0] == SOURCE_CARDS
    assert read_data_card(name) == (SOURCE_CARDS / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "name",
    ["../README.md", "/etc/passwd", "x/brats.md", "../data_cards/brats.md", "..", ".md", "brats", "", "x\\brats.md"],
)
def test_unsafe_or_malformed_names_are_refused(name: str) -> None:
    assert data_card_path(name) is None
    assert read_data_card(name) is None


def test_missing_card_is_none() -> None:
    assert data_card_path("no-such-card.md") is None
    assert read_data_card("no-such-card.md") is None


def _copy_sources(dst: Path) -> None:
    """Copy what the build needs (pyproject, readme, package roots, data_cards) so the shared tree stays clean."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    roots = {pkg.split(".")[0] for pkg in project["tool"]["setuptools"]["packages"]}
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dst.mkdir()
    for name in ("pyproject.toml", project["project"]["readme"]):
        shutil.copy2(REPO / name, dst / name)
    for name in sorted(roots | {"data_cards"}):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A medinfer wheel built once from a copy of the source tree."""
    base = tmp_path_factory.mktemp("cards_wheel")
    src, out = base / "src", base / "dist"
    _copy_sources(src)
    subprocess.run(
        [sys.executable, *PIP, "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), "-q"],
        cwd=src,
        check=True,
        timeout=120,
    )
    (found,) = out.glob("medinfer-*.whl")
    return found


@pytest.mark.slow
def test_wheel_ships_every_card_as_data(wheel: Path) -> None:
    version = wheel.name.split("-")[1]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    data_dir = f"medinfer-{version}.data/data/{CARDS_SUBDIR.as_posix()}"
    expected = {f"{data_dir}/{card.name}" for card in SOURCE_CARDS.glob("*.md")}
    assert f"{data_dir}/brats.md" in expected
    assert expected <= names
    assert "pipelines/common/cards.py" in names


def _run_check(python: Path | str, args: list[str], root: Path, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(python), *args, "-c", _CHECK_INSTALLED, str(root), str(REPO), str(SOURCE_CARDS / "brats.md")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.mark.slow
def test_installed_into_a_fresh_venv_finds_cards(wheel: Path, tmp_path: Path) -> None:
    # A real `pip install` into an environment: the cards land in <venv>/share/medinfer/data_cards.
    venv = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")
    # `pip --python` installs into that interpreter's environment and never touches the running one.
    subprocess.run(
        [sys.executable, *PIP, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        timeout=120,
    )
    assert (venv / CARDS_SUBDIR / "brats.md").is_file()
    _run_check(python, [], venv, tmp_path, _clean_env())


@pytest.mark.slow
def test_installed_under_a_prefix_finds_cards(wheel: Path, tmp_path: Path) -> None:
    # `pip install --prefix`: neither sys.prefix nor the user scheme points there, so the lookup must derive
    # the prefix from where the package itself was installed.
    prefix = tmp_path / "prefix"
    # --ignore-installed: the running environment holds an editable medinfer that pip must not uninstall.
    subprocess.run(
        [
            sys.executable,
            *PIP,
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "-q",
            "--prefix",
            str(prefix),
            str(wheel),
        ],
        check=True,
        timeout=120,
    )
    assert (prefix / CARDS_SUBDIR / "brats.md").is_file()
    (module,) = prefix.rglob("pipelines/common/cards.py")
    env = _clean_env()
    env["PYTHONPATH"] = str(module.parents[2])
    # -S: no site-packages of the running environment, so its editable install cannot shadow the copy.
    _run_check(sys.executable, ["-S"], prefix, tmp_path, env)
