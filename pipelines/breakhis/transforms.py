"""MONAI 2D dictionary transforms of ``breakhis``, shared by training, evaluation, the CLI and the service.

Prediction and evaluation: RGB uint8 (H, W, 3) → optional Macenko stain normalisation (MONAI's
``NormalizeHEStains``) → float (3, H, W) in [0, 1] → resize to ``image_size``² → ImageNet normalisation.
Training inserts the augmentation preset between the resize and the normalisation:

- ``regular``: flips on both axes, rotations within ±15°;
- ``intensive``: also 90° rotations, zoom 0.85–1.15, shift ±10 %, shear ±0.1, H&E colour jitter (per-channel
  scale and shift, contrast), Gaussian blur and noise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
    Resized,
)

from pipelines.breakhis.config import BreakhisConfig
from pipelines.common import keys
from pipelines.common.errors import InputError
from pipelines.common.io import read_rgb_image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RGBToTensord",
    "ReadImaged",
    "augmentations",
    "eval_transforms",
    "predict_transforms",
    "rgb_from_array",
    "train_transforms",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NOTES = "notes"


def rgb_from_array(
    data: Any, name: str, *, max_pixels: int = 100_000_000, min_side: int = 16
) -> tuple[np.ndarray, list[str]]:
    """An image given in memory (an Open Inference Protocol tensor) as the RGB uint8 (H, W, 3) that reading an
    image file gives, under the same size limits as :func:`~pipelines.common.io.read_rgb_image`.

    Args:
        data: (H, W, 3) RGB: uint8, or floats in 0-255 (rounded to 8 bits, as an image file holds them).
        name: how messages name it.
        max_pixels: the most pixels accepted.
        min_side: the shortest side accepted.

    Returns:
        ``(array, notes)``: the pixels and the conversions made (floats rounded).

    Raises:
        InputError: not (H, W, 3), too small or too large, NaN or values outside 0-255.
    """
    arr = np.asarray(data)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(name, f"expected an (height, width, 3) RGB image, got shape {list(arr.shape)}")
    height, width = int(arr.shape[0]), int(arr.shape[1])
    if height * width > max_pixels:
        raise InputError(name, f"{width}×{height} = {height * width:,} pixels, more than the limit {max_pixels:,}")
    if min(height, width) < min_side:
        raise InputError(name, f"is {width}×{height} pixels; at least {min_side} pixels on each side are required")
    if arr.dtype == np.uint8:
        return np.array(arr, dtype=np.uint8), []
    if arr.dtype.kind not in "iuf":
        raise InputError(name, f"an image must hold numbers, got {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(name, "NaN or infinite values in the image")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 255:
        raise InputError(name, f"values from {lo:g} to {hi:g}; an RGB image holds 0-255")
    rgb = np.rint(arr).astype(np.uint8)
    notes = [] if np.array_equal(rgb, arr) else ["values rounded to 8 bits (0-255)"]
    return rgb, notes


class ReadImaged(MapTransform):
    """``data["image"]``: a path → RGB uint8 (H, W, 3); conversion notes under ``data["notes"]``."""

    def __init__(self, key: str = keys.IMAGE) -> None:
        super().__init__(keys=[key])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], notes = read_rgb_image(Path(d[key]))
            d[NOTES] = [*d.get(NOTES, []), *notes]
        return d


class RGBToTensord(MapTransform):
    """RGB uint8 (H, W, 3) → float32 (3, H, W) in [0, 1], after Macenko stain normalisation when asked.

    Normalisation fails on images without enough stained tissue; those keep their colours and get a note.
    """

    def __init__(self, key: str = keys.IMAGE, stain_normalization: bool = False) -> None:
        super().__init__(keys=[key])
        self.stain = None
        if stain_normalization:
            from monai.apps.pathology.transforms import NormalizeHEStains

            self.stain = NormalizeHEStains()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            rgb = np.asarray(d[key])
            if self.stain is not None:
                try:
                    rgb = np.asarray(self.stain(rgb), dtype=np.uint8)
                except ValueError as exc:  # no tissue above the absorbance threshold
                    d[NOTES] = [*d.get(NOTES, []), f"stain normalisation skipped ({exc})"]
            d[key] = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0)
        return d


def _resize(cfg: BreakhisConfig) -> Resized:
    return Resized(keys=keys.IMAGE, spatial_size=(cfg.image_size, cfg.image_size), mode="area")


def _normalize() -> NormalizeIntensityd:
    return NormalizeIntensityd(
        keys=keys.IMAGE, subtrahend=np.asarray(IMAGENET_MEAN), divisor=np.asarray(IMAGENET_STD), channel_wise=True
    )


def predict_transforms(cfg: BreakhisConfig) -> Compose:
    """RGB uint8 array → the network's input (3, S, S): stain normalisation, resize, ImageNet normalisation."""
    return Compose([RGBToTensord(stain_normalization=cfg.stain_normalization), _resize(cfg), _normalize()])


def eval_transforms(cfg: BreakhisConfig) -> Compose:
    """A path → the network's input (validation, evaluation)."""
    return Compose([ReadImaged(), predict_transforms(cfg)])


def augmentations(preset: str) -> list[Any]:
    """The random transforms of an augmentation preset (on (3, S, S) images in [0, 1])."""
    k = keys.IMAGE
    small_rotation = math.radians(15)
    regular: list[Any] = [
        RandFlipd(keys=k, prob=0.5, spatial_axis=0),
        RandFlipd(keys=k, prob=0.5, spatial_axis=1),
        RandRotated(keys=k, range_x=small_rotation, prob=0.5, padding_mode="reflection"),
    ]
    if preset == "regular":
        return regular
    if preset != "intensive":
        raise ValueError(f"augmentation must be regular or intensive, got {preset!r}")
    return [
        *regular,
        RandRotate90d(keys=k, prob=0.5, spatial_axes=(0, 1)),
        RandZoomd(keys=k, prob=0.3, min_zoom=0.85, max_zoom=1.15, padding_mode="reflect"),
        RandAffined(keys=k, prob=0.3, translate_range=(0.1, 0.1), shear_range=(0.1, 0.1), padding_mode="reflection"),
        # H&E colour jitter: each stain channel scaled and shifted on its own, contrast varied
        RandScaleIntensityd(keys=k, factors=0.1, prob=0.8, channel_wise=True),
        RandShiftIntensityd(keys=k, offsets=0.05, prob=0.8, channel_wise=True),
        RandAdjustContrastd(keys=k, prob=0.3, gamma=(0.8, 1.25)),
        RandGaussianSmoothd(keys=k, prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
        RandGaussianNoised(keys=k, prob=0.2, std=0.02),
    ]


def train_transforms(cfg: BreakhisConfig) -> Compose:
    """A path → an augmented network input (the deterministic reading and resizing come first, for caching)."""
    return Compose(
        [
            ReadImaged(),
            RGBToTensord(stain_normalization=cfg.stain_normalization),
            _resize(cfg),
            *augmentations(cfg.augmentation),
            _normalize(),
        ]
    )
