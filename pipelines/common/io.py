"""Readers and writers that keep geometry: NIfTI (nibabel), DICOM series, MHA/NRRD (SimpleITK).

Every volume is held as a :class:`Volume`: the voxel array in file order ``(X, Y, Z)`` and the 4×4 affine
from voxel indices to RAS world millimetres (NIfTI convention). Writing a result "like" an input reuses the
input's affine (and NIfTI header), so masks land in exactly the input's grid. A DICOM series (a folder, or a
``.zip`` holding one) also keeps its slices' headers, so that a DICOM SEG can reference them.
Every failure raises :class:`~pipelines.common.errors.InputError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.common.errors import InputError

if TYPE_CHECKING:
    from pydicom import Dataset

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", "")
ZIP_SUFFIXES = (".zip",)
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
        sources: for a DICOM series, each slice's header (no pixel data) in array order: ``sources[z]`` is
            the slice at ``array[:, :, z]``. They carry patient identifiers: never log or return them
            (kept out of ``repr``); they exist so that a DICOM SEG can reference the source images.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    kind: str
    header: Any = None
    meta: dict[str, str] = field(default_factory=dict)
    sources: list[Dataset] | None = field(default=None, repr=False, compare=False)

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


def _read_dicom_headers(files: Sequence[str], shown: Path) -> list[Dataset]:
    """Each file's header, pixel data skipped, in the order given."""
    import pydicom

    headers: list[Dataset] = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True, force=True))
        except Exception as exc:  # pydicom raises InvalidDicomError, OSError, EOFError, ValueError, struct.error...
            # the exception's text may quote element values (names, dates): name its type only
            raise InputError(shown, f"DICOM header of {Path(f).name} cannot be read ({type(exc).__name__})") from exc
    return headers


def _unread_dicom_files(folder: Path, files: Sequence[str]) -> list[Path]:
    """Files in ``folder`` that start like DICOM (``DICM`` after the preamble) but are not among ``files``.

    GDCM leaves out of a series, silently, every file it cannot parse: a truncated or corrupt slice would
    otherwise become a missing slice and shift the geometry.
    """
    used = {Path(f).resolve() for f in files}
    unread = []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.resolve() in used or f.name.upper() == "DICOMDIR":
            continue
        try:
            with f.open("rb") as fh:
                fh.seek(128)
                magic = fh.read(4)
        except OSError:
            continue
        if magic == b"DICM":
            unread.append(f)
    return unread


def _slice_planes(headers: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray] | None:
    """Each slice's Image Orientation (n, 6) and Image Position (n, 3), or ``None`` when a header lacks them."""
    try:
        orientation = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in headers])
        position = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    except (AttributeError, TypeError, ValueError):
        return None
    if orientation.shape != (len(headers), 6) or position.shape != (len(headers), 3):
        return None
    return orientation, position


def _check_slice_geometry(volume: Volume, headers: Sequence[Dataset], shown: Path) -> None:
    """Every slice header must sit where the volume's affine puts its slice: ``sources[z]`` is slice ``z``.

    SimpleITK builds one regular grid from the first slices and only warns when the others do not fit it
    (a missing slice, uneven spacing, gantry tilt); the result would then be in the wrong place.
    """
    planes = _slice_planes(headers)
    if planes is None:  # no geometry in the headers: SimpleITK's defaults stand
        return
    _, position = planes
    z = np.arange(len(headers), dtype=np.float64)
    ras = volume.affine[:3, 3] + np.outer(z, volume.affine[:3, 2])  # world position of voxel (0, 0, z)
    expected = ras @ LPS_TO_RAS.T  # RAS → LPS (the flip is its own inverse)
    off = float(np.linalg.norm(position - expected, axis=1).max())
    if off > max(0.01, 0.1 * float(volume.spacing[2])):
        raise InputError(
            shown,
            f"DICOM slice positions are off one regular grid by up to {off:.2f} mm (missing slices, uneven "
            "spacing or gantry tilt); such a series is not read",
        )


def _read_dicom_series(folder: Path, shown: Path | None = None) -> Volume:
    """One DICOM series from a folder; ``shown`` is the path messages name (default: the folder)."""
    import SimpleITK as sitk

    shown = folder if shown is None else shown
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(shown, "holds no readable DICOM series")
    if len(series) > 1:
        raise InputError(shown, f"holds {len(series)} DICOM series; put one series per folder")
    # GDCM sorts the files along the slice normal; SimpleITK stacks them in this order, so files[z] is slice z
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    unread = _unread_dicom_files(folder, files)
    if unread:
        names = ", ".join(f.name for f in unread[:3]) + (f" and {len(unread) - 3} more" if len(unread) > 3 else "")
        raise InputError(shown, f"DICOM file(s) {names} cannot be read (truncated or corrupt); series incomplete")
    if len(files) < 2:
        raise InputError(shown, "DICOM series has a single slice; a 3D volume is required")
    headers = _read_dicom_headers(files, shown)
    rows, cols = int(headers[0].get("Rows") or 0), int(headers[0].get("Columns") or 0)
    if rows * cols * len(files) > MAX_VOXELS:  # bound what the series becomes before decoding any pixel
        raise InputError(
            shown, f"has {cols}×{rows}×{len(files)} voxels, more than the limit {MAX_VOXELS:,}; not decoded"
        )
    planes = _slice_planes(headers)
    if planes is not None and np.abs(planes[0] - planes[0][0]).max() > 1e-3:
        raise InputError(
            shown, "DICOM slices do not share one orientation (projections or a localizer?); a 3D volume is required"
        )
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise InputError(shown, f"DICOM series cannot be read ({str(exc).strip().splitlines()[-1]})") from exc
    meta = {}
    # only non-identifying tags are kept: modality and series description route series to channels
    for tag, key in (("0008|0060", "modality"), ("0008|103e", "series_description")):
        if reader.HasMetaDataKey(0, tag):
            meta[key] = reader.GetMetaData(0, tag).strip()
    volume = _sitk_to_volume(image, shown, "dicom", meta)
    if volume.shape[2] != len(headers):
        raise InputError(shown, f"DICOM series has {len(headers)} files but {volume.shape[2]} slices were read")
    _check_slice_geometry(volume, headers, shown)
    volume.sources = headers
    return volume


def _read_zipped_series(archive: Path) -> Volume:
    """One DICOM series from a zip archive: extracted safely into a temporary folder that is removed after."""
    import SimpleITK as sitk

    from pipelines.common import archives

    with tempfile.TemporaryDirectory(prefix="medinfer-zip-") as tmp:
        root = archives.safe_extract_zip(
            archive, Path(tmp), max_total_bytes=archives.MAX_UNPACKED_BYTES, max_members=archives.MAX_MEMBERS
        )
        # the series may sit in a sub-folder; macOS archivers add __MACOSX/ with resource forks beside it
        folders = sorted(
            {f.parent for f in root.rglob("*") if f.is_file() and "__MACOSX" not in f.relative_to(root).parts}
        )
        with_series = [d for d in folders if sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d))]
        if not with_series:
            raise InputError(archive, "archive holds no readable DICOM series")
        if len(with_series) > 1:
            raise InputError(
                archive, f"archive holds DICOM series in {len(with_series)} folders; zip one series per archive"
            )
        return _read_dicom_series(with_series[0], shown=archive)


def read_volume(path: str | Path) -> Volume:
    """Read a 3D volume with its geometry.

    Args:
        path: a NIfTI file, an MHA/NRRD file, a folder holding one DICOM series, or a ``.zip`` holding one
            DICOM series (extracted safely into a temporary folder, removed after reading).

    Raises:
        InputError: missing, empty, corrupt, not 3D, oversized, NaN-holding or unsupported; for a zip, also
            an unsafe or too large archive (:class:`~pipelines.common.archives.ArchiveError`).
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
    if has_suffix(p, ZIP_SUFFIXES):
        return _read_zipped_series(p)
    raise InputError(
        p,
        "has an unsupported format; expected NIfTI (.nii, .nii.gz), MHA/NRRD, or a DICOM series (a folder or a .zip)",
    )


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


#: how conversion notes name Pillow modes
_MODE_NAMES = {
    "1": "bilevel (1)",
    "L": "grayscale (L)",
    "LA": "grayscale with alpha (LA)",
    "La": "grayscale with premultiplied alpha (La)",
    "P": "palette (P)",
    "PA": "palette with alpha (PA)",
    "RGBA": "RGBA",
    "RGBa": "premultiplied RGBA (RGBa)",
    "RGBX": "RGBX",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "CIELAB (LAB)",
    "HSV": "HSV",
}
#: Pillow's single-channel modes with more than 8 bits, scaled to 0..255 by their range
_WIDE_GRAY_NAMES = {"I": "32-bit integer", "F": "32-bit float"}
#: what Pillow raises for truncated or corrupt pixel data (zlib.error and struct.error are plain Exceptions)
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, EOFError, zlib.error)


def read_rgb_image(
    path: str | Path, *, max_pixels: int = 100_000_000, min_side: int = 16
) -> tuple[np.ndarray, list[str]]:
    """Read a 2D image (PNG, JPEG, TIFF, BMP... whatever Pillow opens) as 8-bit RGB.

    The size is checked from the header before any pixel is decoded, and the pixels are decoded once.
    Conversions: grayscale, palette, CMYK, YCbCr... → RGB; transparency (alpha channel, palette or tRNS
    transparency) is composited on white; 16-bit, 32-bit integer and float grayscale are scaled linearly
    from their range ``[min, max]`` to ``0..255`` (a constant image becomes zeros); a multi-frame file
    (TIFF pages, GIF frames) gives its first frame. Every conversion is reported as a note. The EXIF
    orientation is not applied: the array is in stored pixel order.

    Args:
        path: the image file.
        max_pixels: refuse images whose header claims more pixels than this. Pillow's own limit
            (``2 × PIL.Image.MAX_IMAGE_PIXELS``) still applies above it.
        min_side: refuse images with a side shorter than this many pixels.

    Returns:
        ``(array, notes)``: the pixels as a writable ``(H, W, 3)`` uint8 array and human-readable notes on
        the conversions made (empty for a plain 8-bit RGB image).

    Raises:
        InputError: missing, empty, not an image, too large, too small, truncated or corrupt, holding NaN
            or infinite values, or in a mode that cannot be converted to RGB.
        ValueError: if ``max_pixels`` or ``min_side`` is not positive.
    """
    import re
    import warnings

    from PIL import Image, UnidentifiedImageError

    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if min_side < 1:
        raise ValueError(f"min_side must be positive, got {min_side}")
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    if p.is_dir():
        raise InputError(p, "is a folder; an image file is required")
    if p.stat().st_size == 0:
        raise InputError(p, "is empty (0 bytes)")

    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; the size is judged here against
    # max_pixels instead, so its warning is silenced and its error reworded (never a warning to the user).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(p)
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            claimed = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow accepts"
            limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
            raise InputError(p, f"header claims {claimed}, more than the limit {limit:,}; not decoded") from exc
        except UnidentifiedImageError as exc:
            raise InputError(p, "is not an image Pillow can read (unknown format or corrupt header)") from exc
        except _DECODE_ERRORS as exc:
            raise InputError(p, f"image header cannot be read ({type(exc).__name__}: {exc})") from exc
        with im:
            return _decode_rgb(im, p, max_pixels, min_side)


def _decode_rgb(im: Any, p: Path, max_pixels: int, min_side: int) -> tuple[np.ndarray, list[str]]:
    """Check the header of an opened (not yet decoded) Pillow image, decode it once and convert it to RGB."""
    from PIL import Image

    width, height = im.size
    pixels = int(width) * int(height)
    if pixels > max_pixels:
        raise InputError(
            p, f"header claims {width}×{height} = {pixels:,} pixels, more than the limit {max_pixels:,}; not decoded"
        )
    if min(width, height) < min_side:
        raise InputError(p, f"is {width}×{height} pixels; at least {min_side} pixels on each side are required")

    notes: list[str] = []
    fmt = im.format or "image"
    try:
        n_frames = int(getattr(im, "n_frames", 1))  # TIFF/GIF count frames from their headers, not their pixels
    except _DECODE_ERRORS as exc:
        raise InputError(p, f"frame table cannot be read; the file is truncated or corrupt ({exc})") from exc
    if n_frames > 1:
        im.seek(0)
        notes.append(f"multi-frame {fmt}: first of {n_frames} frames used")
    try:
        im.load()
    except Image.DecompressionBombError as exc:  # a later frame or tile larger than the header said
        raise InputError(p, f"pixel data is larger than its header claims ({exc})") from exc
    except _DECODE_ERRORS as exc:
        raise InputError(p, f"pixel data cannot be decoded; the file is truncated or corrupt ({exc})") from exc

    mode = im.mode
    if mode == "RGB" and not im.has_transparency_data:
        return np.array(im, dtype=np.uint8), notes
    if mode in _WIDE_GRAY_NAMES or mode.startswith("I;16"):
        return _scale_gray(im, p, notes), notes

    try:
        if im.has_transparency_data:
            rgba = im if mode == "RGBA" else im.convert("RGBA")
            if mode not in ("RGBA", "RGB"):
                notes.append(f"converted from {_MODE_NAMES.get(mode, mode)} to RGB")
            if rgba.getextrema()[3][0] == 255:
                notes.append("alpha channel dropped (fully opaque)")
                rgb = rgba.convert("RGB")
            else:
                notes.append("alpha channel dropped (composited on white)")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, (0, 0), rgba)  # blends by the alpha channel: image·α + white·(1 − α)
            del rgba
        else:
            rgb = im.convert("RGB")
            notes.append(f"converted from {_MODE_NAMES.get(mode, mode)} to RGB")
    except ValueError as exc:  # Pillow has no conversion for this mode
        raise InputError(p, f"has pixel mode {mode}, which cannot be converted to RGB ({exc})") from exc
    im.close()  # drop the decoded pixels before exporting the converted ones
    with rgb:
        return np.array(rgb, dtype=np.uint8), notes


def _scale_gray(im: Any, p: Path, notes: list[str]) -> np.ndarray:
    """A >8-bit single-channel image scaled linearly from its ``[min, max]`` to ``0..255``, as (H, W, 3) uint8."""
    mode = im.mode
    try:
        values = np.asarray(im)
    except (TypeError, ValueError) as exc:
        raise InputError(p, f"has pixel mode {mode}, which cannot be converted to an array ({exc})") from exc
    if values.ndim != 2 or values.dtype.kind not in "uif":
        raise InputError(p, f"has pixel mode {mode} ({values.dtype}, shape {values.shape}); cannot convert to RGB")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InputError(p, f"{_WIDE_GRAY_NAMES.get(mode, mode)} image ({mode}) contains NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    name = _WIDE_GRAY_NAMES.get(mode, "16-bit")
    out = np.zeros((*values.shape, 3), dtype=np.uint8)
    if hi > lo:
        scaled = values.astype(np.float32)  # float32: no integer overflow in (x − min) for full-range int32
        del values
        scaled -= lo
        scaled *= 255.0 / (hi - lo)
        np.rint(scaled, out=scaled)
        out[...] = scaled[..., None]
        notes.append(f"{name} grayscale ({mode}) scaled to 8 bits by its range [{lo:g}, {hi:g}]; converted to RGB")
    else:
        notes.append(f"{name} grayscale ({mode}) is constant ({lo:g}); converted to zeros in RGB")
    return out
