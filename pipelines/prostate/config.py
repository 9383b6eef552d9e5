"""Typed configuration of ``prostate``: medinfer's reading of Das, Ghosh & Stober 2023 as defaults.

The paper's text gives the dual branches, the two stages, the cross-branch consistency and "multi-task"
[PAPER] and leaves the rest unstated [NF]. The defaults follow the same lab's UATS prostate pipeline where it is
known [CODE-3P]: 0.5×0.5×3 mm, a 32×168×168 (slices × H × W) ROI, 1st–99th percentile normalisation, a 3D U-Net
with 16 base filters, batch norm and anisotropic pooling, Adam. What medinfer adds is marked [INF] in the
model card: the class split of the paths, the signed-distance auxiliary task, the loss weights and ramp-up.
The options models live in ``pipelines.prostate.options`` (torch-free) and are re-exported here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from pipelines.common.config import TaskConfig
from pipelines.prostate.options import ProstateOptions, ProstateTrainOptions

__all__ = ["ProstateConfig", "ProstateOptions", "ProstateTrainOptions"]

TINY: dict[str, Any] = {
    "depth": 3,
    "base_filters": 8,
    "dropout": 0.0,
    "norm": "instance",
    "target_spacing": (2.0, 2.0, 4.0),
    "roi_size": (48, 48, 24),
    "batch_size": 2,
    "epochs": 40,
    "consistency_epochs": 10,
    "consistency_rampup": 5,
    "lr": 3e-3,
    "finetune_lr": 1e-3,
    "sdm_clip_mm": 20.0,
}


class ProstateConfig(TaskConfig):
    """Configuration of the prostate method.

    Args:
        depth: resolution levels of each path (4: three poolings, (1,2,2), (1,2,2), (2,2,2) in slices × H × W).
        base_filters: filters at the finest level (16 in UATS).
        norm: ``batch`` (UATS) or ``instance`` (the tiny preset: steadier with batches of 2 on short runs).
        dropout: dropout inside each double convolution.
        target_spacing: voxel size in mm (X, Y, Z with Z the slice axis) the volume is resampled to.
        roi_size: the centred region of interest the network sees, (X, Y, Z) = (H, W, slices).
        lower_percentile, upper_percentile: intensity window mapped to [0, 1] (clipped).
        epochs: stage 1 (supervised) epochs.
        consistency_epochs: stage 2 (fine-tuning with the consistency term) epochs; 0 skips stage 2.
        consistency_weight: λ_cons, the weight of the consistency term at the end of its ramp-up.
        consistency_rampup: epochs of stage 2 over which λ_cons ramps up as exp(−5(1−t)²).
        aux_weight: λ_aux, the weight of the L1 loss on the signed distance maps.
        sdm_clip_mm: signed distances are clipped at ± this many mm and divided by it (targets in [−1, 1]).
        batch_size, lr, weight_decay: Adam (UATS: batch 2, lr 5e-5; medinfer's default is higher, see card).
        finetune_lr: stage 2's learning rate.
        lr_decay: learning rate × this per epoch.
        val_fraction: share of labelled cases held out for validation.
        augment_noise: standard deviation of the Gaussian noise of stage 2's augmented view (normalised units).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": TINY}

    model_name: str = "prostate_dual_path_unet"
    depth: int = Field(4, ge=2, le=6)
    base_filters: int = Field(16, ge=1)
    norm: str = Field("batch", pattern="^(batch|instance)$")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    anisotropic_levels: int = Field(2, ge=0)
    target_spacing: tuple[float, float, float] = (0.5, 0.5, 3.0)
    roi_size: tuple[int, int, int] = (168, 168, 32)
    lower_percentile: float = Field(1.0, ge=0.0, lt=100.0)
    upper_percentile: float = Field(99.0, gt=0.0, le=100.0)
    epochs: int = Field(200, ge=1)
    consistency_epochs: int = Field(50, ge=0)
    consistency_weight: float = Field(1.0, ge=0.0)
    consistency_rampup: int = Field(20, ge=0)
    aux_weight: float = Field(0.5, ge=0.0)
    sdm_clip_mm: float = Field(20.0, gt=0.0)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(5e-4, gt=0.0)
    finetune_lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    lr_decay: float = Field(0.99, gt=0.0, le=1.0)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    augment_noise: float = Field(0.05, ge=0.0)
    intensity_scale: float = Field(0.1, ge=0.0)
    intensity_shift: float = Field(0.1, ge=0.0)

    @field_validator("target_spacing")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError(f"target_spacing must be positive, got {value}")
        return value

    @model_validator(mode="after")
    def _roi_fits_pooling(self) -> ProstateConfig:
        from models.dual_path_unet import pooling_schedule

        pools = pooling_schedule(self.depth, self.anisotropic_levels)
        divisor = [1, 1, 1]
        for p in pools:
            divisor = [d * f for d, f in zip(divisor, p, strict=True)]
        if any(s % d for s, d in zip(self.roi_size, divisor, strict=True)):
            raise ValueError(f"roi_size {self.roi_size} must be divisible by {tuple(divisor)} (the poolings)")
        if self.lower_percentile >= self.upper_percentile:
            raise ValueError("lower_percentile must be below upper_percentile")
        return self

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {
            "in_channels": 1,
            "depth": self.depth,
            "base_filters": self.base_filters,
            "norm": self.norm,
            "dropout": self.dropout,
            "anisotropic_levels": self.anisotropic_levels,
        }
