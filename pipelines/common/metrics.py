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


# --- Surface distances and signed distance maps ---------------------------------------------------------------------
# A mask's surface is the set of its voxels with a face neighbour (6-connectivity in 3-D) outside the mask or beyond
# the array border. Distances are between voxel centres in mm, ``spacing`` giving the voxel size along each array axis.

#: Empty-region rule of :func:`segmentation_scores`, quoted by evaluation notes.
EMPTY_REGION_RULE = (
    "Per region, P = prediction and R = reference. Both empty: dice 1, hd95 0 mm, masd 0 mm (a correctly absent "
    "region). Exactly one empty: dice 0, hd95 and masd NaN (a distance to a surface that does not exist is "
    "undefined; summaries skip NaN, so a missed or spurious region counts only in Dice). present_<name> is 1 when R "
    "holds the region and 0 otherwise, so missed regions (present 1, hd95 NaN) and spurious ones (present 0, dice 0) "
    "can be counted."
)


def _spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    """``spacing`` as a float64 vector of ``ndim`` positive finite voxel sizes."""
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if s.shape != (ndim,):
        raise ValueError(f"spacing must give {ndim} voxel sizes (one per spatial axis), got {list(spacing)}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be positive and finite, got {list(spacing)}")
    return s


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (``border_value=0``: the array border counts as outside)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two binary masks, in mm.

    The surface of a mask is its voxels with a face-connected (6-connected in 3-D) neighbour outside the mask or
    beyond the array border. Each surface voxel of one mask gets the Euclidean distance from its centre to the nearest
    surface voxel centre of the other, via ``scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)``, so
    anisotropic voxels are respected. Both masks are first cropped to their joint bounding box plus one voxel, which
    leaves the result unchanged and keeps large, mostly empty volumes cheap.

    Args:
        pred: (X, Y, Z) predicted mask (any n-D shape works); non-zero is foreground.
        ref: reference mask of the same shape.
        spacing: voxel size in mm along each array axis.

    Returns:
        ``(pred_to_ref, ref_to_pred)``: float64 distances, one per surface voxel of ``pred`` and of ``ref`` in C order.
        An empty mask has no surface voxels (an empty array); when only the other mask is empty, the distances from
        the non-empty one are ``inf``.

    Raises:
        ValueError: if the shapes differ or ``spacing`` does not give one positive size per axis.
    """
    from scipy import ndimage

    p = np.asarray(pred, dtype=bool)
    r = np.asarray(ref, dtype=bool)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    s = _spacing(spacing, p.ndim)
    union = p | r
    if not union.any():
        return np.zeros(0), np.zeros(0)
    # Joint bounding box plus a one-voxel margin: the margin keeps the erosion right at the crop faces (outside both
    # masks there, or the true array border), and every surface voxel lies inside, so the EDT is exact on the crop.
    box = tuple(
        slice(max(int(idx.min()) - 1, 0), min(int(idx.max()) + 2, n))
        for idx, n in zip(np.nonzero(union), union.shape, strict=True)
    )
    p_surf, r_surf = _surface(p[box]), _surface(r[box])
    if not p_surf.any() or not r_surf.any():
        return np.full(int(p_surf.sum()), np.inf), np.full(int(r_surf.sum()), np.inf)
    pred_to_ref = ndimage.distance_transform_edt(~r_surf, sampling=s)[p_surf]
    ref_to_pred = ndimage.distance_transform_edt(~p_surf, sampling=s)[r_surf]
    return np.asarray(pred_to_ref, dtype=np.float64), np.asarray(ref_to_pred, dtype=np.float64)


def segmentation_scores(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], region_names: Sequence[str]
) -> dict[str, float]:
    """Dice, HD95 and mean symmetric surface distance per binary region, in mm.

    With ``d_pr`` and ``d_rp`` the directed distances of :func:`surface_distances`:

    - ``dice_<name>`` = 2|P ∩ R| / (|P| + |R|);
    - ``hd95_<name>`` = max(P95(d_pr), P95(d_rp)), percentiles with linear interpolation (``np.percentile``), the
      definition of the UATS prostate evaluation (Meyer et al.) and of MONAI's
      ``compute_hausdorff_distance(percentile=95, directed=False)``;
    - ``masd_<name>`` = (mean(d_pr) + mean(d_rp)) / 2, the mean of the two directed means (not MONAI's symmetric
      average surface distance, which pools both directions into one mean);
    - ``present_<name>`` = 1.0 when the reference holds the region, else 0.0.

    Empty regions follow :data:`EMPTY_REGION_RULE`: both empty → dice 1, hd95 0, masd 0; exactly one empty →
    dice 0, hd95 and masd NaN.

    Args:
        pred: (R, X, Y, Z) boolean predicted regions.
        ref: (R, X, Y, Z) boolean reference regions.
        spacing: voxel size in mm along X, Y, Z.
        region_names: R names, used as key suffixes.

    Returns:
        Per region, in order: ``dice_<name>``, ``hd95_<name>``, ``masd_<name>``, ``present_<name>``.

    Raises:
        ValueError: if the shapes differ, ``region_names`` does not name every region, or ``spacing`` does not give
            one positive size per spatial axis.
    """
    p = np.asarray(pred, dtype=bool)
    r = np.asarray(ref, dtype=bool)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    if p.ndim < 2:
        raise ValueError(f"pred and ref must be (R, X, Y, Z) region stacks, got shape {p.shape}")
    if len(region_names) != p.shape[0]:
        raise ValueError(f"region_names has {len(region_names)} names for {p.shape[0]} regions")
    _spacing(spacing, p.ndim - 1)
    out: dict[str, float] = {}
    for i, name in enumerate(region_names):
        pi, ri = p[i], r[i]
        n_p, n_r = int(pi.sum()), int(ri.sum())
        if n_p == 0 and n_r == 0:
            dice, hd95, masd = 1.0, 0.0, 0.0
        elif n_p == 0 or n_r == 0:
            dice, hd95, masd = 0.0, math.nan, math.nan
        else:
            dice = 2.0 * int(np.count_nonzero(pi & ri)) / (n_p + n_r)
            d_pr, d_rp = surface_distances(pi, ri, spacing)
            hd95 = float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
            masd = float((d_pr.mean() + d_rp.mean()) / 2)
        out[f"dice_{name}"] = dice
        out[f"hd95_{name}"] = hd95
        out[f"masd_{name}"] = masd
        out[f"present_{name}"] = 1.0 if n_r else 0.0
    return out


def _distance_to(target: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per voxel outside ``target``: mm from its centre to the boundary of ``target`` (0 inside ``target``).

    The EDT gives the distance to the nearest ``target`` voxel centre; the boundary is half a voxel short of that
    centre, half a voxel being measured along the dominant axis of the offset (largest component in mm).
    """
    from scipy import ndimage

    dist, idx = ndimage.distance_transform_edt(~target, sampling=s, return_indices=True)
    dominant = np.zeros(target.shape)  # largest offset component in mm so far
    half = np.zeros(target.shape)  # half the spacing along that component's axis
    for axis in range(target.ndim):
        shape = [1] * target.ndim
        shape[axis] = target.shape[axis]
        component = np.abs(idx[axis] - np.arange(target.shape[axis]).reshape(shape)) * s[axis]
        larger = component > dominant
        dominant[larger] = component[larger]
        half[larger] = s[axis] / 2
    return np.asarray(dist - half, dtype=np.float64)


def signed_distance_map(mask: np.ndarray, spacing: Sequence[float], clip: float | None = None) -> np.ndarray:
    """Signed distance map of a binary mask in mm: negative inside, positive outside.

    Half-voxel convention: the boundary lies half-way between inside and outside voxel centres (on the voxel faces),
    so a voxel ``n`` voxels from the other side along an axis of spacing ``s`` gets ∓ (n − ½) s, and the face
    neighbours across the boundary get ∓ s / 2 (no voxel is exactly 0). In general a voxel gets the Euclidean distance
    from its centre to the nearest voxel centre of the other side (EDT with ``sampling=spacing``) less half the
    spacing along the dominant axis of that offset (its largest component in mm). Exact along the axes; on a
    voxelised sphere the map stays within half a voxel of ``|x − c| − r`` on isotropic grids and within about one
    voxel diagonal on anisotropic ones. Voxels beyond the array border do not exist: a mask touching the border has
    no boundary there.

    Args:
        mask: (X, Y, Z) mask (any n-D shape works); non-zero is inside.
        spacing: voxel size in mm along each array axis.
        clip: when given, clip the map to [−clip, clip] mm; the distance transforms then run only on the mask's
            bounding box plus ``clip`` mm, which makes small masks in large volumes cheap.

    Returns:
        float32 array of ``mask``'s shape. An empty mask gives +``clip`` everywhere and a full mask −``clip``; without
        ``clip`` they give ± the array's diagonal in mm (``sqrt(sum((shape * spacing)²))``), which no distance inside
        the array exceeds.

    Raises:
        ValueError: if ``spacing`` does not give one positive size per axis, or ``clip`` is not positive and finite.
    """
    m = np.asarray(mask, dtype=bool)
    s = _spacing(spacing, m.ndim)
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be positive and finite, got {clip}")
    far = float(clip) if clip is not None else float(np.sqrt(np.sum((np.asarray(m.shape) * s) ** 2)))
    if not m.any():
        return np.full(m.shape, far, dtype=np.float32)
    if m.all():
        return np.full(m.shape, -far, dtype=np.float32)
    out = np.full(m.shape, far, dtype=np.float32)
    box: tuple[slice, ...] = tuple(slice(0, n) for n in m.shape)
    if clip is not None:
        # Voxels more than ``clip`` mm from the mask's bounding box are at +clip anyway: work on the box plus that
        # margin (at least one voxel, so that every inside voxel finds its nearest outside voxel within the crop).
        margin = [math.ceil(clip / si) + 1 for si in s]
        box = tuple(
            slice(max(int(idx.min()) - g, 0), min(int(idx.max()) + g + 1, n))
            for idx, g, n in zip(np.nonzero(m), margin, m.shape, strict=True)
        )
    crop = m[box]
    sdm = np.where(crop, -_distance_to(~crop, s), _distance_to(crop, s))
    if clip is not None:
        np.clip(sdm, -clip, clip, out=sdm)
    out[box] = sdm
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
