"""Metrics shared by tasks: segmentation overlap and surface distance (MONAI), classification, and summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

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


# --- Classification -------------------------------------------------------------------------------------------------
# Multi-label metrics take a multi-hot ``y`` (N, C) and scores or binary decisions of the same shape; single-label
# metrics take integer class indices (N,) (and probabilities (N, K) for AUROC). Undefined values are NaN, never 0,
# and the macro means skip them, so a class missing from a small split does not drag a mean down.

#: Global-threshold grid of :func:`fmax` (0:0.01:1).
FMAX_GRID = np.linspace(0, 1, 101)
#: Per-class threshold grid of :func:`best_thresholds` (0.01:0.01:0.99).
THRESHOLD_GRID = np.linspace(0.01, 0.99, 99)


def _multilabel(y: np.ndarray, other: np.ndarray, other_name: str) -> tuple[np.ndarray, np.ndarray]:
    """``y`` and a second (N, C) array as numpy, checked: both 2-D, the same shape, ``y`` binary."""
    y, other = np.asarray(y), np.asarray(other)
    if y.ndim != 2:
        raise ValueError(f"y must be a 2-D (N, C) multi-hot array, got shape {y.shape}")
    if other.shape != y.shape:
        raise ValueError(f"{other_name} shape {other.shape} differs from y shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold only 0 and 1")
    return y, other


def _mean_finite(values: np.ndarray) -> float:
    """Mean of the finite entries, NaN when there are none."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def _class_indices(values: np.ndarray, name: str, num_classes: int | None = None) -> np.ndarray:
    """``values`` as a 1-D int64 array of class indices in ``[0, num_classes)`` (``[0, ∞)`` when None)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds a negative class index ({int(arr.min())})")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise ValueError(f"{name} holds class index {int(arr.max())}, outside [0, {num_classes})")
    return arr


def _single_label(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Checked class-index vectors of equal length."""
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer)):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    t = _class_indices(y_true, "y_true", num_classes)
    p = _class_indices(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_pred length {p.shape[0]} differs from y_true length {t.shape[0]}")
    return t, p


def _per_class(y: np.ndarray, p: np.ndarray, score: Any, need_negatives: bool) -> np.ndarray:
    """``score(y_c, p_c)`` per class; NaN where a class has no positives (or, if needed, no negatives)."""
    y, p = _multilabel(y, p, "p")
    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        pos = y[:, c].sum()
        if pos > 0 and (pos < y.shape[0] or not need_negatives):
            out[c] = score(y[:, c], p[:, c])
    return out


def per_class_auroc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC per class of a multi-label problem.

    Args:
        y: (N, C) multi-hot targets (0/1, any numeric or boolean dtype).
        p: (N, C) scores; any monotone score works (probabilities or logits).

    Returns:
        (C,) float64 AUROC; NaN where a class lacks positives or negatives.

    Raises:
        ValueError: if ``y`` is not 2-D or not binary, or ``p`` has another shape.
    """
    from sklearn.metrics import roc_auc_score

    return _per_class(y, p, roc_auc_score, need_negatives=True)


def macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean AUROC over the classes that have both positives and negatives.

    Args:
        y: (N, C) multi-hot targets.
        p: (N, C) scores.

    Returns:
        The mean of the finite :func:`per_class_auroc` values; NaN if there are none.

    Raises:
        ValueError: on the shapes or values :func:`per_class_auroc` rejects.
    """
    return _mean_finite(per_class_auroc(y, p))


def per_class_auprc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision (area under the precision-recall curve, sklearn's step-wise sum) per class.

    Args:
        y: (N, C) multi-hot targets.
        p: (N, C) scores.

    Returns:
        (C,) float64 average precision; NaN where a class has no positives.

    Raises:
        ValueError: if ``y`` is not 2-D or not binary, or ``p`` has another shape.
    """
    from sklearn.metrics import average_precision_score

    return _per_class(y, p, average_precision_score, need_negatives=False)


def macro_auprc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean average precision over the classes that have positives.

    Args:
        y: (N, C) multi-hot targets.
        p: (N, C) scores.

    Returns:
        The mean of the finite :func:`per_class_auprc` values; NaN if there are none.

    Raises:
        ValueError: on the shapes or values :func:`per_class_auprc` rejects.
    """
    return _mean_finite(per_class_auprc(y, p))


def _micro_f1(y: np.ndarray, decisions: np.ndarray) -> float:
    # Unchecked core shared with fmax; float sums of products, as the ECG evaluation computes them.
    tp = float((decisions * y).sum())
    fp = float((decisions * (1 - y)).sum())
    fn = float(((1 - decisions) * y).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan


def micro_f1(y: np.ndarray, decisions: np.ndarray) -> float:
    """Micro-averaged F1 of binary decisions: ``2 TP / (2 TP + FP + FN)`` pooled over all classes.

    Args:
        y: (N, C) multi-hot targets.
        decisions: (N, C) binary decisions (0/1 or boolean).

    Returns:
        Micro F1; NaN when ``TP + FP + FN == 0`` (no positives and no positive decisions).

    Raises:
        ValueError: if ``y`` is not 2-D or not binary, or ``decisions`` has another shape or is not binary.
    """
    y, decisions = _multilabel(y, decisions, "decisions")
    if not np.isin(decisions, (0, 1)).all():
        raise ValueError("decisions must hold only 0 and 1")
    return _micro_f1(y, decisions)


def per_class_f1(y: np.ndarray, decisions: np.ndarray) -> np.ndarray:
    """F1 per class of binary decisions.

    Args:
        y: (N, C) multi-hot targets.
        decisions: (N, C) binary decisions (0/1 or boolean).

    Returns:
        (C,) float64 F1; NaN for a class with no positives and no positive decisions.

    Raises:
        ValueError: if ``y`` is not 2-D or not binary, or ``decisions`` has another shape or is not binary.
    """
    y, decisions = _multilabel(y, decisions, "decisions")
    if not np.isin(decisions, (0, 1)).all():
        raise ValueError("decisions must hold only 0 and 1")
    yf, df = y.astype(np.float64), decisions.astype(np.float64)
    tp = (yf * df).sum(0)
    denom = 2 * tp + ((1 - yf) * df).sum(0) + (yf * (1 - df)).sum(0)
    out = np.full(y.shape[1], np.nan)
    np.divide(2 * tp, denom, out=out, where=denom > 0)
    return out


def macro_f1(y: np.ndarray, decisions: np.ndarray) -> float:
    """Mean F1 over the classes where it is defined.

    Args:
        y: (N, C) multi-hot targets.
        decisions: (N, C) binary decisions.

    Returns:
        The mean of the finite :func:`per_class_f1` values; NaN if there are none.

    Raises:
        ValueError: on the shapes or values :func:`per_class_f1` rejects.
    """
    return _mean_finite(per_class_f1(y, decisions))


def fmax(y: np.ndarray, p: np.ndarray) -> float:
    """Best micro-F1 over one global threshold (``p >= t``) on :data:`FMAX_GRID` (0, 0.01, …, 1).

    Args:
        y: (N, C) multi-hot targets.
        p: (N, C) probabilities.

    Returns:
        The largest micro F1 over the grid; thresholds where it is undefined are skipped, except that it is NaN
        when undefined already at t = 0 (e.g. no elements).

    Raises:
        ValueError: if ``y`` is not 2-D or not binary, or ``p`` has another shape.
    """
    y, p = _multilabel(y, p, "p")
    # Python's max over the grid in order, exactly as the ECG evaluation takes it (NaN handling included).
    return max((_micro_f1(y, (p >= t).astype(np.float32)) for t in FMAX_GRID), default=math.nan)


def best_thresholds(y: np.ndarray, p: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-class decision threshold (``p >= t``) maximising F1, chosen on validation data.

    Args:
        y: (N, C) multi-hot targets.
        p: (N, C) probabilities.
        default: threshold for classes without positives.

    Returns:
        (C,) float64 thresholds from :data:`THRESHOLD_GRID` (0.01, 0.02, …, 0.99); on ties the lowest one.

    Raises:
        ValueError: if ``y`` is not 2-D or not binary, or ``p`` has another shape.
    """
    y, p = _multilabel(y, p, "p")
    out = np.full(y.shape[1], default, dtype=np.float64)
    for c in range(y.shape[1]):
        pos = y[:, c]
        if pos.sum() == 0:
            continue
        pred = p[:, c][None, :] >= THRESHOLD_GRID[:, None]  # (T, N)
        tp = (pred * pos).sum(1)
        f1 = 2 * tp / (pred.sum(1) + pos.sum())
        out[c] = float(THRESHOLD_GRID[int(np.argmax(f1))])  # argmax: first maximum, i.e. the lowest threshold
    return out


def per_class_rows(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray | Sequence[float], labels: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per class for a per-class report (e.g. ``per_class.csv``).

    Args:
        y: (N, C) multi-hot targets.
        p: (N, C) probabilities.
        thresholds: (C,) per-class thresholds; a class is predicted when ``p >= threshold``.
        labels: C class names.

    Returns:
        C dicts with keys ``label``, ``positives``, ``negatives`` (ints), ``auroc`` (NaN as in
        :func:`per_class_auroc`), ``threshold``, ``f1``, ``precision`` and ``recall`` at the threshold
        (each NaN where its denominator is zero).

    Raises:
        ValueError: if ``y`` is not 2-D or not binary, ``p`` has another shape, or ``thresholds`` or
            ``labels`` do not have one entry per class.
    """
    y, p = _multilabel(y, p, "p")
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.shape != (y.shape[1],):
        raise ValueError(f"thresholds shape {thr.shape} must be ({y.shape[1]},), one per class of y")
    if len(labels) != y.shape[1]:
        raise ValueError(f"labels has {len(labels)} names for {y.shape[1]} classes")
    aucs = per_class_auroc(y, p)
    rows: list[dict[str, Any]] = []
    for c, name in enumerate(labels):
        yc, dc = y[:, c], (p[:, c] >= thr[c]).astype(np.float32)
        tp, fp, fn = float((yc * dc).sum()), float(((1 - yc) * dc).sum()), float((yc * (1 - dc)).sum())
        rows.append(
            {
                "label": name,
                "positives": int(yc.sum()),
                "negatives": int(len(yc) - yc.sum()),
                "auroc": float(aucs[c]),
                "threshold": float(thr[c]),
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
                "precision": tp / (tp + fp) if tp + fp else math.nan,
                "recall": tp / (tp + fn) if tp + fn else math.nan,
            }
        )
    return rows


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix of single-label predictions.

    Args:
        y_true: (N,) true class indices in ``[0, num_classes)``.
        y_pred: (N,) predicted class indices in ``[0, num_classes)``.
        num_classes: K, the number of classes.

    Returns:
        (K, K) int64 counts; rows are true classes, columns predicted classes.

    Raises:
        ValueError: if ``num_classes`` is not a positive int, an array is not 1-D or holds a
            non-integer or out-of-range index, or the lengths differ.
    """
    t, p = _single_label(y_true, y_pred, num_classes)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes that occur in ``y_true``.

    Args:
        y_true: (N,) true class indices in ``[0, num_classes)``.
        y_pred: (N,) predicted class indices in ``[0, num_classes)``.
        num_classes: K, the number of classes.

    Returns:
        Balanced accuracy; NaN when ``y_true`` is empty.

    Raises:
        ValueError: as :func:`confusion_matrix`.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(1)
    present = support > 0
    if not present.any():
        return math.nan
    return float(np.mean(np.diag(cm)[present] / support[present]))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exactly right single-label predictions.

    Args:
        y_true: (N,) true class indices.
        y_pred: (N,) predicted class indices.

    Returns:
        Accuracy; NaN when the arrays are empty.

    Raises:
        ValueError: if an array is not 1-D or holds a negative or non-integer index, or the lengths differ.
    """
    t, p = _single_label(y_true, y_pred, None)
    return float(np.mean(t == p)) if t.size else math.nan


def multiclass_auroc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest macro AUROC of a single-label (softmax) classifier.

    Args:
        y_true: (N,) true class indices in ``[0, K)``.
        probs: (N, K) class probabilities (or any per-class scores).

    Returns:
        The mean one-vs-rest AUROC over classes with both positives and negatives in ``y_true``; NaN if none.

    Raises:
        ValueError: if ``probs`` is not 2-D, ``y_true`` is not 1-D of length N, or holds an index outside ``[0, K)``.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2-D (N, K) array, got shape {probs.shape}")
    t = _class_indices(y_true, "y_true", probs.shape[1])
    if t.shape[0] != probs.shape[0]:
        raise ValueError(f"y_true length {t.shape[0]} differs from probs rows {probs.shape[0]}")
    one_hot = np.zeros(probs.shape, dtype=np.float32)
    one_hot[np.arange(t.shape[0]), t] = 1
    return macro_auroc(one_hot, probs)
