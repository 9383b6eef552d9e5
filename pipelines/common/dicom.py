"""DICOM helpers shared by the volume tasks: writing a volume as an MR series (synthetic data, tests) and
writing a segmentation result as a DICOM Segmentation (SEG) object that references its source series.

A SEG made here is a binary, multi-frame SEG (highdicom) with one segment per region; regions may overlap
(brats WT ⊃ TC ⊃ ET). Frame ``z`` of each segment is slice ``z`` of the source series: its plane position and
its source image reference are those of ``ref.sources[z]``, so a viewer lays the SEG over the series it came
from. Patient and study identifiers are copied from the source, as DICOM requires; nothing here logs them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.common.errors import InputError

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.sr.coding import Code

    from pipelines.common.io import Volume

__all__ = ["SegmentCode", "generic_segment_code", "write_dicom_seg", "write_dicom_series"]

#: what a DICOM SEG must be able to read from every source slice's header
_REQUIRED_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
#: Patient and General Study attributes of type 2 (present, may be empty) that highdicom reads from the source
_TYPE2_TAGS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
#: said on every SEG (Content Description, at most 64 characters)
DISCLAIMER = "Not a medical device; not for diagnosis."


@dataclass(frozen=True)
class SegmentCode:
    """How one region is described in a DICOM SEG.

    Args:
        label: the segment's label shown by viewers (at most 64 characters).
        category: Segmented Property Category (CID 7150), e.g. SCT 49755003 "Morphologically Abnormal Structure".
        type: Segmented Property Type (e.g. CID 7151 or 7159), e.g. SCT 108369006 "Neoplasm".
    """

    label: str
    category: Code
    type: Code


def generic_segment_code(label: str) -> SegmentCode:
    """A generic description for a region a task has not coded: category and type SCT 85756007 "Tissue"
    (what 3D Slicer gives a segment nobody has coded)."""
    from pydicom.sr.coding import Code

    tissue = Code("85756007", "SCT", "Tissue")
    return SegmentCode(label, tissue, tissue)


def write_dicom_series(image: np.ndarray, affine: np.ndarray, folder: Path, description: str, case_index: int) -> None:
    """Write a 3D image as an MR DICOM series (one file per slice) with the given RAS affine.

    The files carry the attributes a DICOM SEG needs from its source (Patient, General Study, Frame of
    Reference, Image Plane); the patient is a synthetic phantom.

    Args:
        image: voxel values ``(X, Y, Z)``, rounded to int16.
        affine: 4×4 voxel-index → RAS-mm matrix.
        folder: where the files ``IM0001.dcm``... go (created).
        description: Series Description (e.g. the modality, ``T1``).
        case_index: the case's number, which the synthetic study's UIDs and patient ID are made from.
    """
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    direction = lps / spacing
    origin = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]
    vol = sitk.GetImageFromArray(np.round(image).astype(np.int16).transpose(2, 1, 0))
    vol.SetSpacing([float(s) for s in spacing])
    vol.SetOrigin([float(o) for o in origin])
    vol.SetDirection([float(d) for d in direction.ravel()])
    study_uid = f"1.2.826.0.1.3680043.8.498.{case_index + 1}"
    series_number = 1 + sum(map(ord, description))
    series_uid = f"{study_uid}.{series_number}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1]))
    for z in range(vol.GetDepth()):
        sl = vol[:, :, z]
        position = vol.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{z + 1}",
            "0008|0020": "20000101",
            "0008|0030": "120000",
            "0008|0050": "",
            "0008|0070": "medinfer synthetic",
            "0008|0090": "",
            "0008|103e": description,
            "0010|0010": "SYNTHETIC^PHANTOM",
            "0010|0020": f"SYN{case_index:04d}",
            "0010|0030": "",
            "0010|0040": "O",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0010": f"{case_index + 1}",
            "0020|0011": str(series_number),
            "0020|0052": study_uid + ".9",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in position),
            "0020|0037": orientation,
            "0018|0050": f"{spacing[2]:.6f}",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{z + 1:04d}.dcm"))
        writer.Execute(sl)


def _checked_sources(ref: Volume) -> list[Dataset]:
    """The reference's slice headers, checked to describe its grid; the first a copy with type-2 gaps filled."""
    sources = ref.sources
    if not sources:
        raise ValueError(f"{ref.path}: the reference volume was not read from a DICOM series (no source headers)")
    n_x, n_y, n_z = ref.shape
    if len(sources) != n_z:
        raise ValueError(f"{ref.path}: {len(sources)} source headers for {n_z} slices")
    missing = sorted({tag for ds in sources for tag in _REQUIRED_TAGS if not ds.get(tag)})
    if missing:
        raise InputError(ref.path, f"DICOM headers lack {', '.join(missing)}; a DICOM SEG cannot reference them")
    if any((int(ds.Rows), int(ds.Columns)) != (n_y, n_x) for ds in sources):
        raise InputError(ref.path, f"DICOM slices are not all {n_y} rows × {n_x} columns like the volume read")
    first = copy.deepcopy(sources[0])  # a header without pixels; the reference's own stay as read
    for tag in _TYPE2_TAGS:
        if tag not in first:
            setattr(first, tag, "")
    # highdicom takes the SEG's pixel measures from the first source. Spacing Between Slices is removed so
    # that highdicom computes it from the slice positions: a source's value may be wrong (ITK writes 1 mm for
    # every series it writes slice by slice). Slice Thickness (type 2 in MR/CT) falls back to the spacing.
    if "SpacingBetweenSlices" in first:
        del first.SpacingBetweenSlices
    if not first.get("SliceThickness"):
        first.SliceThickness = f"{ref.spacing[2]:.6g}"
    return [first, *sources[1:]]


def write_dicom_seg(
    regions: Mapping[str, np.ndarray],
    codes: Mapping[str, SegmentCode],
    ref: Volume,
    path: Path,
    *,
    algorithm_name: str,
    algorithm_version: str,
    series_description: str,
) -> Path:
    """Write region masks as a binary DICOM SEG that references ``ref``'s source series.

    Segments are numbered 1..R in ``regions``' order; each is an automatic (AI) segmentation described by its
    :class:`SegmentCode`. Frame ``z`` of a segment is ``mask[:, :, z].T`` (rows along Y, columns along X) and
    references ``ref.sources[z]``; empty frames are omitted. The SEG is a new series in the source's study,
    with its patient and study identifiers, and its content is qualified as research.

    Args:
        regions: region name → boolean mask ``(X, Y, Z)`` on ``ref``'s grid; regions may overlap.
        codes: region name → coded description; every region needs one.
        ref: the volume the masks were made on, read from a DICOM series (``ref.sources`` set).
        path: the file to write (``.dcm``).
        algorithm_name: the model's name (Algorithm Identification, Manufacturer's Model Name).
        algorithm_version: the model's version (checkpoint version).
        series_description: the SEG series' description (at most 64 characters).

    Returns:
        ``path``.

    Raises:
        ValueError: no regions, a region without a code, a mask not of ``ref``'s shape, or ``ref`` not read
            from a DICOM series.
        InputError: the source headers lack what a SEG must reference (Frame of Reference, positions...).
    """
    import highdicom as hd
    from pydicom.sr.coding import Code

    if not regions:
        raise ValueError("no regions to write")
    uncoded = [name for name in regions if name not in codes]
    if uncoded:
        raise ValueError(f"no segment code for region(s) {', '.join(uncoded)}")
    for name, mask in regions.items():
        if tuple(mask.shape) != ref.shape:
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}; the reference has {ref.shape}")
    sources = _checked_sources(ref)

    # (X, Y, Z, R) → frames (Z, rows=Y, columns=X, R)
    masks = np.stack([np.asarray(regions[name], dtype=bool) for name in regions], axis=-1)
    pixels = np.ascontiguousarray(masks.transpose(2, 1, 0, 3), dtype=np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=Code("123110", "DCM", "Artificial Intelligence"),  # CID 7162
        version=algorithm_version,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=codes[name].label,
            segmented_property_category=codes[name].category,
            segmented_property_type=codes[name].type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(regions, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=_series_number(sources[0]),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medinfer",
        manufacturer_model_name=algorithm_name,
        software_versions=_software_version(),
        device_serial_number="0",
        content_label="MEDINFER",
        content_description=DISCLAIMER,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        series_description=series_description[:64],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def _series_number(source: Any) -> int:
    """The SEG's series number: the source's plus 1000, so viewers list it after the series it segments."""
    try:
        return int(source.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def _software_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("medinfer")
    except metadata.PackageNotFoundError:
        return "0+unknown"
