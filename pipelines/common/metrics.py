"""Metrics shared by tasks: segmentation overlap and surface distance (MONAI), and summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

#: BraTS 2021+ convention for HD95 when exactly one of prediction and reference is empty
#: (the diagonal of the 240×240×155 1 mm grid, in mm).
HD95_EMPTY_PENALTY = 373.13


def dice_hd95(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], region_names: Sequence[str]
) -> dict[str, float]:
    """Dice and HD95 per binary region with MONAI's metrics.

    Args:
        pred: (R, X, Y, Z) boolean predicted regions.
        ref: (R, X, Y, Z) boolean reference regions.
        spacing: voxel size in mm, for HD95 in mm.
        region_names: R names, used as ``dice_<name>`` and ``hd95_<name>`` keys.

    Returns:
        Per region: Dice (1.0 when both are empty) and HD95 in mm (0 when both are empty,
        :data:`HD95_EMPTY_PENALTY` when exactly one is empty).
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance

    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    p = torch.as_tensor(np.asarray(pred, dtype=bool)[None]).float()
    r = torch.as_tensor(np.asarray(ref, dtype=bool)[None]).float()
    dice = compute_dice(p, r, include_background=True, ignore_empty=False)[0]
    out: dict[str, float] = {}
    for i, name in enumerate(region_names):
        out[f"dice_{name}"] = float(dice[i])
        p_any, r_any = bool(p[0, i].any()), bool(r[0, i].any())
        if not p_any and not r_any:
            hd = 0.0
        elif p_any != r_any:
            hd = HD95_EMPTY_PENALTY
        else:
            hd = float(
                compute_hausdorff_distance(
                    p[:, i : i + 1], r[:, i : i + 1], include_background=True, percentile=95, spacing=list(spacing)
                )[0, 0]
            )
        out[f"hd95_{name}"] = hd
    return out


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Mean, median, std, min, max and count of the finite values."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }
