"""Typed configuration of the ``ecg`` task; defaults are the published recipe (PAPERS.md §4), ``tiny`` is for CPU."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.protoecgnet import BRANCH_LABELS, BRANCH_NAMES, LEADS, PTBXL_LABELS

__all__ = [
    "LEADS",
    "PTBXL_LABELS",
    "BRANCH_NAMES",
    "BRANCH_LABELS",
    "MODEL_NAME",
    "SAMPLING_RATE",
    "NUM_SAMPLES",
    "TRAIN_FOLDS",
    "VAL_FOLDS",
    "TEST_FOLDS",
    "EcgConfig",
    "load_config",
]

MODEL_NAME = "ecg_protoecgnet"
SAMPLING_RATE = 100.0  # Hz, PTB-XL ``filename_lr``
NUM_SAMPLES = 1000  # 10 s
TRAIN_FOLDS = (1, 2, 3, 4, 5, 6, 7, 8)
VAL_FOLDS = (9,)
TEST_FOLDS = (10,)


@dataclass(frozen=True)
class EcgConfig:
    """Everything a training run needs; saved into the checkpoint.

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

    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "prototypes_per_class": [5, 18, 7],
            "proto_time_len": [3, 32],
            "proto_dim": 512,
            "widths": [64, 128, 256, 512],
            "layers": [2, 2, 2, 2],
            "dropout": 0.35,
        }
    )
    epochs: dict[str, int] = field(
        default_factory=lambda: {"feature_extractor": 200, "joint": 200, "classifier": 50, "fusion": 50}
    )
    batch_size: int = 32
    lr: dict[str, float] = field(
        default_factory=lambda: {"feature_extractor": 1e-4, "joint": 1e-4, "classifier": 1e-4, "fusion": 1e-4}
    )
    weight_decay: float = 1.7e-4
    clst: float = 0.004
    sep: float = 0.0004
    spars: float = 0.0
    div: float = 250.0
    cnrst: float = 300.0
    l1_classifier: float = 1e-4
    l1_fusion: float = 1e-4
    highpass_hz: float = 0.5
    branches: tuple[str, ...] = BRANCH_NAMES
    init_checkpoint: str | None = None
    num_threads: int = 0
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        unknown = set(self.branches) - set(BRANCH_NAMES)
        if unknown:
            raise ValueError(f"branches: unknown {sorted(unknown)}; choose from {BRANCH_NAMES}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for k, v in self.epochs.items():
            if v < 1:
                raise ValueError(f"epochs[{k!r}] must be >= 1, got {v}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["branches"] = list(self.branches)
        return d


def _tiny() -> EcgConfig:
    return EcgConfig(
        model_kwargs={
            "prototypes_per_class": [2, 2, 2],
            "proto_time_len": [3, 32],
            "proto_dim": 32,
            "widths": [16, 16, 32, 32],
            "layers": [1, 1, 1, 1],
            "dropout": 0.0,
        },
        epochs={"feature_extractor": 12, "joint": 10, "classifier": 6, "fusion": 40},
        lr={"feature_extractor": 3e-3, "joint": 1e-3, "classifier": 1e-2, "fusion": 2e-2},
        batch_size=32,
        weight_decay=1e-4,
        # [INF] with ~140 prototypes the paper's diversity/contrastive weights swamp the BCE term; scaled down
        div=25.0,
        cnrst=3.0,
        num_threads=0,
        eval_batch_size=128,
    )


def load_config(preset: str = "full", config_path: Path | None = None, epochs: int | None = None) -> EcgConfig:
    """A config from a preset (``full`` = paper, ``tiny`` = CPU), a YAML of overrides and an epoch override.

    Raises:
        ValueError: unknown preset or unknown field in the YAML.
    """
    if preset == "full":
        cfg = EcgConfig()
    elif preset == "tiny":
        cfg = _tiny()
    else:
        raise ValueError(f"unknown preset {preset!r}; use full or tiny")
    overrides: dict[str, Any] = {}
    if config_path is not None:
        overrides = yaml.safe_load(Path(config_path).read_text()) or {}
        if not isinstance(overrides, dict):
            raise ValueError(f"{config_path}: expected a mapping of config fields")
        names = {f.name for f in dataclasses.fields(EcgConfig)}
        bad = set(overrides) - names
        if bad:
            raise ValueError(f"{config_path}: unknown config fields {sorted(bad)}")
        for key in ("model_kwargs", "epochs", "lr"):  # merge nested mappings instead of replacing them
            if key in overrides:
                overrides[key] = {**getattr(cfg, key), **overrides[key]}
        if "branches" in overrides:
            overrides["branches"] = tuple(overrides["branches"])
    if epochs is not None:
        overrides["epochs"] = dict.fromkeys(cfg.epochs, int(epochs))
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
