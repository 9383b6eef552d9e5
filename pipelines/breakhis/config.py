"""Typed configuration of ``breakhis``: medinfer's reading of Behzadpour et al. 2024 as defaults.

The paper leaves the variant, input size, augmentation list, class weights, split protocol and schedule
unstated [NF]; the defaults are the implementable reading of PAPERS.md §3 [INF]: EfficientNet-B0 at 224×224,
class-weighted cross-entropy with w_c = N / (C·n_c), intensive augmentation, magnifications pooled, a
patient-wise split, and a binary model whose trunk initialises the subtype model. The options models live in
``pipelines.breakhis.options`` (torch-free) and are re-exported here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from models.efficientnet import VARIANTS
from pipelines.breakhis.options import BreakhisOptions, BreakhisTrainOptions
from pipelines.common.config import TaskConfig

__all__ = ["MAGNIFICATIONS", "BreakhisConfig", "BreakhisOptions", "BreakhisTrainOptions"]

MAGNIFICATIONS = (40, 100, 200, 400)

TINY: dict[str, Any] = {
    "image_size": 64,
    "epochs": 12,
    "freeze_epochs": 2,
    "batch_size": 32,
    "lr": 3e-3,
    "augmentation": "regular",
    "bn_momentum": 0.1,
    "val_fraction": 0.25,
    "test_fraction": 0.25,
}


class BreakhisConfig(TaskConfig):
    """Configuration of the breakhis method.

    Args:
        variant: EfficientNet variant (B0 in medinfer's reading; B3 at 300×300 is the other common choice).
        image_size: square input size images are resized to.
        dropout: dropout before the head.
        bn_momentum: batch-norm momentum (0.01, EfficientNet's; the tiny preset's short runs use 0.1).
        precise_bn_batches: before each validation, the trainable batch-norm statistics are recomputed on up to
            this many training batches (0: off), so eval-mode statistics match the current weights.
        epochs: epochs of a training run (of both stages together when the trunk is frozen first).
        freeze_epochs: with ``--transfer-from``, epochs that train the new head only before the trunk unfreezes.
        batch_size, lr, weight_decay: Adam with cosine annealing over the epochs.
        augmentation: ``regular`` (flips, small rotations) or ``intensive`` (plus 90° rotations, zoom, shift,
            shear, H&E colour jitter, blur, noise).
        stain_normalization: Macenko normalisation (MONAI's NormalizeHEStains) before everything else.
        cost_sensitive: class-weighted cross-entropy with w_c = N / (C·n_c) over the training images.
        balanced_sampler: draw training images with probability ∝ 1 / n_class instead.
        magnifications: which magnifications to use (pooled).
        split: ``patient`` (no patient in two splits, stratified by subtype) or ``image`` (image-wise, as the
            paper's figures most likely were; leaks patients across splits).
        val_fraction, test_fraction: shares of patients (or images) held out.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": TINY}

    model_name: str = "breakhis_efficientnet"
    variant: str = "efficientnet-b0"
    image_size: int = Field(224, ge=32, le=1024)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    bn_momentum: float = Field(0.01, gt=0.0, le=1.0)
    precise_bn_batches: int = Field(50, ge=0)
    epochs: int = Field(60, ge=1)
    freeze_epochs: int = Field(5, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    augmentation: Literal["regular", "intensive"] = "intensive"
    stain_normalization: bool = False
    cost_sensitive: bool = True
    balanced_sampler: bool = False
    magnifications: tuple[int, ...] = MAGNIFICATIONS
    split: Literal["patient", "image"] = "patient"
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    num_workers: int = Field(0, ge=0)

    @field_validator("variant")
    @classmethod
    def _variant(cls, value: str) -> str:
        if value not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
        return value

    @field_validator("magnifications")
    @classmethod
    def _magnifications(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or not set(value) <= set(MAGNIFICATIONS):
            raise ValueError(f"magnifications must be a non-empty subset of {MAGNIFICATIONS}")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _fractions(self) -> BreakhisConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave training data (< 1)")
        if self.freeze_epochs >= self.epochs:
            raise ValueError(f"freeze_epochs ({self.freeze_epochs}) must be fewer than epochs ({self.epochs})")
        return self
