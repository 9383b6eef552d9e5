"""Finding BraTS cases on disk (the split is the runner's seeded ``split_indices``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.brats.transforms import MODALITIES, parse_name
from pipelines.common import keys


def discover_cases(root: Path, require_label: bool = True) -> list[dict[str, Any]]:
    """Every case under ``root`` (any depth) in either naming: ``{case_id, t1, t1ce, t2, flair[, seg]}``.

    Args:
        root: dataset root (e.g. ``MICCAI_BraTS2020_TrainingData`` or ``ASNR-MICCAI-BraTS2023-GLI-...``).
        require_label: keep only cases with a segmentation.

    Raises:
        ValueError: when no complete case is found.
    """
    root = Path(root)
    found: dict[tuple[Path, str], dict[str, Any]] = {}
    for f in sorted(root.rglob("*.nii*")):
        parsed = parse_name(f)
        if parsed is None:
            continue
        case, role, _ = parsed
        found.setdefault((f.parent, case), {keys.CASE_ID: case})[role] = str(f)
    cases = [c for c in found.values() if all(m in c for m in MODALITIES) and (not require_label or "seg" in c)]
    if not cases:
        what = "labelled " if require_label else ""
        raise ValueError(f"{root}: no complete {what}BraTS cases found (need *_t1/_t1ce/_t2/_flair[/_seg].nii.gz)")
    return sorted(cases, key=lambda c: c[keys.CASE_ID])
