"""The ``brats`` task behind the generic Task interface."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipelines.brats import synthetic
from pipelines.brats.datasets import discover_cases
from pipelines.brats.infer import UNRESOLVED, BratsPredictor
from pipelines.brats.losses import REGIONS, levels_to_regions
from pipelines.brats.train import SYNTHETIC_MARKER, train
from pipelines.brats.transforms import (
    ALIASES,
    MODALITIES,
    NAMING_2018,
    NAMING_2023,
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
from pipelines.common.io import write_json
from pipelines.common.metrics import dice_hd95, summarize
from pipelines.common.task import (
    InputContract,
    InputItem,
    PredictOptions,
    Predictor,
    Task,
    TrainOptions,
    expand_paths,
    register_task,
)


class BratsTask(Task):
    """Nested glioma regions on 4-channel MRI (Hu et al. 2018 on Isensee et al. 2017)."""

    name = "brats"
    title = "Glioma sub-regions (WT ⊃ TC ⊃ ET), nested-class 3D residual U-Net with multi-level activation"
    data_card = "brats.md"
    default_model = "brats_nested_unet"

    @property
    def contract(self) -> InputContract:
        return InputContract(
            description="one case: four co-registered, skull-stripped MRI volumes",
            channels=MODALITIES,
            formats=("NIfTI (.nii/.nii.gz)", "DICOM series (one folder per modality)", "MHA/NRRD"),
            label_names=REGIONS,
            notes=(
                "Pass a case folder (BraTS 2018-2021 *_t1/_t1ce/_t2/_flair or 2023 *-t1n/-t1c/-t2w/-t2f naming, "
                "or DICOM subfolders named t1, t1ce, t2, flair), the four files, or t1=PATH t1ce=PATH t2=PATH "
                "flair=PATH. Output labels follow the input's convention (0/1/2/4 or 0/1/2/3) or --labels."
            ),
        )

    # -- data --------------------------------------------------------------------------------------------
    def synth(self, out_dir: Path, n: int, seed: int, dicom: bool = False, variant: str | None = None) -> Path:
        naming = variant or NAMING_2018
        if naming not in (NAMING_2018, NAMING_2023):
            raise ValueError(f"brats variant must be {NAMING_2018} or {NAMING_2023}, got {naming!r}")
        root = synthetic.generate(out_dir, n=n, seed=seed, naming=naming, dicom=dicom)
        marker = {"generator": "medinfer synth brats", "n": n, "seed": seed, "naming": naming, "dicom": dicom}
        (root / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        return root

    def train(self, options: TrainOptions) -> Path:
        return train(options)

    def demo_synth_n(self) -> int:
        return 10

    def demo_inputs(self, data_dir: Path) -> list[str]:
        heldout = self.synth(Path(data_dir).parent / "brats_heldout", n=2, seed=1000)
        return [str(p) for p in sorted(heldout.iterdir()) if p.is_dir()]

    # -- inference ---------------------------------------------------------------------------------------
    def collect_inputs(self, inputs: Sequence[str]) -> list[InputItem]:
        explicit: dict[str, Path] = {}
        files: list[Path] = []
        items: list[InputItem] = []
        for raw in inputs:
            if "=" in raw and not Path(raw).exists():
                role, _, value = raw.partition("=")
                canonical = ALIASES.get(role.strip().lower())
                if canonical is None or canonical == "seg":
                    raise InputError(raw, f"unknown modality {role!r}; use t1=, t1ce=, t2=, flair=")
                explicit[canonical] = Path(value).expanduser()
                continue
            for path in expand_paths([raw]):
                if path.is_dir():
                    items.extend(self._items_from_folder(path))
                elif path.exists():
                    files.append(path)
                else:
                    items.append(InputItem(path.name, {UNRESOLVED: path}))
        if explicit:
            items.append(InputItem(case_name(explicit), explicit))
        cases, unnamed = group_files(files)
        for case_key, paths in cases.items():
            items.append(InputItem(Path(case_key).name, {k: v for k, v in paths.items() if k != "seg"}))
        items.extend(InputItem(p.name, {UNRESOLVED: p}) for p in unnamed)
        return items

    def _items_from_folder(self, folder: Path) -> list[InputItem]:
        nifti = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and parse_name(p))
        if nifti:
            cases, _ = group_files(nifti)
            return [InputItem(Path(k).name, {r: p for r, p in v.items() if r != "seg"}) for k, v in cases.items()]
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
        series = {role_of_folder(d): d for d in subdirs if role_of_folder(d) in MODALITIES}
        if series:
            return [InputItem(folder.name, series)]  # type: ignore[arg-type]
        if (folder / "dicom").is_dir():
            return self._items_from_folder(folder / "dicom")
        nested = [item for d in subdirs for item in self._items_from_folder(d) if UNRESOLVED not in item.paths]
        return nested or [InputItem(folder.name, {UNRESOLVED: folder})]

    def load_predictor(self, checkpoint: Checkpoint, options: PredictOptions) -> Predictor:
        return BratsPredictor(checkpoint, options)

    # -- evaluation --------------------------------------------------------------------------------------
    def evaluate(self, data_dir: Path, checkpoint: Checkpoint, out_dir: Path, options: PredictOptions) -> dict:
        """Dice and HD95 per region (MONAI) on every labelled case; ``cases.csv`` and ``summary.json``."""
        predictor = BratsPredictor(checkpoint, options)
        out_dir = Path(out_dir)
        pred_dir = out_dir / "predictions"
        rows = []
        for case in discover_cases(data_dir, require_label=True):
            paths = {m: Path(case[m]) for m in (*MODALITIES, "seg")}
            item = InputItem(case[keys.CASE_ID], {m: paths[m] for m in MODALITIES})
            prepared = predictor.prepare(item)
            maps = predictor.run([prepared])[0]
            levels, restored = predictor.postprocess(prepared, maps)
            predictor.write_outputs(prepared, levels, restored, pred_dir)
            # the images were read by ``prepare``; only the segmentation is read here, on their grid
            label = read_label(paths["seg"], prepared.context["ref"], naming_of(paths))
            ref_levels = labels_to_levels(label.array)
            pred_regions = levels_to_regions(_as_tensor(levels))[0].numpy().astype(bool)
            ref_regions = levels_to_regions(_as_tensor(ref_levels))[0].numpy().astype(bool)
            scores = dice_hd95(pred_regions, ref_regions, label.spacing.tolist(), REGIONS)
            rows.append({"case": case[keys.CASE_ID], **scores})
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "cases.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        metrics = [k for k in rows[0] if k != "case"]
        summary = {
            "task": "brats",
            "checkpoint": str(checkpoint.path or ""),
            "n_cases": len(rows),
            "metrics": {m: summarize(r[m] for r in rows) for m in metrics},
            "notes": "Dice is 1 when prediction and reference are both empty; HD95 is 0 then, and 373.13 mm "
            "when exactly one is empty (BraTS convention).",
        }
        write_json(summary, out_dir / "summary.json")
        return summary


def _as_tensor(levels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(levels, dtype=np.int64))[None]


register_task(BratsTask())
