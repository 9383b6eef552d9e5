"""PTB-XL on disk → arrays: ``ptbxl_database.csv`` (scp_codes dict strings, strat_fold, filename_lr/hr) and WFDB.

Labels: a record gets 1 for every statement key of its ``scp_codes`` (likelihood ignored), over the 71 labels.
Records are preprocessed with the same ``preprocess_signal`` as prediction.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.protoecgnet import PTBXL_LABELS
from pipelines.ecg.readers import read_wfdb
from pipelines.ecg.transforms import preprocess_signal

__all__ = ["EcgArrays", "labels_from_codes", "load_split", "read_database"]

logger = logging.getLogger(__name__)

DATABASE = "ptbxl_database.csv"


@dataclass
class EcgArrays:
    """Preprocessed records of one split: ``x`` (N, 12, 1000) float32 mV, ``y`` (N, 71) float32, ``ids``."""

    x: np.ndarray
    y: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def labels_from_codes(codes: str | dict, labels: Sequence[str] = PTBXL_LABELS) -> np.ndarray:
    """Multi-hot vector from a ``scp_codes`` dict (or its string form); unknown statements are ignored."""
    d = ast.literal_eval(codes) if isinstance(codes, str) else codes
    index = {c: i for i, c in enumerate(labels)}
    y = np.zeros(len(labels), dtype=np.float32)
    for key in d:
        if key in index:
            y[index[key]] = 1.0
    return y


def read_database(root: str | Path):
    """``ptbxl_database.csv`` of a PTB-XL tree.

    Raises:
        ValueError: the file or a required column is missing.
    """
    import pandas as pd

    path = Path(root) / DATABASE
    if not path.is_file():
        raise ValueError(f"{root}: not a PTB-XL tree ({DATABASE} not found)")
    df = pd.read_csv(path)
    missing = {"ecg_id", "scp_codes", "strat_fold", "filename_lr", "filename_hr"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return df


def load_split(
    root: str | Path,
    folds: Sequence[int] | None,
    *,
    sampling_rate: int = 100,
    highpass_hz: float = 0.5,
    limit: int | None = None,
) -> EcgArrays:
    """Read and preprocess the records of some strat_folds (``None``: all).

    Args:
        root: PTB-XL root.
        folds: strat_fold values to keep.
        sampling_rate: 100 (``filename_lr``) or 500 (``filename_hr``); both become 100 Hz model input.
        highpass_hz: baseline-wander cut-off.
        limit: read at most this many records (quick runs).
    """
    if sampling_rate not in (100, 500):
        raise ValueError(f"sampling_rate must be 100 or 500, got {sampling_rate}")
    df = read_database(root)
    if folds is not None:
        df = df[df["strat_fold"].isin(list(folds))]
    if limit is not None:
        df = df.iloc[:limit]
    column = "filename_lr" if sampling_rate == 100 else "filename_hr"
    xs, ys, ids = [], [], []
    for row in df.itertuples(index=False):
        rec = read_wfdb(Path(root) / getattr(row, column))
        xs.append(preprocess_signal(rec.signal, rec.fs, rec.leads, rec.path, highpass_hz=highpass_hz))
        ys.append(labels_from_codes(row.scp_codes))
        ids.append(str(row.ecg_id))
    logger.info("read %d records from %s (folds %s)", len(ids), root, folds)
    x = np.stack(xs) if xs else np.zeros((0, 12, 1000), np.float32)
    y = np.stack(ys) if ys else np.zeros((0, len(PTBXL_LABELS)), np.float32)
    return EcgArrays(x, y, ids)
