"""Prediction for ``brats``: sliding window (gaussian), optional mirror TTA, inversion to the input grid.

The same preprocessing (:func:`~pipelines.brats.transforms.preprocess_transforms`) serves training, the CLI
and the service; its MONAI trace is inverted so that every output has exactly the input's shape and affine.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from pipelines.brats.config import BratsConfig
from pipelines.brats.losses import REGIONS, Head, levels_to_regions
from pipelines.brats.transforms import (
    LABEL_CONVENTIONS,
    LEVEL_TO_LABEL,
    MODALITIES,
    naming_of,
    preprocess_transforms,
    read_case,
    stack_case,
)
from pipelines.common import keys
from pipelines.common.checkpoint import Checkpoint
from pipelines.common.errors import InputError
from pipelines.common.io import Volume, write_json, write_like
from pipelines.common.plots import plot_overlay
from pipelines.common.task import InputItem, PredictOptions, Predictor, Prepared

#: ``InputItem.paths`` key for a path that could not be grouped (it fails in ``prepare``)
UNRESOLVED = "unresolved"
OVERLAY_COLORS = {1: "#1f77b4", 2: "#2ca02c", 3: "#d62728"}  # by level: edema, necrosis, enhancing


class BratsPredictor(Predictor):
    """Loaded brats model. One volume at a time; ``options.batch_size`` is the sliding-window batch."""

    max_batch = 1

    def __init__(self, checkpoint: Checkpoint, options: PredictOptions) -> None:
        super().__init__(checkpoint, options)
        if options.labels is not None and options.labels not in LABEL_CONVENTIONS:
            raise ValueError(f"--labels must be one of {', '.join(LABEL_CONVENTIONS)}, got {options.labels!r}")
        self.cfg = BratsConfig.from_dict(checkpoint.config)
        self.head = Head(self.cfg.head, self.cfg.beta, self.cfg.thresholds)
        self.preprocess = preprocess_transforms(self.cfg, with_label=False)
        self.inferer = SlidingWindowInferer(
            roi_size=self.cfg.roi_size,
            sw_batch_size=max(1, options.batch_size),
            overlap=options.overlap,
            mode="gaussian",
        )

    # -- the three steps -----------------------------------------------------------------------------------
    def prepare(self, item: InputItem) -> Prepared:
        if UNRESOLVED in item.paths:
            path = item.paths[UNRESOLVED]
            if not path.exists():
                raise InputError(path, "does not exist")
            if path.is_file():
                raise InputError(
                    path,
                    "cannot tell which modality this is; name it <case>_t1/_t1ce/_t2/_flair.nii.gz "
                    "(or -t1n/-t1c/-t2w/-t2f) or pass t1=PATH t1ce=PATH t2=PATH flair=PATH",
                )
            raise InputError(path, "is not a BraTS case (no t1/t1ce/t2/flair files or DICOM series folders)")
        t0 = time.perf_counter()
        vols, _ = read_case(item.paths)
        t1 = time.perf_counter()
        data = self.preprocess(stack_case(vols))
        t2 = time.perf_counter()
        convention = self.options.labels or naming_of(item.paths)
        brain = np.any([v.array != 0 for v in vols.values()], axis=0)
        context = {"ref": vols[MODALITIES[0]], "flair": vols["flair"], "convention": convention, "brain": brain}
        return Prepared(item, data[keys.IMAGE], context, {"read": t1 - t0, "preprocess": t2 - t1})

    def run(self, batch: Sequence[Prepared]) -> list[torch.Tensor]:
        outs = []
        for prep in batch:
            t0 = time.perf_counter()
            outs.append(self.infer_maps(prep.data))
            prep.timings["infer"] = time.perf_counter() - t0
        return outs

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        levels, maps = self.postprocess(prepared, raw)
        t1 = time.perf_counter()
        result = self.write_outputs(prepared, levels, maps, out_dir)
        prepared.timings["postprocess"] = t1 - t0
        prepared.timings["write"] = time.perf_counter() - t1
        return result

    # -- pieces --------------------------------------------------------------------------------------------
    def _forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        amp = self.options.amp and self.device.type == "cuda"
        ctx = torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext()
        with ctx:
            logits = self.inferer(x, self.model)
        return self.head.maps(logits.float())

    @torch.no_grad()
    def infer_maps(self, image: torch.Tensor) -> torch.Tensor:
        """Maps (M, x, y, z) in the preprocessed grid, averaged over mirrored copies when TTA is on."""
        x = torch.as_tensor(image).float()[None].to(self.device)
        maps = self._forward_maps(x)
        if self.options.tta:
            flips = [c for r in (1, 2, 3) for c in itertools.combinations((2, 3, 4), r)]
            for dims in flips:
                maps += torch.flip(self._forward_maps(torch.flip(x, dims)), dims)
            maps /= 1 + len(flips)
        return maps[0].cpu()

    def postprocess(self, prepared: Prepared, maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Invert the preprocessing: levels (X, Y, Z) and maps (M, X, Y, Z) on the input's grid."""
        image: MetaTensor = prepared.data
        pred = MetaTensor(maps, meta=copy.deepcopy(image.meta))
        pred.applied_operations = copy.deepcopy(image.applied_operations)
        restored = np.asarray(self.preprocess.inverse({keys.IMAGE: pred})[keys.IMAGE], dtype=np.float32)
        ref: Volume = prepared.context["ref"]
        if restored.shape[1:] != ref.shape:
            raise RuntimeError(f"inverted shape {restored.shape[1:]} differs from the input's {ref.shape}")
        levels = self.head.decode(torch.from_numpy(restored)[None])[0].numpy().astype(np.uint8)
        levels[~prepared.context["brain"]] = 0  # no tumour outside the skull-stripped brain
        return levels, restored

    def write_outputs(self, prepared: Prepared, levels: np.ndarray, maps: np.ndarray, out_dir: Path) -> dict[str, Any]:
        """Label map (input convention), region volumes JSON, optional overlay and probability maps."""
        ref: Volume = prepared.context["ref"]
        convention: str = prepared.context["convention"]
        name = prepared.item.name
        out_dir.mkdir(parents=True, exist_ok=True)
        label_map = np.asarray(LEVEL_TO_LABEL[convention], dtype=np.uint8)[levels]
        seg_path = write_like(label_map, ref, out_dir / f"{name}_pred.nii.gz")
        regions = levels_to_regions(torch.from_numpy(levels.astype(np.int64))[None])[0].numpy().astype(bool)
        volumes = {r: round(float(regions[i].sum()) * ref.voxel_volume_ml, 3) for i, r in enumerate(REGIONS)}
        files = {"segmentation": seg_path.name}
        if self.options.overlay:
            files["overlay"] = self._overlay(prepared, levels, out_dir / f"{name}_overlay.png").name
        if self.wants_explanation(prepared.item):
            probs = self.head.region_probabilities(torch.from_numpy(maps)[None])[0].numpy()
            prob_path = write_like(np.moveaxis(probs, 0, -1), ref, out_dir / f"{name}_prob.nii.gz", np.float32)
            files["probabilities"] = prob_path.name
        result = {
            "case": name,
            "label_convention": convention,
            "labels": dict(
                zip(
                    ("background", "edema", "necrosis_non_enhancing", "enhancing"),
                    LEVEL_TO_LABEL[convention],
                    strict=True,
                )
            ),
            "volumes_ml": volumes,
            "shape": list(ref.shape),
            "voxel_volume_ml": ref.voxel_volume_ml,
            "files": files,
            "model": {"name": self.checkpoint.model_name, "head": self.cfg.head, "version": self.checkpoint.version},
        }
        write_json(result, out_dir / f"{name}.json")
        return result

    def _overlay(self, prepared: Prepared, levels: np.ndarray, path: Path) -> Path:
        """FLAIR axial slice with the most tumour, in radiological RAS display, with levels overlaid."""
        import nibabel as nib

        flair: Volume = prepared.context["flair"]
        ornt = nib.orientations.io_orientation(flair.affine)
        img = nib.orientations.apply_orientation(flair.array, ornt)
        lab = nib.orientations.apply_orientation(levels, ornt)
        z = int(np.argmax((lab > 0).sum(axis=(0, 1))))
        return plot_overlay(img[:, :, z], lab[:, :, z], OVERLAY_COLORS, path, title=f"{prepared.item.name} (axial {z})")

    def warmup(self) -> None:
        x = torch.zeros((1, 4, *self.cfg.roi_size), device=self.device)
        with torch.no_grad():
            self._forward_maps(x)
