"""``medinfer evaluate ecg``: fold 10 (or every record) through the predictor, scored with the shared
multi-label metrics (per-branch macro AUROC among them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.protoecgnet import BRANCH_NAMES
from pipelines.common.checkpoint import Checkpoint
from pipelines.common.classification import evaluate_multilabel
from pipelines.common.task import PredictOptions

__all__ = ["evaluate"]


def evaluate(data_dir: Path, checkpoint: Checkpoint, out_dir: Path, options: PredictOptions) -> dict[str, Any]:
    """Predict fold 10 (all records when the database has no fold 10), write ``per_class.csv`` (with each
    label's branch), ``predictions.csv`` and ``summary.json``; return the summary."""
    from pipelines.ecg.datasets import load_split, read_database
    from pipelines.ecg.infer import EcgPredictor

    df = read_database(data_dir)
    folds = [10] if (df["strat_fold"] == 10).any() else None
    predictor = EcgPredictor(checkpoint, options)
    data = load_split(data_dir, folds, highpass_hz=predictor.highpass_hz)
    if len(data) == 0:
        raise ValueError(f"{data_dir}: no records to evaluate")
    bs = max(1, options.batch_size)
    p = np.concatenate([predictor.probabilities(data.x[i : i + bs]) for i in range(0, len(data), bs)])
    head = predictor.heads[0]
    groups = {b: head.groups[b] for b in BRANCH_NAMES}
    extra = {"folds": folds or "all", "checkpoint": str(checkpoint.path or "")}
    return evaluate_multilabel(
        data.y, p, predictor.thresholds, head.labels, data.ids, out_dir, id_column="ecg_id", groups=groups, extra=extra
    )
