"""Finding prostate cases on disk: ``<case>/t2.nii.gz`` with (labelled) or without ``<case>/zones.nii.gz``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.common import keys

__all__ = ["IMAGE_NAMES", "LABEL_NAMES", "discover_cases", "find_named"]

IMAGE_NAMES = ("t2.nii.gz", "t2.nii")
LABEL_NAMES = ("zones.nii.gz", "zones.nii")


def find_named(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` that is a file in ``folder`` (case-insensitive), else ``None``."""
    if not folder.is_dir():
        return None
    by_lower = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    return next((by_lower[n] for n in names if n in by_lower), None)


def discover_cases(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Labelled and unlabelled cases under ``root`` (any depth), sorted by case id.

    Returns:
        ``(labelled, unlabelled)``: ``{case_id, t2, zones}`` and ``{case_id, t2}`` dicts.

    Raises:
        ValueError: when ``root`` holds no case at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    labelled: list[dict[str, Any]] = []
    unlabelled: list[dict[str, Any]] = []
    folders = sorted({p.parent for name in IMAGE_NAMES for p in root.rglob(name)} | {root})
    for folder in folders:
        image = find_named(folder, IMAGE_NAMES)
        if image is None:
            continue
        case = {keys.CASE_ID: folder.name, "t2": str(image)}
        zones = find_named(folder, LABEL_NAMES)
        if zones is not None:
            labelled.append({**case, "zones": str(zones)})
        else:
            unlabelled.append(case)
    if not labelled and not unlabelled:
        raise ValueError(f"{root}: no prostate cases found (need <case>/t2.nii.gz and <case>/zones.nii.gz)")
    return labelled, unlabelled
