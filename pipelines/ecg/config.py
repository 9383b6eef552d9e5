"""Typed configuration of the ``ecg`` task; defaults are the published recipe (PAPERS.md §4), ``tiny`` is for CPU.

The options models live in ``pipelines.ecg.options`` (torch-free) and are re-exported here."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from models.protoecgnet import BRANCH_LABELS, BRANCH_NAMES, LEADS, PTBXL_LABELS
from pipelines.common.config import TaskConfig
from pipelines.ecg.options import STAGES, EcgOptions, EcgTrainOptions
from pipelines.ecg.rates import SAMPLING_RATE

__all__ = [
    "BRANCH_LABELS",
    "BRANCH_NAMES",
    "LEADS",
    "MODEL_NAME",
    "NUM_SAMPLES",
    "PTBXL_LABELS",
    "SAMPLING_RATE",
    "STAGES",
    "TEST_FOLDS",
    "TRAIN_FOLDS",
    "VAL_FOLDS",
    "EcgConfig",
    "EcgOptions",
    "EcgTrainOptions",
]

MODEL_NAME = "ecg_protoecgnet"
NUM_SAMPLES = 1000  # 10 s
TRAIN_FOLDS = (1, 2, 3, 4, 5, 6, 7, 8)
VAL_FOLDS = (9,)
TEST_FOLDS = (10,)

TINY: dict[str, Any] = {
    "model_kwargs": {
        "prototypes_per_class": [2, 2, 2],
        "proto_time_len": [3, 32],
        "proto_dim": 32,
        "widths": [16, 16, 32, 32],
        "layers": [1, 1, 1, 1],
        "dropout": 0.0,
        # [INF] the flattened 2D head (32x the inputs) overfits the few hundred tiny-preset records; the model
        # card states the pooled head as a departure
        "fc_head": "pool",
    },
    "epochs": {"feature_extractor": 12, "joint": 10, "classifier": 6, "fusion": 40},
    "lr": {"feature_extractor": 3e-3, "joint": 1e-3, "classifier": 1e-2, "fusion": 2e-2},
    "batch_size": 32,
    "weight_decay": 1e-4,
    # [INF] with ~140 prototypes the paper's diversity/contrastive weights swamp the BCE term; scaled down
    "div": 25.0,
    "cnrst": 3.0,
    "eval_batch_size": 128,
}


class EcgConfig(TaskConfig):
    """Everything an ecg training run needs; saved into the checkpoint.

    Args:
        model_kwargs: keyword arguments of ``ecg_protoecgnet`` (besides the label partition).
        epochs: epochs per stage (``projection`` ignores it).
        batch_size: training batch size (paper 32).
        lr: Adam learning rate per stage.
        weight_decay: Adam weight decay (``--l2``, README example 1.7e-4).
        clst, sep, spars, div, cnrst: joint-stage loss weights (0.004 / 0.0004 / 0 / 250 / 300).
        l1_classifier: L1 on off-class connections in the classifier stage (1e-4).
        l1_fusion: L1 on the fusion weights (1e-4).
        highpass_hz: zero-phase first-order Butterworth high-pass cut-off (0.5 Hz; 0 disables).
        branches: branches the branch stages train.
        init_checkpoint: start from this checkpoint (else from ``RUN/last.pt`` when running one ``--stage``).
        num_threads: torch CPU threads (0 = torch's default).
        eval_batch_size: batch size for validation, projection and thresholds.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": TINY}

    model_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {
            "prototypes_per_class": [5, 18, 7],
            "proto_time_len": [3, 32],
            "proto_dim": 512,
            "widths": [64, 128, 256, 512],
            "layers": [2, 2, 2, 2],
            "dropout": 0.35,
            "fc_head": "flatten",
        }
    )
    epochs: dict[str, int] = Field(
        default_factory=lambda: {"feature_extractor": 200, "joint": 200, "classifier": 50, "fusion": 50}
    )
    batch_size: int = Field(32, ge=1)
    lr: dict[str, float] = Field(
        default_factory=lambda: {"feature_extractor": 1e-4, "joint": 1e-4, "classifier": 1e-4, "fusion": 1e-4}
    )
    weight_decay: float = Field(1.7e-4, ge=0.0)
    clst: float = 0.004
    sep: float = 0.0004
    spars: float = 0.0
    div: float = 250.0
    cnrst: float = 300.0
    l1_classifier: float = Field(1e-4, ge=0.0)
    l1_fusion: float = Field(1e-4, ge=0.0)
    highpass_hz: float = Field(0.5, ge=0.0)
    branches: tuple[str, ...] = BRANCH_NAMES
    init_checkpoint: str | None = None
    num_threads: int = Field(0, ge=0)
    eval_batch_size: int = Field(64, ge=1)

    @field_validator("branches")
    @classmethod
    def _known_branches(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(value) - set(BRANCH_NAMES)
        if unknown:
            raise ValueError(f"unknown branches {sorted(unknown)}; choose from {BRANCH_NAMES}")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: dict[str, int]) -> dict[str, int]:
        for k, v in value.items():
            if k not in STAGES:
                raise ValueError(f"unknown stage {k!r}; stages: {', '.join(STAGES)}")
            if v < 1:
                raise ValueError(f"epochs[{k!r}] must be >= 1, got {v}")
        return value

    @field_validator("lr")
    @classmethod
    def _lr(cls, value: dict[str, float]) -> dict[str, float]:
        for k, v in value.items():
            if k not in STAGES:
                raise ValueError(f"unknown stage {k!r}; stages: {', '.join(STAGES)}")
            if v <= 0:
                raise ValueError(f"lr[{k!r}] must be > 0, got {v}")
        return value
