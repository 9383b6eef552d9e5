"""The ``brats`` task behind the generic Task interface, on the volume segmentation family."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.nested_unet import BRATS_REGIONS as REGIONS
from pipelines.brats import synthetic
from pipelines.brats.config import BratsConfig, BratsOptions, BratsTrainOptions
from pipelines.brats.datasets import discover_cases
from pipelines.brats.infer import BratsPredictor
from pipelines.brats.train import BratsRun
from pipelines.brats.transforms import (
    ALIASES,
    LABEL_CONVENTIONS,
    MODALITIES,
    NAMING_2018,
    case_name,
    group_files,
    is_nifti,
    labels_to_levels,
    naming_of,
    parse_name,
    read_label,
    role_of_folder,
)
from pipelines.common import keys
from pipelines.common.checkpoint import Checkpoint
from pipelines.common.errors import InputError
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

EVALUATION_NOTES = (
    "Dice is 1 when prediction and reference are both empty; HD95 is 0 then, and 373.13 mm when exactly one is "
    "empty (BraTS convention)."
)


class BratsTask(Task):
    """Nested glioma regions on 4-channel MRI (Hu et al. 2018 on Isensee et al. 2017)."""

    name = "brats"
    title = "Glioma sub-regions (WT ⊃ TC ⊃ ET), nested-class 3D residual U-Net with multi-level activation"
    data_card = "brats.md"
    default_model = "brats_nested_unet"
    options_model = BratsOptions
    train_options_model = BratsTrainOptions
    config_class = BratsConfig
    run_class = BratsRun
    demo_options: ClassVar[dict[str, Any]] = {"overlay": True}

    @property
    def contract(self) -> InputContract:
        return InputContract(
            description="one case: four co-registered, skull-stripped MRI volumes",
            kind="volume",
            channels=MODALITIES,
            formats=("NIfTI (.nii/.nii.gz)", "DICOM series (one folder per modality)", "MHA/NRRD"),
            heads=(OutputHead("regions", REGIONS, "multilevel"),),
            notes=(
                "Pass a case folder (BraTS 2018-2021 *_t1/_t1ce/_t2/_flair or 2023 *-t1n/-t1c/-t2w/-t2f naming, "
                "or DICOM subfolders named t1, t1ce, t2, flair), the four files, or t1=PATH t1ce=PATH t2=PATH "
                f"flair=PATH. Output labels follow the input's convention ({', '.join(LABEL_CONVENTIONS)}) or the "
                "labels option."
            ),
        )

    # -- data --------------------------------------------------------------------------------------------
    def generate(self, out_dir: Path, n: int, seed: int, dicom: bool, variant: str | None) -> tuple[Path, dict]:
        naming = variant or NAMING_2018
        if naming not in LABEL_CONVENTIONS:
            raise ValueError(f"brats variant must be one of {', '.join(LABEL_CONVENTIONS)}, got {naming!r}")
        root = synthetic.generate(out_dir, n=n, seed=seed, naming=naming, dicom=dicom)
        return root, {"naming": naming}

    def demo_synth_n(self) -> int:
        return 10

    def example_inputs(self, root: Path, n: int, seed: int) -> list[str]:
        data = self.synth(root, n=n, seed=seed)
        return [str(p) for p in sorted(data.iterdir()) if p.is_dir()]

    # -- inference ---------------------------------------------------------------------------------------
    def collect_inputs(self, inputs: Sequence[str]) -> Collected:
        explicit: dict[str, Path] = {}
        files: list[Path] = []
        out = Collected()
        for raw in inputs:
            if "=" in raw and not Path(raw).exists():
                role, _, value = raw.partition("=")
                canonical = ALIASES.get(role.strip().lower())
                if canonical is None or canonical == "seg":
                    out.errors.append(InputError(raw, f"unknown modality {role!r}; use t1=, t1ce=, t2=, flair="))
                    continue
                explicit[canonical] = Path(value).expanduser()
                continue
            for path in expand_paths([raw]):
                if path.is_dir():
                    self._collect_folder(path, out)
                elif path.exists():
                    files.append(path)
                else:
                    out.errors.append(InputError(path, "does not exist"))
        if explicit:
            out.items.append(InputItem(case_name(explicit), explicit))
        cases, unnamed = group_files(files)
        for case_key, paths in cases.items():
            out.items.append(InputItem(Path(case_key).name, {k: v for k, v in paths.items() if k != "seg"}))
        out.errors.extend(
            InputError(
                p,
                "cannot tell which modality this is; name it <case>_t1/_t1ce/_t2/_flair.nii.gz "
                "(or -t1n/-t1c/-t2w/-t2f) or pass t1=PATH t1ce=PATH t2=PATH flair=PATH",
            )
            for p in unnamed
        )
        return out

    def _collect_folder(self, folder: Path, out: Collected) -> None:
        items = self._items_from_folder(folder)
        if items:
            out.items.extend(items)
        else:
            out.errors.append(
                InputError(folder, "is not a BraTS case (no t1/t1ce/t2/flair files or DICOM series folders)")
            )

    def _items_from_folder(self, folder: Path) -> list[InputItem]:
        nifti = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and parse_name(p))
        if nifti:
            cases, _ = group_files(nifti)
            return [InputItem(Path(k).name, {r: p for r, p in v.items() if r != "seg"}) for k, v in cases.items()]
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
        series = {role: d for d in subdirs if (role := role_of_folder(d)) in MODALITIES}
        if series:
            # a case's series sit in <case>/dicom/: the case is named after <case>, not "dicom"
            name = folder.parent.name if folder.name.lower() == "dicom" and folder.parent.name else folder.name
            return [InputItem(name, series)]
        if (folder / "dicom").is_dir():
            return self._items_from_folder(folder / "dicom")
        return [item for d in subdirs for item in self._items_from_folder(d)]

    def load_predictor(self, checkpoint: Checkpoint, options: PredictOptions) -> BratsPredictor:
        return BratsPredictor(checkpoint, options)

    # -- evaluation --------------------------------------------------------------------------------------
    def evaluate(self, data_dir: Path, checkpoint: Checkpoint, out_dir: Path, options: PredictOptions) -> dict:
        """Dice and HD95 per region (MONAI) on every labelled case; ``cases.csv`` and ``summary.json``."""
        predictor = BratsPredictor(checkpoint, options)
        cases = [
            LabelledCase(InputItem(case[keys.CASE_ID], {m: Path(case[m]) for m in MODALITIES}), Path(case["seg"]))
            for case in discover_cases(data_dir, require_label=True)
        ]

        def reference(label_path: Path, prepared: Prepared) -> tuple[dict[str, Any], Any]:
            # the images were read by ``prepare``; only the segmentation is read here, on their grid
            label = read_label(label_path, prepared.context["ref"], naming_of(prepared.item.paths))
            levels = labels_to_levels(label.array)
            regions = {REGIONS[0]: levels >= 1, REGIONS[1]: levels >= 2, REGIONS[2]: levels >= 3}
            return {k: np.asarray(v, dtype=bool) for k, v in regions.items()}, label.spacing.tolist()

        return evaluate_segmentation(predictor, cases, out_dir, reference, task=self.name, notes=EVALUATION_NOTES)


register_task(BratsTask())
