"""Reading prostate cases and the MONAI transforms shared by training, evaluation and serving.

Preprocessing (invertible, so every output lands in the input's grid): RAS orientation (slices along the last
axis), resampling to the target spacing (0.5×0.5×3 mm), the centred ROI (168×168×32 in X × Y × Z, padded with
zeros where the field of view is smaller), then the 1st–99th percentile window mapped to [0, 1] in the ROI.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    Orientationd,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from models.dual_path_unet import ZONES
from pipelines.common import keys
from pipelines.common.errors import InputError
from pipelines.common.io import Volume, read_volume, stack_channels
from pipelines.prostate.config import ProstateConfig

__all__ = [
    "CHANNELS",
    "SDM",
    "WINDOW",
    "LoadProstateCased",
    "PercentileWindowd",
    "SignedDistanced",
    "eval_transforms",
    "preprocess_transforms",
    "read_zones",
    "train_transforms",
    "unlabelled_transforms",
]

#: the one input channel
CHANNELS = ("t2",)
#: key of the signed-distance targets (one channel per zone, PZ, TZ, DPU, AFS, in [−1, 1])
SDM = "sdm"
#: key under which inference preprocessing records the intensity window it maps to [0, 1]: (lower, upper)
WINDOW = "intensity_window"


def read_zones(path: Path, ref: Volume) -> Volume:
    """Read a zone map on ``ref``'s grid.

    Raises:
        InputError: unreadable, another grid than the image's, or values outside 0–4.
    """
    zones = read_volume(path)
    if zones.shape != ref.shape:
        raise InputError(zones.path, f"shape {zones.shape} differs from the image's {ref.shape}")
    if not np.allclose(zones.affine, ref.affine, atol=1e-3):
        raise InputError(zones.path, f"geometry (affine) differs from {ref.path.name}; zones must be on its grid")
    values = set(np.unique(zones.array).astype(int).tolist())
    if not np.array_equal(zones.array, np.round(zones.array)) or not values <= set(range(len(ZONES) + 1)):
        raise InputError(zones.path, f"holds values {sorted(values)}; expected integers 0 bg, 1 PZ, 2 TZ, 3 DPU, 4 AFS")
    return zones


class LoadProstateCased(MapTransform):
    """Read a case dict ``{t2[, zones]} → {image (1, X, Y, Z)[, label (1, X, Y, Z)]}`` with its geometry."""

    def __init__(self, with_label: bool = True) -> None:
        super().__init__(keys=["t2"], allow_missing_keys=True)
        self.with_label = with_label

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[str, Any]:
        image = read_volume(Path(data["t2"]))
        label = read_zones(Path(data["zones"]), image) if self.with_label else None
        out = stack_channels({"t2": image}, CHANNELS, label)
        out[keys.CASE_ID] = str(data.get(keys.CASE_ID, ""))
        return out


class SignedDistanced(MapTransform):
    """Zone map (1, X, Y, Z) → clipped, scaled signed distance maps (4, X, Y, Z) under :data:`SDM`.

    Distances are in mm at the target spacing, negative inside a zone, clipped at ± ``clip_mm`` and divided by
    it; an absent zone is +1 everywhere.
    """

    def __init__(self, spacing: tuple[float, float, float], clip_mm: float) -> None:
        super().__init__(keys=[keys.LABEL])
        self.spacing = spacing
        self.clip_mm = clip_mm

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from pipelines.common.metrics import signed_distance_map

        d = dict(data)
        label = np.asarray(d[keys.LABEL])[0]
        maps = [
            signed_distance_map(label == z, self.spacing, clip=self.clip_mm) / self.clip_mm
            for z in range(1, len(ZONES) + 1)
        ]
        d[SDM] = torch.from_numpy(np.stack(maps).astype(np.float32))
        return d


class PercentileWindowd(ScaleIntensityRangePercentilesd):
    """MONAI's percentile window mapped to ``[b_min, b_max]``, recording the window under ``record`` if given.

    When the two percentiles are equal (nearly every voxel of the ROI holds one value) the window is empty:
    MONAI then warns on stderr and shifts instead of scaling. With ``record`` set, the caller reports the
    window (in the result) and MONAI's warning is silenced.
    """

    def __init__(
        self,
        keys: Sequence[str],
        lower: float,
        upper: float,
        b_min: float,
        b_max: float,
        clip: bool,
        record: str | None = None,
    ) -> None:
        super().__init__(keys=keys, lower=lower, upper=upper, b_min=b_min, b_max=b_max, clip=clip)
        self.record = record

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.record is None:
            return dict(super().__call__(data))
        from monai.transforms.utils_pytorch_numpy_unification import percentile

        image = data[self.keys[0]]
        window = (float(percentile(image, self.scaler.lower)), float(percentile(image, self.scaler.upper)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Divide by zero \(a_min == a_max\)")
            out: dict[Hashable, Any] = dict(super().__call__(data))
        out[self.record] = window
        return out


def preprocess_transforms(cfg: ProstateConfig, with_label: bool, record_window: bool = False) -> Compose:
    """Deterministic, invertible preprocessing: RAS, target spacing, centred ROI, percentile window.

    Args:
        cfg: the task's configuration.
        with_label: also resample the zone map (nearest neighbour).
        record_window: record the intensity window under :data:`WINDOW` (inference reports an empty one).
    """
    ks = [keys.IMAGE, keys.LABEL] if with_label else [keys.IMAGE]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    return Compose(
        [
            Orientationd(keys=ks, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys=ks, pixdim=cfg.target_spacing, mode=modes),
            ResizeWithPadOrCropd(keys=ks, spatial_size=cfg.roi_size),
            PercentileWindowd(
                keys=[keys.IMAGE],
                lower=cfg.lower_percentile,
                upper=cfg.upper_percentile,
                b_min=0.0,
                b_max=1.0,
                clip=True,
                record=WINDOW if record_window else None,
            ),
        ]
    )


def _augment(cfg: ProstateConfig, ks: list[str]) -> list[Any]:
    """Left-right flips (the anatomy is symmetric) and intensity scale/shift."""
    return [
        RandFlipd(keys=ks, prob=0.5, spatial_axis=0),
        RandScaleIntensityd(keys=keys.IMAGE, factors=cfg.intensity_scale, prob=1.0),
        RandShiftIntensityd(keys=keys.IMAGE, offsets=cfg.intensity_shift, prob=1.0),
    ]


def eval_transforms(cfg: ProstateConfig) -> Compose:
    """Reading and preprocessing with the zone map, for validation."""
    return Compose([LoadProstateCased(with_label=True), preprocess_transforms(cfg, with_label=True)])


def train_transforms(cfg: ProstateConfig) -> Compose:
    """Reading, preprocessing, distance targets (all cached), then flips and intensity augmentation."""
    return Compose(
        [
            LoadProstateCased(with_label=True),
            preprocess_transforms(cfg, with_label=True),
            SignedDistanced(cfg.target_spacing, cfg.sdm_clip_mm),
            *_augment(cfg, [keys.IMAGE, keys.LABEL, SDM]),
        ]
    )


def unlabelled_transforms(cfg: ProstateConfig) -> Compose:
    """Reading and preprocessing of a volume without zones, then the same augmentation (stage 2)."""
    return Compose(
        [
            LoadProstateCased(with_label=False),
            preprocess_transforms(cfg, with_label=False),
            *_augment(cfg, [keys.IMAGE]),
        ]
    )
