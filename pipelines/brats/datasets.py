"""Finding BraTS cases on disk and splitting them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

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


def split_cases(cases: list[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded random split into (train, validation); at least one case on each side when possible."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = max(1, round(len(cases) * val_fraction)) if len(cases) > 1 else 0
    val = [cases[i] for i in order[:n_val]]
    train = [cases[i] for i in order[n_val:]]
    return train, val
