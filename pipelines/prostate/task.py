"""The ``prostate`` task behind the generic Task interface, on the volume segmentation family."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.dual_path_unet import ZONES
from pipelines.common import keys
from pipelines.common.checkpoint import Checkpoint
from pipelines.common.errors import InputError
from pipelines.common.io import ITK_SUFFIXES, NIFTI_SUFFIXES, has_suffix
from pipelines.common.segmentation import LabelledCase, evaluate_segmentation
from pipelines.common.task import (
    Collected,
    InputContract,
    InputItem,
    OutputHead,
    PredictOptions,
    Prepared,
    Task,
    expand_paths,
    register_task,
)
from pipelines.prostate import synthetic
from pipelines.prostate.config import ProstateConfig, ProstateOptions, ProstateTrainOptions
from pipelines.prostate.datasets import IMAGE_NAMES, LABEL_NAMES, discover_cases, find_named
from pipelines.prostate.infer import ProstatePredictor
from pipelines.prostate.train import ProstateRun
from pipelines.prostate.transforms import read_zones

EVALUATION_NOTES = (
    "Per zone, in mm on the input grid: Dice, HD95 = max of the two directed 95th-percentile surface distances, "
    "MASD = mean of the two directed mean surface distances. A zone absent from both prediction and reference "
    "scores Dice 1, HD95 0, MASD 0; absent from exactly one, Dice 0 and HD95/MASD undefined (NaN, left out of the "
    "summary's means, whose n says how many cases count)."
)
#: file names that are labels or outputs, never an input image
_NOT_IMAGES = ("zones", "_pred", "_prob", "_seg", "_disagreement")


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or any file with the DICM preamble."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _is_volume_file(path: Path) -> bool:
    return has_suffix(path, (*NIFTI_SUFFIXES, *ITK_SUFFIXES, ".zip")) and not any(
        tag in path.name.lower() for tag in _NOT_IMAGES
    )


def case_name(path: Path) -> str:
    """A display name: the case folder for ``<case>/t2.nii.gz`` and ``<case>/dicom``, else the file's stem."""
    if path.is_dir():
        return path.parent.name if path.name.lower() == "dicom" and path.parent.name else path.name
    if path.name.lower() in (*IMAGE_NAMES, "t2.mha", "t2.nrrd") and path.parent.name:
        return path.parent.name
    return path.name.split(".")[0]


class ProstateTask(Task):
    """PI-RADS v2 prostate zones on axial T2-weighted MRI (Das, Ghosh & Stober 2023)."""

    name = "prostate"
    title = "Prostate zones (PZ, TZ, DPU, AFS) on T2W MRI, PI-RADS v2 dual-path multi-task CNN with co-training"
    data_card = "prostate.md"
    default_model = "prostate_dual_path_unet"
    options_model = ProstateOptions
    train_options_model = ProstateTrainOptions
    config_class = ProstateConfig
    run_class = ProstateRun
    demo_options: ClassVar[dict[str, Any]] = {"overlay": True}

    @property
    def contract(self) -> InputContract:
        return InputContract(
            description="one axial T2-weighted prostate MRI volume",
            kind="volume",
            channels=("t2",),
            formats=("DICOM series (folder or zip)", "NIfTI (.nii/.nii.gz)", "MHA/NRRD"),
            heads=(OutputHead("zones", ZONES, "softmax"),),
            notes=(
                "Pass a volume file, a DICOM series folder or zip, or a case folder holding t2.nii.gz; folders of "
                "cases are searched. Output: zone map 0 bg, 1 PZ, 2 TZ, 3 DPU, 4 AFS in the input's grid, zone "
                "volumes in mL, and for DICOM input a DICOM SEG referencing the series."
            ),
        )

    # -- data --------------------------------------------------------------------------------------------
    def generate(self, out_dir: Path, n: int, seed: int, dicom: bool, variant: str | None) -> tuple[Path, dict]:
        if variant is not None:
            raise ValueError(f"prostate has no synthetic variants, got {variant!r}")
        return synthetic.generate(out_dir, n=n, seed=seed, dicom=dicom), {}

    def example_inputs(self, root: Path, n: int, seed: int) -> list[str]:
        data = self.synth(root, n=n, seed=seed, dicom=True)
        cases = sorted(p for p in data.iterdir() if p.is_dir())
        # a NIfTI case folder first, then DICOM series
        return [str(c if i == 0 else c / "dicom") for i, c in enumerate(cases)]

    # -- inference ---------------------------------------------------------------------------------------
    def collect_inputs(self, inputs: Sequence[str]) -> Collected:
        out = Collected()
        loose_dicom: dict[Path, None] = {}
        for path in expand_paths(inputs):
            if not path.exists():
                out.errors.append(InputError(path, "does not exist"))
            elif path.is_dir():
                items = self._items_from_folder(path)
                if items:
                    out.items.extend(items)
                else:
                    out.errors.append(
                        InputError(path, "holds no T2 volume (t2.nii.gz, a NIfTI/MHA/NRRD file or a DICOM series)")
                    )
            elif is_dicom_file(path):
                loose_dicom[path.parent] = None
            else:
                out.items.append(InputItem(case_name(path), {"t2": path}))
        out.items.extend(InputItem(case_name(folder), {"t2": folder}) for folder in loose_dicom)
        return out

    def _items_from_folder(self, folder: Path) -> list[InputItem]:
        image = find_named(folder, IMAGE_NAMES)
        if image is not None:
            return [InputItem(folder.name, {"t2": image})]
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if any(is_dicom_file(p) for p in files[:64]):
            return [InputItem(case_name(folder), {"t2": folder})]
        items = [InputItem(case_name(p), {"t2": p}) for p in files if _is_volume_file(p)]
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            items.extend(self._items_from_folder(sub))
        return items

    def load_predictor(self, checkpoint: Checkpoint, options: PredictOptions) -> ProstatePredictor:
        return ProstatePredictor(checkpoint, options)

    # -- evaluation --------------------------------------------------------------------------------------
    def evaluate(self, data_dir: Path, checkpoint: Checkpoint, out_dir: Path, options: PredictOptions) -> dict:
        """Dice, HD95 and MASD per zone on every labelled case; ``cases.csv`` and ``summary.json``."""
        from pipelines.common.metrics import segmentation_scores

        predictor = ProstatePredictor(checkpoint, options)
        labelled, _ = discover_cases(data_dir)
        if not labelled:
            raise ValueError(f"{data_dir}: no labelled prostate cases (<case>/t2.nii.gz with zones.nii.gz)")
        cases = [LabelledCase(InputItem(c[keys.CASE_ID], {"t2": Path(c["t2"])}), Path(c["zones"])) for c in labelled]

        def reference(label_path: Path, prepared: Prepared) -> tuple[dict[str, Any], Any]:
            zones = read_zones(label_path, prepared.context["ref"])
            regions = {z: np.asarray(zones.array == v) for v, z in enumerate(ZONES, start=1)}
            return regions, zones.spacing.tolist()

        return evaluate_segmentation(
            predictor, cases, out_dir, reference, task=self.name, notes=EVALUATION_NOTES, scores=segmentation_scores
        )


__all__ = ["LABEL_NAMES", "ProstateTask", "case_name", "is_dicom_file"]

register_task(ProstateTask())
