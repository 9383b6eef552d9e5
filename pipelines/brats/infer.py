"""Prediction for ``brats`` on the volume segmentation family: what is brats's own is reading the four
modalities, the multi-level head's maps and their decoding into nested levels in the input's label convention.

The same preprocessing (:func:`~pipelines.brats.transforms.preprocess_transforms`) serves training, the CLI
and the service; the family inverts its MONAI trace so that every output has exactly the input's grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydicom.sr.coding import Code

from models.nested_unet import BRATS_REGIONS as REGIONS
from pipelines.brats.config import BratsConfig, BratsOptions
from pipelines.brats.losses import Head
from pipelines.brats.transforms import (
    LEVEL_TO_LABEL,
    MODALITIES,
    naming_of,
    preprocess_transforms,
    read_case,
    stack_case,
)
from pipelines.common.dicom import SegmentCode
from pipelines.common.segmentation import SegmentationPredictor, VolumeCase
from pipelines.common.task import InputItem, Prepared

#: level → colour (edema, necrosis/non-enhancing, enhancing)
LEVEL_COLORS = {1: "#1f77b4", 2: "#2ca02c", 3: "#d62728"}
LEVEL_NAMES = ("background", "edema", "necrosis_non_enhancing", "enhancing")
#: level → the class's name in the preview's legend (the classes drawn; the nested regions WT ⊃ TC ⊃ ET are
#: unions of them, and the preview states their volumes beside the legend)
LEVEL_LEGEND = {1: "edema (ED)", 2: "necrosis/non-enhancing (NCR/NET)", 3: "enhancing (ET)"}

#: DICOM SEG descriptions of the regions. Category: SCT 49755003 "Morphologically Abnormal Structure" (CID 7150).
#: Types (SNOMED CT morphologic abnormalities): WT is the whole abnormal region, tumour and peritumoural edema,
#: hence "Lesion" (52988006) rather than a neoplasm code; TC is the tumour bulk (necrotic, non-enhancing and
#: enhancing tumour), "Neoplasm" (108369006); ET is its contrast-enhancing part, also "Neoplasm": SNOMED CT has
#: no concept for an enhancing part of a tumour in DICOM's segmentation context groups, so the label tells it
#: apart from TC.
_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
SEGMENT_CODES = {
    REGIONS[0]: SegmentCode("Whole tumor (WT)", _ABNORMAL, Code("52988006", "SCT", "Lesion")),
    REGIONS[1]: SegmentCode("Tumor core (TC)", _ABNORMAL, Code("108369006", "SCT", "Neoplasm")),
    REGIONS[2]: SegmentCode("Enhancing tumor (ET)", _ABNORMAL, Code("108369006", "SCT", "Neoplasm")),
}


class BratsPredictor(SegmentationPredictor[BratsOptions]):
    """Loaded brats model: one case at a time; ``sw_batch_size`` windows per forward pass."""

    options_model = BratsOptions
    modality = "MR"
    preview_modality = "FLAIR"

    def __init__(self, checkpoint: Any, options: Any) -> None:
        self.cfg = BratsConfig.from_checkpoint(checkpoint.config)
        self.head = Head(self.cfg.head, self.cfg.beta, self.cfg.thresholds)
        super().__init__(checkpoint, options)

    def preprocess_transforms(self) -> Any:
        return preprocess_transforms(self.cfg, with_label=False)

    def roi_size(self) -> tuple[int, int, int]:
        return self.cfg.roi_size

    def target_spacing(self) -> tuple[float, float, float] | None:
        return self.cfg.target_spacing

    def read_case(self, item: InputItem, options: BratsOptions) -> VolumeCase:
        vols, _ = read_case(item.paths)
        brain = np.any([v.array != 0 for v in vols.values()], axis=0)
        convention = options.labels or naming_of(item.paths)
        context = {"convention": convention, "brain": brain}
        return VolumeCase(stack_case(vols), vols[MODALITIES[0]], vols["flair"], context, channels=dict(vols))

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return self.head.maps(logits)

    def levels(self, maps: np.ndarray, prepared: Prepared) -> np.ndarray:
        """Nesting levels (0 bg, 1 ED, 2 NCR/NET, 3 ET) on the input grid; none outside the skull-stripped brain."""
        levels = self.head.decode(torch.from_numpy(maps)[None])[0].numpy().astype(np.uint8)
        levels[~prepared.context["brain"]] = 0
        return levels

    def labels_from_levels(self, levels: np.ndarray, prepared: Prepared) -> np.ndarray:
        """Nesting levels → label values of the case's convention (0/2/1/4 or 0/2/1/3)."""
        lookup = np.asarray(LEVEL_TO_LABEL[prepared.context["convention"]], dtype=np.uint8)
        return lookup[levels]

    def decode(self, maps: np.ndarray, prepared: Prepared) -> np.ndarray:
        return self.labels_from_levels(self.levels(maps, prepared), prepared)

    def regions(self, labels: np.ndarray, prepared: Prepared) -> dict[str, np.ndarray]:
        _, ed, _ncr, et = LEVEL_TO_LABEL[prepared.context["convention"]]
        wt = labels > 0
        return {REGIONS[0]: wt, REGIONS[1]: wt & (labels != ed), REGIONS[2]: labels == et}

    def segment_codes(self) -> dict[str, SegmentCode]:
        return dict(SEGMENT_CODES)

    def probabilities(self, maps: np.ndarray, prepared: Prepared) -> np.ndarray:
        return self.head.region_probabilities(torch.from_numpy(maps)[None])[0].numpy()

    def probability_names(self, prepared: Prepared) -> list[str]:
        return list(REGIONS)

    def overlay_colors(self, prepared: Prepared, labels: np.ndarray) -> dict[int, str]:
        lookup = LEVEL_TO_LABEL[prepared.context["convention"]]
        return {lookup[level]: color for level, color in LEVEL_COLORS.items()}

    def label_names(self, prepared: Prepared) -> dict[int, str]:
        lookup = LEVEL_TO_LABEL[prepared.context["convention"]]
        return {lookup[level]: name for level, name in LEVEL_LEGEND.items()}

    def result_fields(self, prepared: Prepared) -> dict[str, Any]:
        convention = prepared.context["convention"]
        return {
            "label_convention": convention,
            "labels": dict(zip(LEVEL_NAMES, LEVEL_TO_LABEL[convention], strict=True)),
        }

    def model_fields(self) -> dict[str, Any]:
        return {**super().model_fields(), "head": self.cfg.head}
