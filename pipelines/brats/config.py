"""Typed configuration of ``brats``; the published recipe is the default. The options models live in
``pipelines.brats.options`` (torch-free) and are re-exported here."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.brats.options import BratsOptions, BratsTrainOptions
from pipelines.common.config import TaskConfig

__all__ = ["NAMING_2018", "NAMING_2023", "TINY", "BratsConfig", "BratsOptions", "BratsTrainOptions"]

NAMING_2018 = "brats2018"
NAMING_2023 = "brats2023"

TINY: dict[str, Any] = {
    "depth": 3,
    "base_filters": 8,
    "dropout": 0.1,
    "deep_supervision_levels": 2,
    "target_spacing": (3.0, 3.0, 3.0),
    "roi_size": (32, 32, 32),
    "batch_size": 2,
    "epochs": 30,
    "iterations_per_epoch": None,
    "lr": 3e-3,
    "lr_decay": 0.97,
    "ds_weights": (1.0, 0.5),
    "sw_batch_size": 4,
}


class BratsConfig(TaskConfig):
    """Configuration of the brats method.

    Defaults are the Isensee-2017 recipe used by Hu et al. (PAPERS.md §1): Adam 5e-4, weight decay 5e-5,
    lr × 0.985 per epoch, batch 2, 128³ patches, 300 epochs of 100 iterations, depth 5, 16 base filters,
    dropout 0.3, deep supervision over the 3 finest levels.

    Args:
        head: ``multilevel`` (the method), ``regions`` or ``softmax`` (baselines).
        beta: slope β of the multi-level activation.
        thresholds: level thresholds t_k of the multi-level activation, increasing.
        target_spacing: resample to this voxel size in mm before the network (``None`` keeps the grid).
        roi_size: training patch and sliding-window size.
        val_fraction: share of cases held out for validation (20% in the paper).
        ds_weights: deep-supervision loss weights, finest first (normalised).
        sw_batch_size: sliding windows per forward pass in validation.
        cache_rate: share of preprocessed training cases kept in memory.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": TINY}
    #: stored by medinfer 0.1 checkpoints, read by nothing
    LEGACY_KEYS: ClassVar[frozenset[str]] = frozenset({"sw_overlap"})

    model_name: str = "brats_nested_unet"
    head: Literal["multilevel", "regions", "softmax"] = "multilevel"
    depth: int = Field(5, ge=2, le=7)
    base_filters: int = Field(16, ge=1)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    deep_supervision_levels: int = Field(3, ge=1)
    beta: float = Field(2.0, gt=0.0)
    thresholds: tuple[float, float, float] = (-2.0, 0.0, 2.0)
    target_spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    roi_size: tuple[int, int, int] = (128, 128, 128)
    batch_size: int = Field(2, ge=1)
    epochs: int = Field(300, ge=1)
    iterations_per_epoch: int | None = Field(100, ge=1)
    lr: float = Field(5e-4, gt=0.0)
    weight_decay: float = Field(5e-5, ge=0.0)
    lr_decay: float = Field(0.985, gt=0.0, le=1.0)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    ds_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    sw_batch_size: int = Field(1, ge=1)
    cache_rate: float = Field(1.0, ge=0.0, le=1.0)
    num_workers: int = Field(0, ge=0)
    intensity_shift: float = Field(0.1, ge=0.0)
    intensity_scale: float = Field(0.1, ge=0.0)

    @field_validator("thresholds")
    @classmethod
    def _increasing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not value[0] < value[1] < value[2]:
            raise ValueError(f"thresholds must be three increasing values, got {value}")
        return value

    @field_validator("target_spacing")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError(f"target_spacing must be positive, got {value}")
        return value

    @model_validator(mode="after")
    def _roi_fits_depth(self) -> BratsConfig:
        div = 2 ** (self.depth - 1)
        if any(s % div for s in self.roi_size):
            raise ValueError(f"roi_size {self.roi_size} must be divisible by 2^(depth-1) = {div}")
        return self

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {
            "in_channels": 4,
            "head": self.head,
            "depth": self.depth,
            "base_filters": self.base_filters,
            "dropout": self.dropout,
            "deep_supervision_levels": self.deep_supervision_levels,
        }
