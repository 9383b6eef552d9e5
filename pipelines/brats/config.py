"""Typed training/inference configuration for ``brats``; the published recipe is the default."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

PRESETS = ("full", "tiny")


@dataclass(frozen=True)
class BratsConfig:
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
        cache_rate: share of preprocessed training cases kept in memory.
    """

    preset: str = "full"
    model_name: str = "brats_nested_unet"
    head: str = "multilevel"
    depth: int = 5
    base_filters: int = 16
    dropout: float = 0.3
    deep_supervision_levels: int = 3
    beta: float = 2.0
    thresholds: tuple[float, float, float] = (-2.0, 0.0, 2.0)
    target_spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    roi_size: tuple[int, int, int] = (128, 128, 128)
    batch_size: int = 2
    epochs: int = 300
    iterations_per_epoch: int | None = 100
    lr: float = 5e-4
    weight_decay: float = 5e-5
    lr_decay: float = 0.985
    val_fraction: float = 0.2
    ds_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    sw_batch_size: int = 1
    sw_overlap: float = 0.5
    cache_rate: float = 1.0
    num_workers: int = 0
    intensity_shift: float = 0.1
    intensity_scale: float = 0.1

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.head not in ("multilevel", "regions", "softmax"):
            raise ValueError(f"head must be multilevel, regions or softmax, got {self.head!r}")
        if len(self.thresholds) != 3 or not (self.thresholds[0] < self.thresholds[1] < self.thresholds[2]):
            raise ValueError(f"thresholds must be three increasing values, got {self.thresholds}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        div = 2 ** (self.depth - 1)
        if len(self.roi_size) != 3 or any(s % div for s in self.roi_size):
            raise ValueError(f"roi_size {self.roi_size} must be 3 sizes divisible by 2^(depth-1) = {div}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BratsConfig:
        """Rebuild from ``to_dict`` output (lists back to tuples); unknown keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown brats config keys: {sorted(unknown)}")
        conv = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**conv)


TINY = {
    "preset": "tiny",
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


def make_config(preset: str = "full", config_path: Path | None = None, epochs: int | None = None) -> BratsConfig:
    """The preset, overridden by a YAML file's keys, then by ``epochs``.

    Raises:
        ValueError: unknown preset or keys, or invalid values.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    cfg = BratsConfig(**TINY) if preset == "tiny" else BratsConfig()  # type: ignore[arg-type]
    if config_path is not None:
        overrides = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
        if not isinstance(overrides, dict):
            raise ValueError(f"{config_path}: expected a mapping of config keys")
        cfg = BratsConfig.from_dict({**cfg.to_dict(), **overrides})
    if epochs is not None:
        cfg = replace(cfg, epochs=epochs)
    return cfg
