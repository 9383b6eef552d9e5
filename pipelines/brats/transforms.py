"""Reading BraTS cases and the MONAI transforms shared by training, evaluation and serving.

Naming conventions (both accepted, per file):

- BraTS 2018–2021: ``<case>_t1.nii.gz, _t1ce, _t2, _flair, _seg`` with labels 0/1/2/4;
- BraTS 2023: ``<case>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg`` with labels 0/1/2/3.

Internally labels are held in the 2018 convention (1 NCR/NET, 2 ED, 4 ET) and regions as WT/TC/ET.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    ConvertToMultiChannelBasedOnBratsClasses,
    CropForegroundd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    Spacingd,
    SpatialPadd,
)

from models.nested_unet import BRATS_MODALITIES as MODALITIES
from pipelines.brats.config import NAMING_2018, NAMING_2023, BratsConfig
from pipelines.common import keys
from pipelines.common.errors import InputError
from pipelines.common.io import NIFTI_SUFFIXES, Volume, read_coregistered, read_volume, stack_channels

#: role aliases, canonical name first; the 2023 names map onto the 2018 ones
ALIASES: dict[str, str] = {
    "t1": "t1",
    "t1n": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "flair": "flair",
    "t2f": "flair",
    "seg": "seg",
}
LABEL_CONVENTIONS = (NAMING_2018, NAMING_2023)
#: level (0 bg, 1 ED, 2 NCR/NET, 3 ET) → label value in each convention
LEVEL_TO_LABEL = {NAMING_2018: (0, 2, 1, 4), NAMING_2023: (0, 2, 1, 3)}
_SUFFIX_2018 = re.compile(r"^(?P<case>.+)_(?P<role>t1ce|t1|t2|flair|seg)(?P<ext>\.nii\.gz|\.nii)$", re.IGNORECASE)
_SUFFIX_2023 = re.compile(r"^(?P<case>.+)-(?P<role>t1n|t1c|t2w|t2f|seg)(?P<ext>\.nii\.gz|\.nii)$", re.IGNORECASE)


def parse_name(path: Path) -> tuple[str, str, str] | None:
    """``(case_id, canonical role, naming)`` for a BraTS-named NIfTI file, else ``None``."""
    for pattern, naming in ((_SUFFIX_2023, NAMING_2023), (_SUFFIX_2018, NAMING_2018)):
        m = pattern.match(path.name)
        if m:
            return m.group("case"), ALIASES[m.group("role").lower()], naming
    return None


def role_of_folder(path: Path) -> str | None:
    """Canonical role of a DICOM series folder named like a modality (``t1ce``, ``T2W``, ``flair``...)."""
    return ALIASES.get(path.name.lower().replace("-", "").replace("_", ""))


def naming_of(paths: Mapping[str, Path]) -> str:
    """The naming convention of a case's files (2018 when not BraTS-named)."""
    for p in paths.values():
        parsed = parse_name(p)
        if parsed:
            return parsed[2]
    return NAMING_2018


def read_case(paths: Mapping[str, Path], with_label: bool = False) -> tuple[dict[str, Volume], Volume | None]:
    """Read the four modalities (and the segmentation) and check they share one grid.

    Raises:
        InputError: a missing modality, an unreadable file, or modalities of different shapes or geometry.
    """
    vols = read_coregistered(paths, MODALITIES, what="modality")
    label = None
    if with_label:
        ref = vols[MODALITIES[0]]
        if "seg" not in paths:
            raise InputError(ref.path.parent, "no segmentation (seg) file for this case")
        label = read_label(paths["seg"], ref, naming_of(paths))
    return vols, label


def read_label(path: Path, ref: Volume, naming: str) -> Volume:
    """Read a segmentation on ``ref``'s grid, with values converted to the 2018 convention (ET = 4).

    Raises:
        InputError: unreadable, a grid other than the images', or label values outside 0–4.
    """
    label = read_volume(path)
    if label.shape != ref.shape:
        raise InputError(label.path, f"shape {label.shape} differs from the images' {ref.shape}")
    values = set(np.unique(label.array).astype(int).tolist())
    allowed = {0, 1, 2, 3, 4}
    if not values <= allowed:
        raise InputError(label.path, f"holds label values {sorted(values - allowed)}; expected 0, 1, 2 and 4 (or 3)")
    if naming == NAMING_2023 or 3 in values:
        label.array = np.where(label.array == 3, 4, label.array).astype(np.float32)
    return label


def labels_to_levels(labels: np.ndarray) -> np.ndarray:
    """2018-convention label values (0, 2 ED, 1 NCR/NET, 4 ET) → nesting levels 0..3 (inverse of LEVEL_TO_LABEL)."""
    lookup = np.zeros(5, dtype=np.int64)
    for level, value in enumerate(LEVEL_TO_LABEL[NAMING_2018]):
        lookup[value] = level
    return lookup[np.asarray(labels, dtype=np.int64)]


def stack_case(vols: Mapping[str, Volume], label: Volume | None = None) -> dict[str, Any]:
    """MetaTensors for the transforms: image (4, X, Y, Z) in modality order, label (1, X, Y, Z)."""
    return stack_channels(vols, MODALITIES, label)


class LoadBratsCased(MapTransform):
    """Read a case dict ``{t1, t1ce, t2, flair[, seg]} → {image, label}`` with :func:`read_case`."""

    def __init__(self, with_label: bool = True) -> None:
        super().__init__(keys=list(MODALITIES), allow_missing_keys=True)
        self.with_label = with_label

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[str, Any]:
        paths = {str(k): Path(v) for k, v in data.items() if str(k) in (*MODALITIES, "seg")}
        vols, label = read_case(paths, with_label=self.with_label)
        out = stack_case(vols, label)
        out[keys.CASE_ID] = str(data.get(keys.CASE_ID, ""))
        return out


class BratsRegionsd(MapTransform):
    """Labels (2018 convention) → cumulative WT, TC, ET masks with MONAI's BraTS class conversion."""

    def __init__(self, key: str = keys.LABEL) -> None:
        super().__init__(keys=[key])
        self.convert = ConvertToMultiChannelBasedOnBratsClasses()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            tc_wt_et = torch.as_tensor(self.convert(d[key][0]))  # MONAI orders TC, WT, ET
            d[key] = tc_wt_et[[1, 0, 2]].float()
        return d


def preprocess_transforms(cfg: BratsConfig, with_label: bool) -> Compose:
    """Deterministic, invertible preprocessing: RAS, target spacing, foreground crop, z-score in the brain."""
    ks = [keys.IMAGE, keys.LABEL] if with_label else [keys.IMAGE]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    steps: list[Any] = [Orientationd(keys=ks, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if cfg.target_spacing is not None:
        steps.append(Spacingd(keys=ks, pixdim=cfg.target_spacing, mode=modes))
    steps += [
        CropForegroundd(keys=ks, source_key=keys.IMAGE, allow_smaller=True),
        NormalizeIntensityd(keys=keys.IMAGE, nonzero=True, channel_wise=True),
    ]
    return Compose(steps)


def train_transforms(cfg: BratsConfig) -> Compose:
    """Reading, preprocessing, region targets, then random crop, flips and intensity shift/scale."""
    ks = [keys.IMAGE, keys.LABEL]
    return Compose(
        [
            LoadBratsCased(with_label=True),
            preprocess_transforms(cfg, with_label=True),
            BratsRegionsd(),
            SpatialPadd(keys=ks, spatial_size=cfg.roi_size),
            RandSpatialCropd(keys=ks, roi_size=cfg.roi_size, random_size=False),
            RandFlipd(keys=ks, prob=0.5, spatial_axis=0),
            RandFlipd(keys=ks, prob=0.5, spatial_axis=1),
            RandFlipd(keys=ks, prob=0.5, spatial_axis=2),
            RandScaleIntensityd(keys=keys.IMAGE, factors=cfg.intensity_scale, prob=1.0),
            RandShiftIntensityd(keys=keys.IMAGE, offsets=cfg.intensity_shift, prob=1.0),
        ]
    )


def eval_transforms(cfg: BratsConfig) -> Compose:
    """Reading and preprocessing with region targets, for validation and evaluation."""
    return Compose([LoadBratsCased(with_label=True), preprocess_transforms(cfg, with_label=True), BratsRegionsd()])


def case_name(paths: Mapping[str, Path]) -> str:
    """A display name for a case: its BraTS case id, else the folder name."""
    for p in paths.values():
        parsed = parse_name(p)
        if parsed:
            return parsed[0]
    first = next(iter(paths.values()))
    return first.parent.name if first.is_file() or first.suffix else first.name


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in NIFTI_SUFFIXES)


def group_files(files: Sequence[Path]) -> tuple[dict[str, dict[str, Path]], list[Path]]:
    """Group BraTS-named files by case id; also return the files without a modality suffix."""
    cases: dict[str, dict[str, Path]] = {}
    unnamed: list[Path] = []
    for f in files:
        parsed = parse_name(f)
        if parsed is None:
            unnamed.append(f)
            continue
        case, role, _ = parsed
        cases.setdefault(str(f.parent / case), {})[role] = f
    return cases, unnamed
