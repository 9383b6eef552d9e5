"""Readers and writers that keep geometry: NIfTI (nibabel), DICOM series, MHA/NRRD (SimpleITK).

Every volume is held as a :class:`Volume`: the voxel array in file order ``(X, Y, Z)`` and the 4×4 affine
from voxel indices to RAS world millimetres (NIfTI convention). Writing a result "like" an input reuses the
input's affine (and NIfTI header), so masks land in exactly the input's grid.
Every failure raises :class:`~pipelines.common.errors.InputError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.common.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", "")
#: refuse volumes with more voxels than this (a header can claim anything)
MAX_VOXELS = 512 * 512 * 512
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """A 3D volume with its geometry.

    Args:
        array: voxel values, shape ``(X, Y, Z)``, float32.
        affine: 4×4 voxel-index → RAS-mm matrix.
        path: where it was read from.
        kind: ``nifti``, ``dicom`` or ``itk``.
        header: the NIfTI header, for writing results with the same header fields.
        meta: non-identifying facts (modality, series description) for routing; never patient data.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    kind: str
    header: Any = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(s and name.endswith(s) for s in suffixes)


def _check_array(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2 or (arr.ndim == 3 and min(arr.shape) == 1):
        raise InputError(path, f"is a 2D image (shape {tuple(arr.shape)}); a 3D volume is required")
    if arr.ndim != 3:
        raise InputError(path, f"has {arr.ndim} dimensions (shape {tuple(arr.shape)}); a 3D volume is required")
    if arr.size == 0:
        raise InputError(path, "holds no voxels")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError(path, "contains NaN or infinite values")
    return arr


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error...
        raise InputError(path, f"is not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"is not a NIfTI image (nibabel read {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    n_vox = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if n_vox > MAX_VOXELS:
        raise InputError(path, f"header claims {shape} = {n_vox:,} voxels, more than the limit {MAX_VOXELS:,}")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(path, f"voxel data cannot be read; the file is truncated or corrupt ({exc})") from exc
    arr = _check_array(data, path)
    return Volume(arr, np.asarray(img.affine, dtype=np.float64), path, "nifti", header=img.header.copy())


def _sitk_to_volume(image: Any, path: Path, kind: str, meta: dict[str, str] | None = None) -> Volume:
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise InputError(path, f"is a {image.GetDimension()}D image; a 3D volume is required")
    size = image.GetSize()
    if int(np.prod(size, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(path, f"has {size} voxels, more than the limit {MAX_VOXELS:,}")
    arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
    arr = _check_array(arr, path)
    return Volume(arr, sitk_affine(image), path, kind, meta=meta or {})


def sitk_affine(image: Any) -> np.ndarray:
    """RAS voxel→world affine of a SimpleITK image (which is LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return affine


def _read_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise InputError(path, f"is not a readable image ({str(exc).strip().splitlines()[-1]})") from exc
    return _sitk_to_volume(image, path, "itk")


def _read_dicom_series(folder: Path) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(folder, "holds no readable DICOM series")
    if len(series) > 1:
        raise InputError(folder, f"holds {len(series)} DICOM series; put one series per folder")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    if len(files) < 2:
        raise InputError(folder, "DICOM series has a single slice; a 3D volume is required")
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise InputError(folder, f"DICOM series cannot be read ({str(exc).strip().splitlines()[-1]})") from exc
    meta = {}
    # only non-identifying tags are kept: modality and series description route series to channels
    for tag, key in (("0008|0060", "modality"), ("0008|103e", "series_description")):
        if reader.HasMetaDataKey(0, tag):
            meta[key] = reader.GetMetaData(0, tag).strip()
    return _sitk_to_volume(image, folder, "dicom", meta)


def read_volume(path: str | Path) -> Volume:
    """Read a 3D volume with its geometry.

    Args:
        path: a NIfTI file, an MHA/NRRD file, or a folder holding one DICOM series.

    Raises:
        InputError: missing, empty, corrupt, not 3D, oversized, NaN-holding or unsupported.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    if p.is_dir():
        return _read_dicom_series(p)
    if p.stat().st_size == 0:
        raise InputError(p, "is empty (0 bytes)")
    if has_suffix(p, NIFTI_SUFFIXES):
        return _read_nifti(p)
    if has_suffix(p, ITK_SUFFIXES):
        return _read_itk(p)
    raise InputError(p, "has an unsupported format; expected NIfTI (.nii, .nii.gz), MHA/NRRD or a DICOM series folder")


def read_coregistered(paths: Mapping[str, Path], channels: Sequence[str], what: str = "channel") -> dict[str, Volume]:
    """Read the named channels of one case and check that they share one grid.

    Args:
        paths: channel name → file or DICOM series folder (other keys are ignored).
        channels: the channels required, in model order.
        what: what a channel is called in messages (``modality``, ``sequence``).

    Raises:
        InputError: a missing channel, an unreadable file, or channels of different shape or geometry.
    """
    missing = [c for c in channels if c not in paths]
    if missing:
        where = next(iter(paths.values())).parent if paths else Path("<case>")
        raise InputError(where, f"missing {what} {', '.join(missing)} (a case needs {', '.join(channels)})")
    vols = {c: read_volume(paths[c]) for c in channels}
    ref = vols[channels[0]]
    for c in channels[1:]:
        v = vols[c]
        if v.shape != ref.shape:
            raise InputError(
                v.path, f"shape {v.shape} differs from {ref.path.name} {ref.shape}; every {what} must be on one grid"
            )
        if not np.allclose(v.affine, ref.affine, atol=1e-3):
            raise InputError(
                v.path, f"geometry (affine) differs from {ref.path.name}; every {what} must be co-registered"
            )
    return vols


def stack_channels(vols: Mapping[str, Volume], channels: Sequence[str], label: Volume | None = None) -> dict[str, Any]:
    """MetaTensors for MONAI transforms: ``image`` (C, X, Y, Z) in channel order, ``label`` (1, X, Y, Z)."""
    import torch
    from monai.data import MetaTensor

    from pipelines.common import keys

    ref = vols[channels[0]]
    affine = torch.as_tensor(ref.affine, dtype=torch.float64)
    image = np.stack([vols[c].array for c in channels]).astype(np.float32)
    data: dict[str, Any] = {keys.IMAGE: MetaTensor(torch.from_numpy(image), affine=affine.clone())}
    if label is not None:
        data[keys.LABEL] = MetaTensor(torch.from_numpy(label.array[None].astype(np.float32)), affine=affine.clone())
    return data


def write_like(array: np.ndarray, ref: Volume, path: Path, dtype: type = np.uint8) -> Path:
    """Write ``array`` as NIfTI in ``ref``'s geometry.

    The first three axes must be exactly ``ref``'s shape; a trailing axis (e.g. per-region probabilities)
    is written as a 4D image. NIfTI inputs keep their header (qform/sform codes, units); other inputs get a
    fresh header with the same affine.

    Raises:
        ValueError: if the array's spatial shape differs from the reference's.
    """
    import nibabel as nib

    if tuple(array.shape[:3]) != ref.shape or array.ndim not in (3, 4):
        raise ValueError(f"result shape {tuple(array.shape)} does not match input shape {ref.shape}")
    data: np.ndarray = np.asarray(array).astype(dtype)
    if ref.header is not None:
        header = ref.header.copy()
        header.set_data_shape(data.shape)
        header.set_data_dtype(dtype)
        header.set_slope_inter(1.0, 0.0)
        img = nib.Nifti1Image(data, ref.affine, header=header)
        img.set_sform(ref.affine, code=int(ref.header["sform_code"]) or 1)
        img.set_qform(ref.affine, code=int(ref.header["qform_code"]) or 1)
    else:
        img = nib.Nifti1Image(data, ref.affine)
        img.set_sform(ref.affine, code=1)
        img.set_qform(ref.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_json(obj: Any, path: Path) -> Path:
    """Write JSON (NumPy scalars converted)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=default), encoding="utf-8")
    return path
