"""Dataset-level metrics (macro AUROC over classes with positives and negatives, per-branch AUROC, micro-F1 at
the stored thresholds, Fmax) and ``medinfer evaluate ecg``."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from models.protoecgnet import BRANCH_LABELS, PTBXL_LABELS
from pipelines.common.io import write_json

__all__ = ["per_class_auroc", "macro_auroc", "micro_f1", "fmax", "best_thresholds", "summary_metrics", "evaluate"]

logger = logging.getLogger(__name__)


def per_class_auroc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC per class (NaN where a class lacks positives or negatives). ``y``, ``p``: (N, C)."""
    from sklearn.metrics import roc_auc_score

    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        pos = y[:, c].sum()
        if 0 < pos < y.shape[0]:
            out[c] = roc_auc_score(y[:, c], p[:, c])
    return out


def macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean AUROC over classes with both positives and negatives (NaN if none)."""
    a = per_class_auroc(y, p)
    return float(np.nanmean(a)) if np.isfinite(a).any() else math.nan


def micro_f1(y: np.ndarray, decisions: np.ndarray) -> float:
    """Micro-averaged F1 of binary decisions."""
    tp = float((decisions * y).sum())
    fp = float((decisions * (1 - y)).sum())
    fn = float(((1 - decisions) * y).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan


def fmax(y: np.ndarray, p: np.ndarray) -> float:
    """Best micro-F1 over one global threshold in 0:0.01:1."""
    return max((micro_f1(y, (p >= t).astype(np.float32)) for t in np.linspace(0, 1, 101)), default=math.nan)


def best_thresholds(y: np.ndarray, p: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-class threshold maximising F1 on validation (grid 0.01…0.99); ``default`` for classes without positives."""
    grid = np.linspace(0.01, 0.99, 99)
    out = np.full(y.shape[1], default, dtype=np.float64)
    for c in range(y.shape[1]):
        pos = y[:, c]
        if pos.sum() == 0:
            continue
        pred = p[:, c][None, :] >= grid[:, None]  # (T, N)
        tp = (pred * pos).sum(1)
        f1 = 2 * tp / (pred.sum(1) + pos.sum())
        out[c] = float(grid[int(np.argmax(f1))])
    return out


def summary_metrics(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray | None = None) -> dict[str, Any]:
    """Macro AUROC, per-branch macro AUROC, micro-F1 at thresholds (0.5 when none), Fmax, class counts."""
    thr = np.full(y.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
    aucs = per_class_auroc(y, p)
    out: dict[str, Any] = {
        "n_records": int(y.shape[0]),
        "macro_auroc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan,
        "n_classes_scored": int(np.isfinite(aucs).sum()),
        "micro_f1": micro_f1(y, (p >= thr[None]).astype(np.float32)),
        "fmax": fmax(y, p),
    }
    for branch, names in BRANCH_LABELS.items():
        idx = [PTBXL_LABELS.index(c) for c in names]
        sub = aucs[idx]
        out[f"auroc_{branch}"] = float(np.nanmean(sub)) if np.isfinite(sub).any() else math.nan
    return out


def evaluate(data_dir: Path, checkpoint, out_dir: Path, options) -> dict[str, Any]:  # noqa: ANN001
    """Predict fold 10 (all records when the database has no fold 10), write ``per_class.csv``,
    ``predictions.csv`` and ``summary.json``; return the summary."""
    import torch

    from pipelines.ecg.datasets import load_split, read_database
    from pipelines.ecg.infer import EcgPredictor

    df = read_database(data_dir)
    folds = [10] if (df["strat_fold"] == 10).any() else None
    predictor = EcgPredictor(checkpoint, options)
    data = load_split(data_dir, folds, highpass_hz=predictor.highpass_hz)
    if len(data) == 0:
        raise ValueError(f"{data_dir}: no records to evaluate")
    probs = []
    bs = max(1, options.batch_size, 32)
    with torch.no_grad():
        for i in range(0, len(data), bs):
            probs.append(predictor.probabilities(torch.from_numpy(data.x[i : i + bs])))
    p = np.concatenate(probs)
    thr = predictor.thresholds
    summary = summary_metrics(data.y, p, thr)
    summary["folds"] = folds or "all"
    summary["checkpoint"] = str(checkpoint.path or "")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    aucs = per_class_auroc(data.y, p)
    branch_of = {c: b for b, names in BRANCH_LABELS.items() for c in names}
    with (out_dir / "per_class.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "branch", "positives", "negatives", "auroc", "threshold", "f1", "precision", "recall"])
        for c, name in enumerate(PTBXL_LABELS):
            yc, dc = data.y[:, c], (p[:, c] >= thr[c]).astype(np.float32)
            tp, fp, fn = float((yc * dc).sum()), float(((1 - yc) * dc).sum()), float((yc * (1 - dc)).sum())
            prec = tp / (tp + fp) if tp + fp else math.nan
            rec = tp / (tp + fn) if tp + fn else math.nan
            f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
            w.writerow([name, branch_of[name], int(yc.sum()), int(len(yc) - yc.sum()), aucs[c], thr[c], f1, prec, rec])
    with (out_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["ecg_id", *PTBXL_LABELS])
        for rid, row in zip(data.ids, p, strict=True):
            w.writerow([rid, *(f"{v:.5f}" for v in row)])
    write_json(summary, out_dir / "summary.json")
    return summary
