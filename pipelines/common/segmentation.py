"""The volume segmentation family (brats, prostate): one predictor and one evaluation for every 3D segmenter.

The pipeline of one case: read it with its geometry → the task's invertible MONAI ``Compose`` →
``SlidingWindowInferer`` (gaussian blending) with optional mirror TTA and AMP on CUDA → the task's activation
of the logits into continuous maps → ``Compose.inverse`` back to the input grid → the task's ``decode`` into a
label map → :func:`~pipelines.common.io.write_like` (same shape and affine as the input, and of its header the
geometry fields only), per-region volumes in mL, a preview PNG (:mod:`pipelines.common.preview`: three orthogonal
views through the largest region, an axial mosaic, a legend with volumes) and, when explained, one probability map
per named region. When the
input is a DICOM series and the ``dicom_seg`` option is on, the regions are also written as a DICOM SEG
referencing that series (:func:`~pipelines.common.dicom.write_dicom_seg`), coded by the task's ``segment_codes``.

A segmenter subclasses :class:`SegmentationPredictor` and supplies: ``read_case``, ``preprocess_transforms``,
``roi_size``, ``activate``, ``decode``, ``regions`` (and optionally ``probabilities`` with their
``probability_names``, ``overlay_colors``, ``label_names``, ``result_fields``, ``model_fields``, ``segment_codes``,
``explanation_maps``, ``target_spacing``, ``check_preprocessed``, the ``modality`` it reads and the
``preview_modality`` its preview shows). Its options model extends :class:`VolumeOptions`.

Before preprocessing, :meth:`SegmentationPredictor.check_case` refuses what is no case of the task: a DICOM
series of another modality, a constant channel, two channels holding one image, a volume that resampling to the
task's spacing would make larger than ``max_resampled_voxels``. What is doubtful but usable (CT-like
intensities in an MRI task, voxels far coarser than the model's, a NIfTI without orientation) is said in the
result's ``warnings`` list, never only in a log. Non-finite values after preprocessing or in the model's maps
are refused: NaN never reaches a result.
"""

from __future__ import annotations

import abc
import copy
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from pipelines.common import keys
from pipelines.common.config import TaskOptions, VolumeOptions
from pipelines.common.csvsafe import SafeDictWriter
from pipelines.common.device import autocast
from pipelines.common.dicom import SegmentCode, generic_segment_code, write_dicom_seg
from pipelines.common.errors import InputError
from pipelines.common.io import MAX_VOXELS, Volume, write_json, write_like
from pipelines.common.paths import file_safe_names
from pipelines.common.task import InputItem, ItemOutput, Predictor, Prepared

if TYPE_CHECKING:
    import torch
    from monai.transforms import Compose

__all__ = [
    "LabelledCase",
    "SegmentationPredictor",
    "VolumeCase",
    "VolumeOptions",
    "evaluate_segmentation",
    "mirror_axes",
    "resampled_shape",
    "write_probability_map",
]

#: warn when a voxel is more than this many times the model's target spacing along an axis
COARSE_FACTOR = 5.0
#: a channel with at least ``CT_AIR_SHARE`` of its voxels at or below ``CT_AIR_HU`` looks like CT (air in
#: Hounsfield units); MR magnitude images are not negative
CT_AIR_HU = -500.0
CT_AIR_SHARE = 0.1


VolumeOptionsT = TypeVar("VolumeOptionsT", bound=VolumeOptions)


@dataclass
class VolumeCase:
    """One case read with its geometry, before preprocessing.

    Args:
        data: the input of the task's preprocessing ``Compose`` (``{"image": MetaTensor (C, X, Y, Z)}``).
        ref: the volume whose grid every output is written in.
        preview: the channel the preview (``<case>_overlay.png``) shows; the predictor's ``preview_modality``
            names it.
        context: anything else the task's ``decode`` or ``result_fields`` need.
        channels: every input volume by channel name, for the checks of
            :meth:`SegmentationPredictor.check_case` (default: ``ref`` alone).
    """

    data: dict[str, Any]
    ref: Volume
    preview: Volume
    context: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, Volume] = field(default_factory=dict)


def resampled_shape(volume: Volume, target: Sequence[float]) -> tuple[int, int, int]:
    """The spatial shape ``volume`` gets from RAS reorientation then resampling to ``target`` mm (RAS axes), as
    MONAI's ``Orientationd`` + ``Spacingd`` compute it (corner voxel centres, rounded), without allocating."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(volume.affine)
    spacing = volume.spacing
    out = [1, 1, 1]
    for axis, (ras_axis, _) in enumerate(ornt):
        r = int(ras_axis)
        out[r] = int(np.round((volume.shape[axis] - 1) * spacing[axis] / float(target[r]))) + 1
    return out[0], out[1], out[2]


def _same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Identical voxels (cheap statistics compared first)."""
    if a.shape != b.shape or a.min() != b.min() or a.max() != b.max():
        return False
    return bool(np.array_equal(a, b))


def write_probability_map(values: np.ndarray, ref: Volume, path: Path, region: str) -> Path:
    """One region's probabilities (X, Y, Z) as a float32 NIfTI in ``ref``'s geometry
    (:func:`~pipelines.common.io.write_like`), its header naming the region: ``descrip`` ``P(<region>) medinfer``
    and the intent NIFTI_INTENT_ESTIMATE named after the region."""
    return write_like(values, ref, path, np.float32, descrip=f"P({region}) medinfer", estimate_of=region)


def mirror_axes() -> list[tuple[int, ...]]:
    """The 7 non-empty combinations of the spatial axes (2, 3, 4) of a (B, C, X, Y, Z) tensor."""
    return [c for r in (1, 2, 3) for c in itertools.combinations((2, 3, 4), r)]


class SegmentationPredictor(Predictor[VolumeOptionsT], abc.ABC):
    """A loaded 3D segmenter: one case per ``run``; the sliding window batches inside it."""

    max_batch = 1
    options_model: ClassVar[type[TaskOptions]] = VolumeOptions
    #: the DICOM Modality every DICOM channel must have (``MR``...); ``None`` accepts any
    modality: ClassVar[str | None] = None
    #: refuse a case whose volume, resampled to :meth:`target_spacing`, holds more voxels than this
    max_resampled_voxels: ClassVar[int] = MAX_VOXELS
    #: the name of the image the preview shows (``VolumeCase.preview``): ``FLAIR``, ``T2W``...
    preview_modality: ClassVar[str] = "image"

    def __init__(self, checkpoint: Any, options: Any) -> None:
        super().__init__(checkpoint, options)
        self.preprocess = self.preprocess_transforms()

    # -- what a segmenter supplies ---------------------------------------------------------------------------
    @abc.abstractmethod
    def read_case(self, item: InputItem, options: VolumeOptionsT) -> VolumeCase:
        """Read one case with its geometry (raises ``InputError`` naming the file)."""

    @abc.abstractmethod
    def preprocess_transforms(self) -> Compose:
        """The invertible preprocessing shared with training (keys: ``image`` only)."""

    @abc.abstractmethod
    def roi_size(self) -> tuple[int, int, int]:
        """Sliding-window size."""

    @abc.abstractmethod
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Continuous maps (B, M, X, Y, Z) from the network's logits; these are inverted to the input grid."""

    @abc.abstractmethod
    def decode(self, maps: np.ndarray, prepared: Prepared) -> np.ndarray:
        """The label map (X, Y, Z) written to disk, from the maps (M, X, Y, Z) on the input grid."""

    @abc.abstractmethod
    def regions(self, labels: np.ndarray, prepared: Prepared) -> dict[str, np.ndarray]:
        """Named boolean masks of a decoded label map (their volumes are reported in mL)."""

    def target_spacing(self) -> tuple[float, float, float] | None:
        """The voxel size (mm, RAS axes) preprocessing resamples to; ``None`` when it keeps the input's grid."""
        return None

    def probabilities(self, maps: np.ndarray, prepared: Prepared) -> np.ndarray:
        """Per-region probabilities (R, X, Y, Z) written when explained (default: the maps themselves)."""
        return maps

    def probability_names(self, prepared: Prepared) -> list[str]:
        """The names of the R maps :meth:`probabilities` returns, in order; each map is written to
        ``<case>_prob_<name>.nii.gz`` (default: the checkpoint's labels)."""
        return list(self.checkpoint.labels)

    def label_names(self, prepared: Prepared) -> Mapping[int, str]:
        """Label value → the class name the preview's legend shows (default: none; a value without a name is
        called ``label <value>``)."""
        return {}

    def explanation_maps(self, maps: np.ndarray, prepared: Prepared) -> dict[str, np.ndarray]:
        """Further maps (X, Y, Z) on the input grid written when explained, by role (default: none)."""
        return {}

    def overlay_colors(self, prepared: Prepared, labels: np.ndarray) -> Mapping[int, str]:
        """Label value → overlay colour (default: matplotlib's tab10 cycle over the values present)."""
        values = [int(v) for v in np.unique(labels) if v != 0]
        return {v: f"C{i % 10}" for i, v in enumerate(values)}

    def result_fields(self, prepared: Prepared) -> dict[str, Any]:
        """The task's own fields of the result JSON (after ``case``)."""
        return {}

    def model_fields(self) -> dict[str, Any]:
        """What the result says about the model (:meth:`Checkpoint.model_info`: task, model_name, version,
        synthetic_demo, provenance), as every task's result does."""
        return self.checkpoint.model_info()

    def segment_codes(self) -> dict[str, SegmentCode]:
        """Region name → coded description (SNOMED CT category and type) for the DICOM SEG.

        The default, ``{}``, describes every region generically (SCT "Tissue", see
        :func:`~pipelines.common.dicom.generic_segment_code`); a task overrides it with its own codes, and a
        non-empty mapping must then cover every region ``regions`` returns.
        """
        return {}

    # -- checks --------------------------------------------------------------------------------------------
    def check_case(self, case: VolumeCase) -> list[str]:
        """Refuse what is no case of this task; return warnings, in plain words, for what is doubtful.

        Refused (:class:`~pipelines.common.errors.InputError` naming the file): a DICOM channel whose Modality
        is not :attr:`modality`; a constant channel; two channels holding identical voxels; a volume whose
        resampling to :meth:`target_spacing` would exceed :attr:`max_resampled_voxels` (checked before
        anything is allocated). Warned: the readers' own warnings, CT-like intensities (a tenth of the voxels
        at or below −500) when an MR modality is expected, voxels more than ``COARSE_FACTOR`` times coarser
        than the target spacing.
        """
        channels = case.channels or {"image": case.ref}
        warnings: list[str] = []
        for name, vol in channels.items():
            warnings += [f"{vol.path.name}: {w}" for w in vol.warnings]
            found = vol.meta.get("modality", "").strip().upper()
            if self.modality and found and found != self.modality.upper():
                raise InputError(
                    vol.path, f"is a DICOM {found} series; {name} must be {self.modality} (this model reads no other)"
                )
            lo, hi = float(vol.array.min()), float(vol.array.max())
            if lo == hi:
                raise InputError(vol.path, f"{name} is constant (every voxel {lo:g}); it holds no image")
            if self.modality == "MR":
                share = np.count_nonzero(vol.array <= CT_AIR_HU) / vol.array.size
                if share >= CT_AIR_SHARE:
                    warnings.append(
                        f"{vol.path.name}: {share:.0%} of the voxels are at or below {CT_AIR_HU:g}, like air in a "
                        f"CT (Hounsfield units); {name} should be an MR image, so this result may be meaningless"
                    )
        names = list(channels)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if _same_image(channels[a].array, channels[b].array):
                    raise InputError(
                        channels[b].path,
                        f"{a} and {b} are the same image (identical voxels); each needs its own scan",
                    )
        target = self.target_spacing()
        if target is not None:
            warnings += self._check_resampling(case.ref, target)
        return warnings

    def check_preprocessed(self, data: Mapping[str, Any], case: VolumeCase) -> list[str]:
        """Warnings about the preprocessed case (``data`` is the preprocessing's whole output dict); refusals
        raise ``InputError``. Default: none."""
        return []

    def _check_resampling(self, ref: Volume, target: Sequence[float]) -> list[str]:
        shape = resampled_shape(ref, target)
        n_vox = int(np.prod(shape, dtype=np.int64))
        if n_vox > self.max_resampled_voxels:
            raise InputError(
                ref.path,
                f"resampled to the model's {tuple(float(t) for t in target)} mm voxels, this {ref.shape} volume "
                f"of {tuple(round(float(s), 4) for s in ref.spacing)} mm voxels would become {shape} = "
                f"{n_vox:,} voxels, more than the limit {self.max_resampled_voxels:,}",
            )
        import nibabel as nib

        ornt = nib.orientations.io_orientation(ref.affine)
        coarse = [
            (axis, float(ref.spacing[axis]), float(target[int(r)]))
            for axis, (r, _) in enumerate(ornt)
            if ref.spacing[axis] > COARSE_FACTOR * float(target[int(r)])
        ]
        return [
            f"{ref.path.name}: voxels are {size:.3g} mm along array axis {axis}, more than {COARSE_FACTOR:g} times "
            f"the model's {goal:g} mm; they are resampled all the same, and the result is coarse"
            for axis, size, goal in coarse
        ]

    # -- the three steps ---------------------------------------------------------------------------------------
    def prepare(self, item: InputItem) -> Prepared:
        import torch

        options = self.item_options(item)
        t0 = time.perf_counter()
        case = self.read_case(item, options)
        warnings = self.check_case(case)
        t1 = time.perf_counter()
        data = self.preprocess(case.data)
        if not bool(torch.isfinite(torch.as_tensor(data[keys.IMAGE])).all()):
            raise InputError(
                case.ref.path, "preprocessing gave NaN or infinite values (intensities out of any usable range)"
            )
        warnings += self.check_preprocessed(data, case)
        t2 = time.perf_counter()
        context = {"ref": case.ref, "preview": case.preview, **case.context, "warnings": warnings}
        return Prepared(item, data[keys.IMAGE], context, {"read": t1 - t0, "preprocess": t2 - t1}, options)

    def run(self, batch: Sequence[Prepared]) -> list[torch.Tensor]:
        outs = []
        for prep in batch:
            t0 = time.perf_counter()
            outs.append(self.infer_maps(prep.data, prep.options))
            prep.timings["infer"] = time.perf_counter() - t0
        return outs

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path | None) -> ItemOutput:
        if out_dir is None:
            raise TypeError("a volume's result is its files: finish needs an out_dir (needs_files is true)")
        t0 = time.perf_counter()
        labels, maps = self.postprocess(prepared, raw)
        t1 = time.perf_counter()
        result = self.write_outputs(prepared, labels, maps, out_dir)
        prepared.timings["postprocess"] = t1 - t0
        prepared.timings["write"] = time.perf_counter() - t1
        return result

    # -- pieces --------------------------------------------------------------------------------------------
    def forward_maps(self, x: torch.Tensor, options: VolumeOptions) -> torch.Tensor:
        """Sliding-window logits of a (B, C, X, Y, Z) batch turned into maps, under AMP on CUDA."""
        import torch
        from monai.inferers import SlidingWindowInferer

        inferer = SlidingWindowInferer(
            roi_size=self.roi_size(), sw_batch_size=options.sw_batch_size, overlap=options.overlap, mode="gaussian"
        )
        with autocast(self.device, self.options.amp):
            logits = inferer(x, self.model)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"the network must return one logits tensor, got {type(logits).__name__}")
        return self.activate(logits.float())

    def infer_maps(self, image: torch.Tensor, options: VolumeOptions | None = None) -> torch.Tensor:
        """Maps (M, x, y, z) in the preprocessed grid, averaged over mirrored copies when TTA is on."""
        import torch

        options = options or self.task_options
        with torch.no_grad():
            x = torch.as_tensor(image).float()[None].to(self.device)
            maps = self.forward_maps(x, options)
            if options.tta:
                flips = mirror_axes()
                for dims in flips:
                    maps += torch.flip(self.forward_maps(torch.flip(x, dims), options), dims)
                maps /= 1 + len(flips)
        return maps[0].cpu()

    def invert(self, prepared: Prepared, maps: torch.Tensor) -> np.ndarray:
        """Maps (M, X, Y, Z) on the input's grid: the preprocessing's MONAI trace inverted."""
        from monai.data import MetaTensor

        image: MetaTensor = prepared.data
        pred = MetaTensor(maps, meta=copy.deepcopy(image.meta))
        pred.applied_operations = copy.deepcopy(image.applied_operations)
        restored = np.asarray(self.preprocess.inverse({keys.IMAGE: pred})[keys.IMAGE], dtype=np.float32)
        ref: Volume = prepared.context["ref"]
        if restored.shape[1:] != ref.shape:
            raise RuntimeError(f"inverted shape {restored.shape[1:]} differs from the input's {ref.shape}")
        return restored

    def postprocess(self, prepared: Prepared, maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The label map (X, Y, Z) and the maps (M, X, Y, Z), both on the input's grid.

        Raises:
            InputError: the maps hold NaN or infinite values (no result is made of them).
        """
        restored = self.invert(prepared, maps)
        _refuse_non_finite(restored, prepared, "maps")
        return self.decode(restored, prepared), restored

    def write_outputs(self, prepared: Prepared, labels: np.ndarray, maps: np.ndarray, out_dir: Path) -> ItemOutput:
        """Label map, DICOM SEG (DICOM series inputs), result JSON with region volumes, optional preview (its
        claims in the result's ``preview``) and probability maps (one file per region, ``files["probabilities"]``
        maps each region to its file)."""
        ref: Volume = prepared.context["ref"]
        options: VolumeOptions = prepared.options
        name = prepared.item.name
        out_dir.mkdir(parents=True, exist_ok=True)
        output = ItemOutput({})
        files: dict[str, Any] = {
            "segmentation": output.add(
                "segmentation", write_like(labels, ref, out_dir / f"{name}_pred.nii.gz"), out_dir
            )
        }
        masks = self.regions(labels, prepared)
        volumes = {region: round(float(mask.sum()) * ref.voxel_volume_ml, 3) for region, mask in masks.items()}
        if options.dicom_seg and ref.kind == "dicom" and ref.sources:
            seg_path = self.write_dicom_seg(masks, ref, out_dir / f"{name}_seg.dcm")
            files["dicom_seg"] = output.add("dicom_seg", seg_path, out_dir)
        preview: dict[str, Any] | None = None
        if options.overlay:
            overlay_path, preview = self.preview(prepared, labels, volumes, out_dir / f"{name}_overlay.png")
            files["overlay"] = output.add("overlay", overlay_path, out_dir)
        if self.wants_explanation(prepared.item):
            probs = self.probabilities(maps, prepared)
            _refuse_non_finite(probs, prepared, "probabilities")
            regions = self.probability_names(prepared)
            if len(regions) != probs.shape[0]:
                raise RuntimeError(f"{len(regions)} probability names {regions} for {probs.shape[0]} maps")
            files["probabilities"] = {
                region: output.add(
                    "probabilities",
                    write_probability_map(probs[i], ref, out_dir / f"{name}_prob_{safe}.nii.gz", region),
                    out_dir,
                )
                for i, (region, safe) in enumerate(zip(regions, file_safe_names(regions), strict=True))
            }
            for role, volume in self.explanation_maps(maps, prepared).items():
                path = write_like(volume, ref, out_dir / f"{name}_{role}.nii.gz", np.float32)
                files[role] = output.add(role, path, out_dir)
        output.data = {
            "case": name,
            **self.result_fields(prepared),
            "volumes_ml": volumes,
            "shape": list(ref.shape),
            "voxel_volume_ml": ref.voxel_volume_ml,
            "files": files,
            "model": self.model_fields(),
        }
        if preview is not None:
            output.data["preview"] = preview
        warnings = list(prepared.context.get("warnings", []))
        if warnings:  # only when there are some, so that results without any keep their shape
            output.data["warnings"] = warnings
        output.add("result", write_json(output.data, out_dir / f"{name}.json"), out_dir)
        return output

    def write_dicom_seg(self, masks: Mapping[str, np.ndarray], ref: Volume, path: Path) -> Path:
        """The regions as a DICOM SEG referencing ``ref``'s source series, coded by :meth:`segment_codes`."""
        codes = self.segment_codes() or {region: generic_segment_code(region) for region in masks}
        return write_dicom_seg(
            masks,
            codes,
            ref,
            path,
            algorithm_name=self.checkpoint.model_name,
            algorithm_version=self.checkpoint.version,
            series_description=f"{self.checkpoint.task} segmentation (medinfer, research use)",
        )

    def preview(
        self, prepared: Prepared, labels: np.ndarray, volumes_ml: Mapping[str, float], path: Path
    ) -> tuple[Path, dict[str, Any]]:
        """The preview PNG of the label map over the preview channel (:mod:`pipelines.common.preview`) and what it
        claims, for the result's ``preview``: modality, slices, legend entries (the label classes present, named
        by :meth:`label_names`, coloured by :meth:`overlay_colors`) and the regions' volumes."""
        from pipelines.common.preview import plan_preview, preview_figure, save_preview

        image: Volume = prepared.context["preview"]
        plan = plan_preview(
            labels,
            image.affine,
            case=prepared.item.name,
            modality=self.preview_modality,
            names=self.label_names(prepared),
            colors=self.overlay_colors(prepared, labels),
            regions_ml=volumes_ml,
        )
        save_preview(preview_figure(image.array, labels, image.affine, plan), path)
        return path, plan.to_json()

    def warmup(self) -> None:
        import torch

        channels = int(self.checkpoint.model_kwargs.get("in_channels", 1))
        x = torch.zeros((1, channels, *self.roi_size()), device=self.device)
        with torch.no_grad():
            self.forward_maps(x, self.task_options)


def _refuse_non_finite(values: np.ndarray, prepared: Prepared, what: str) -> None:
    if not np.isfinite(values).all():
        ref: Volume = prepared.context["ref"]
        raise InputError(ref.path, f"the model's {what} hold NaN or infinite values for this input; no result is made")


# -- evaluation ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledCase:
    """A case with its reference segmentation, for evaluation."""

    item: InputItem
    label: Path


def evaluate_segmentation(
    predictor: SegmentationPredictor,
    cases: Iterable[LabelledCase],
    out_dir: Path,
    reference_regions: Callable[[Path, Prepared], tuple[dict[str, np.ndarray], Sequence[float]]],
    *,
    task: str,
    notes: str,
    scores: Callable[[np.ndarray, np.ndarray, Sequence[float], Sequence[str]], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Per-region scores on labelled cases; writes predictions, ``cases.csv`` and ``summary.json``.

    Args:
        predictor: a loaded segmenter.
        cases: the labelled cases.
        out_dir: output folder (predictions under ``predictions/``).
        reference_regions: reads a reference on the prepared case's grid → (region masks, spacing in mm).
        task: task name for the summary.
        notes: the stated rules (empty regions...) written into the summary.
        scores: ``(pred, ref, spacing, names) → {metric_region: value}`` on (R, X, Y, Z) boolean stacks (default:
            :func:`~pipelines.common.metrics.dice_hd95`, Dice and HD95 with MONAI).

    Raises:
        ValueError: no cases.
    """
    from pipelines.common.metrics import dice_hd95, summarize

    score = scores or dice_hd95

    out_dir = Path(out_dir)
    pred_dir = out_dir / "predictions"
    rows: list[dict[str, Any]] = []
    for case in cases:
        prepared = predictor.prepare(case.item)
        maps = predictor.run([prepared])[0]
        labels, restored = predictor.postprocess(prepared, maps)
        predictor.write_outputs(prepared, labels, restored, pred_dir)
        ref_regions, spacing = reference_regions(case.label, prepared)
        pred_regions = predictor.regions(labels, prepared)
        names = list(ref_regions)
        pred = np.stack([pred_regions[n] for n in names]).astype(bool)
        ref = np.stack([ref_regions[n] for n in names]).astype(bool)
        rows.append({"case": case.item.name, **score(pred, ref, list(spacing), names)})
    if not rows:
        raise ValueError("no labelled cases to evaluate")
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "cases.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = SafeDictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metrics = [k for k in rows[0] if k != "case"]
    summary = {
        "task": task,
        "checkpoint": str(predictor.checkpoint.path or ""),
        "n_cases": len(rows),
        "metrics": {m: summarize(r[m] for r in rows) for m in metrics},
        "notes": notes,
    }
    write_json(summary, out_dir / "summary.json")
    return summary
