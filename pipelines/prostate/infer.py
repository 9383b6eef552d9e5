"""Prediction for ``prostate`` on the volume segmentation family: what is prostate's own is reading one T2W
volume (NIfTI, MHA/NRRD or a DICOM series folder or zip), fusing the two paths into one zone map, the optional
largest component per zone, and the per-zone probability and path-disagreement maps of ``--explain``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydicom.sr.codedict import codes

from models.dual_path_unet import ZONES
from pipelines.common.dicom import SegmentCode
from pipelines.common.io import read_volume, stack_channels
from pipelines.common.segmentation import SegmentationPredictor, VolumeCase, resampled_shape
from pipelines.common.task import InputItem, Prepared
from pipelines.prostate.config import ProstateConfig, ProstateOptions
from pipelines.prostate.losses import disagreement, fuse, split_logits
from pipelines.prostate.transforms import CHANNELS, WINDOW, preprocess_transforms

__all__ = ["ZONE_COLORS", "ZONE_LEGEND", "ProstatePredictor", "keep_largest_components"]

#: zone label → overlay colour (PZ, TZ, DPU, AFS)
ZONE_COLORS = {1: "#1f77b4", 2: "#ff7f0e", 3: "#d62728", 4: "#2ca02c"}
#: zone label → the zone's name in the preview's legend
ZONE_LEGEND = {
    1: "peripheral zone (PZ)",
    2: "transition zone (TZ)",
    3: "distal prostatic urethra (DPU)",
    4: "anterior fibromuscular stroma (AFS)",
}
#: maps the activation returns: the fused distribution (bg + 4 zones), then the disagreement map
_N_FUSED = len(ZONES) + 1
#: SNOMED CT codes of the zones (DICOM CID 6300 prostate anatomy; the DPU is coded as urethra)
SEGMENT_CODES = {
    "PZ": SegmentCode("PZ", codes.SCT.AnatomicalStructure, codes.SCT.PeripheralZoneOfTheProstate),
    "TZ": SegmentCode("TZ", codes.SCT.AnatomicalStructure, codes.SCT.TransitionZoneOfTheProstate),
    "DPU": SegmentCode("DPU", codes.SCT.AnatomicalStructure, codes.SCT.Urethra),
    "AFS": SegmentCode("AFS", codes.SCT.AnatomicalStructure, codes.SCT.AnteriorFibromuscularStromaOfProstate),
}


def keep_largest_components(labels: np.ndarray, values: range | list[int]) -> np.ndarray:
    """For each label value, keep its largest 26-connected component; the rest becomes background."""
    from scipy import ndimage

    out = labels.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in values:
        components, n = ndimage.label(labels == value, structure=structure)
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out


class ProstatePredictor(SegmentationPredictor[ProstateOptions]):
    """Loaded prostate model: one case at a time; the centred ROI is one sliding window."""

    options_model = ProstateOptions
    modality = "MR"
    preview_modality = "T2W"

    def __init__(self, checkpoint: Any, options: Any) -> None:
        self.cfg = ProstateConfig.from_checkpoint(checkpoint.config)
        super().__init__(checkpoint, options)

    def preprocess_transforms(self) -> Any:
        return preprocess_transforms(self.cfg, with_label=False, record_window=True)

    def roi_size(self) -> tuple[int, int, int]:
        return self.cfg.roi_size

    def target_spacing(self) -> tuple[float, float, float] | None:
        return self.cfg.target_spacing

    def read_case(self, item: InputItem, options: ProstateOptions) -> VolumeCase:
        t2 = read_volume(item.paths["t2"])
        return VolumeCase(stack_channels({"t2": t2}, CHANNELS), t2, t2, channels={"t2": t2})

    def check_preprocessed(self, data: Mapping[str, Any], case: VolumeCase) -> list[str]:
        """A warning when the intensity window is empty in the ROI the network sees (nearly every voxel of it one
        value: a near-constant image, or one much smaller than the ROI, which zeros pad): the result is then
        meaningless."""
        lo, hi = data[WINDOW]
        if hi > lo:
            return []
        fov = resampled_shape(case.ref, self.cfg.target_spacing)
        covered = np.prod(np.minimum(fov, self.cfg.roi_size)) / np.prod(self.cfg.roi_size)
        lower, upper = self.cfg.lower_percentile, self.cfg.upper_percentile
        return [
            f"{case.ref.path.name}: in the model's field of view ({covered:.1%} of which the image covers) the "
            f"{lower:g}th and {upper:g}th intensity percentiles are both {lo:g}: the intensity window is empty, "
            "so the result is meaningless"
        ]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        logits_a, logits_b = split_logits(logits)
        probs_a, probs_b = torch.softmax(logits_a, 1), torch.softmax(logits_b, 1)
        return torch.cat([fuse(probs_a, probs_b), disagreement(probs_a, probs_b)[:, None]], dim=1)

    def decode(self, maps: np.ndarray, prepared: Prepared) -> np.ndarray:
        # outside the ROI the inverted maps are all zero, and arg-max picks background
        labels = np.argmax(maps[:_N_FUSED], axis=0).astype(np.uint8)
        if prepared.options.largest_component:
            labels = keep_largest_components(labels, range(1, _N_FUSED))
        return labels

    def regions(self, labels: np.ndarray, prepared: Prepared) -> dict[str, np.ndarray]:
        return {zone: labels == value for value, zone in enumerate(ZONES, start=1)}

    def probabilities(self, maps: np.ndarray, prepared: Prepared) -> np.ndarray:
        return maps[1:_N_FUSED]

    def probability_names(self, prepared: Prepared) -> list[str]:
        return list(ZONES)

    def explanation_maps(self, maps: np.ndarray, prepared: Prepared) -> dict[str, np.ndarray]:
        """The paths' disagreement on the shared classes (0 agree … 1 opposite), where to look twice."""
        return {"disagreement": maps[_N_FUSED]}

    def segment_codes(self) -> dict[str, SegmentCode]:
        return dict(SEGMENT_CODES)

    def overlay_colors(self, prepared: Prepared, labels: np.ndarray) -> dict[int, str]:
        return dict(ZONE_COLORS)

    def label_names(self, prepared: Prepared) -> dict[int, str]:
        return dict(ZONE_LEGEND)

    def result_fields(self, prepared: Prepared) -> dict[str, Any]:
        return {"labels": {"background": 0, **{zone: value for value, zone in enumerate(ZONES, start=1)}}}
