"""Readers and writers that keep geometry: NIfTI (nibabel), DICOM series, MHA/NRRD (SimpleITK).

Every volume is held as a :class:`Volume`: the voxel array in file order ``(X, Y, Z)`` and the 4×4 affine
from voxel indices to RAS world millimetres (NIfTI convention). Writing a result "like" an input reuses the
input's affine and its geometry fields (qform/sform codes, units), never its free-text fields or extensions,
so masks land in exactly the input's grid. A DICOM series (a folder, or a ``.zip`` holding one) also keeps its
slices' headers, so that a DICOM SEG can reference them.

What an input becomes is bounded before it is allocated: the voxel count a header claims (NIfTI, MHA/NRRD,
and DICOM Rows × Columns × frames × slices, with every compressed frame's own size checked against them), and
the geometry (finite, non-singular, voxel sizes within :data:`VOXEL_MM_RANGE`). Nothing is silently taken to
be 1 mm. Every failure raises :class:`~pipelines.common.errors.InputError` naming the file and the problem;
what is read but doubtful is said in :attr:`Volume.warnings`.
"""

from __future__ import annotations

import gzip
import json
import struct
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
#: voxel sizes (mm) outside this range are a broken header (or units other than mm), not a scan
VOXEL_MM_RANGE = (1e-3, 1e3)
#: intensities beyond ± this are no image's (a broken scale factor); float32 statistics of them overflow
MAX_ABS_INTENSITY = 1e10
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
#: DICOM transfer syntax of a deflated dataset: pydicom and GDCM inflate the whole file before any element
#: can be checked (a few KB can inflate to gigabytes), so it is refused
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: encapsulated transfer syntaxes whose frames declare their size in the codestream (JPEG, JPEG-LS,
#: JPEG 2000, HTJ2K): GDCM decodes a frame at the size its codestream declares, whatever Rows and Columns say
_SIZED_CODESTREAMS = frozenset(
    f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91, 92, 93, 201, 202, 203)
)
#: RLE Lossless: decoded at the size Rows and Columns give
_RLE = "1.2.840.10008.1.2.5"


@dataclass
class Volume:
    """A 3D volume with its geometry.

    Args:
        array: voxel values, shape ``(X, Y, Z)``, float32.
        affine: 4×4 voxel-index → RAS-mm matrix.
        path: where it was read from.
        kind: ``nifti``, ``dicom`` or ``itk``.
        header: the NIfTI header, for writing results with the same geometry fields (codes, units).
        meta: non-identifying facts (modality, series description) for routing; never patient data.
        sources: for a DICOM series, each slice's header (no pixel data) in array order: ``sources[z]`` is
            the slice at ``array[:, :, z]``. They carry patient identifiers: never log or return them
            (kept out of ``repr``); they exist so that a DICOM SEG can reference the source images.
        warnings: what the reader accepted but a user must know (a NIfTI without orientation...), in plain
            words; results repeat them.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    kind: str
    header: Any = None
    meta: dict[str, str] = field(default_factory=dict)
    sources: list[Dataset] | None = field(default=None, repr=False, compare=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return affine_spacing(self.affine)

    @property
    def voxel_volume_ml(self) -> float:
        return affine_voxel_ml(self.affine)


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis of a 4×4 voxel → mm affine."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def affine_voxel_ml(affine: np.ndarray) -> float:
    """One voxel's volume in mL (1 mL = 1000 mm³) under a 4×4 voxel → mm affine."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])) / 1000.0)


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(s and name.endswith(s) for s in suffixes)


def _mm(values: Sequence[float] | np.ndarray) -> str:
    return " × ".join(f"{float(v):.4g}" for v in values) + " mm"


def check_geometry(affine: np.ndarray, path: Path) -> np.ndarray:
    """Refuse a voxel-to-world affine that is no scan's: NaN or infinite entries, a voxel size (column norm)
    outside :data:`VOXEL_MM_RANGE` (zero included), or axes that do not span space (a singular direction).

    Returns:
        the affine as a float64 array.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(path, "geometry (voxel-to-world affine) holds NaN or infinite values; the grid is unknown")
    sizes = affine_spacing(affine)
    lo, hi = VOXEL_MM_RANGE
    if sizes.min() < lo or sizes.max() > hi:
        raise InputError(path, f"voxel size {_mm(sizes)} is outside {lo:g}–{hi:g} mm; the header's geometry is broken")
    # |det| over the product of the column norms is |det| of the unit axes: 1 orthogonal, 0 degenerate
    if abs(float(np.linalg.det(affine[:3, :3]))) / float(np.prod(sizes)) < 1e-3:
        raise InputError(path, "voxel axes are (nearly) parallel: the direction matrix is singular")
    return affine


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
    lo, hi = float(arr.min()), float(arr.max())  # NaN propagates; no full-size temporary
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(path, "contains NaN or infinite values")
    if max(-lo, hi) > MAX_ABS_INTENSITY:
        raise InputError(
            path,
            f"holds intensities from {lo:.3g} to {hi:.3g}; values beyond ±{MAX_ABS_INTENSITY:.0e} are no "
            "image's (a broken scale factor?)",
        )
    return arr


def _raw_nifti_header(path: Path) -> Any:
    """The NIfTI header as stored, before nibabel's fixes (which turn a zero pixdim into 1 mm); ``None`` when
    it cannot be read (``nib.load`` then says why)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as fh:
            block = fh.read(540)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
        return None
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.sizeof_hdr
        if len(block) < size:
            continue
        if size in (int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")):
            try:
                return klass(block[:size], check=False)
            except Exception:  # nibabel raises HeaderDataError, ValueError...
                return None
    return None


def _nifti_geometry_warnings(raw: Any, path: Path) -> list[str]:
    """Refuse a NIfTI whose voxel size would be made up; warn when its orientation is unknown."""
    qform_code, sform_code = int(raw["qform_code"]), int(raw["sform_code"])
    if sform_code == 0:  # the qform, or the no-orientation fallback, takes the voxel size from pixdim
        pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
        if not np.isfinite(pixdim).all() or (pixdim == 0).any():
            shown = ", ".join(f"{v:g}" for v in pixdim)
            raise InputError(
                path,
                f"NIfTI voxel size (pixdim {shown}) is zero or not a number and no sform gives another; "
                "the voxel size is unknown (it is never assumed to be 1 mm)",
            )
    if qform_code == 0 and sform_code == 0:
        return [
            "NIfTI header has no orientation (qform_code and sform_code are 0): the voxel size is pixdim's, "
            "orientation and position are assumed (nibabel's default: LAS, centred on the volume); outputs are "
            "written the same way"
        ]
    return []


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib
    from nibabel.imageglobals import LoggingOutputSuppressor

    raw = _raw_nifti_header(path)
    warnings = _nifti_geometry_warnings(raw, path) if raw is not None else []
    try:
        with LoggingOutputSuppressor():  # nibabel logs the header fixes it makes; refusals above say what matters
            img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error...
        raise InputError(path, f"is not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"is not a NIfTI image (nibabel read {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    n_vox = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if n_vox > MAX_VOXELS:
        raise InputError(path, f"header claims {shape} = {n_vox:,} voxels, more than the limit {MAX_VOXELS:,}")
    stored = np.dtype(img.header.get_data_dtype())
    if stored.kind not in "buif" or stored.names is not None:  # complex, RGB (structured) or void voxels
        raise InputError(path, f"stores {stored} voxels; a scalar (integer or real) volume is required")
    affine = check_geometry(img.affine, path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(path, f"voxel data cannot be read; the file is truncated or corrupt ({exc})") from exc
    arr = _check_array(data, path)
    return Volume(arr, affine, path, "nifti", header=img.header.copy(), warnings=warnings)


def _sitk() -> Any:
    """SimpleITK, with ITK's own warnings off: they go to stderr, unseen by a service's user, and every
    condition they flag (uneven slices...) is checked here and said in plain words."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk


def _sitk_to_volume(image: Any, path: Path, kind: str, meta: dict[str, str] | None = None) -> Volume:
    sitk = _sitk()

    if image.GetDimension() != 3:
        raise InputError(path, f"is a {image.GetDimension()}D image; a 3D volume is required")
    size = image.GetSize()
    if int(np.prod(size, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(path, f"has {size} voxels, more than the limit {MAX_VOXELS:,}")
    affine = check_geometry(sitk_affine(image), path)
    arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
    arr = _check_array(arr, path)
    return Volume(arr, affine, path, kind, meta=meta or {})


def _lps_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """RAS voxel→world affine from ITK's LPS direction (row-major 3×3), spacing and origin."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def sitk_affine(image: Any) -> np.ndarray:
    """RAS voxel→world affine of a SimpleITK image (which is LPS)."""
    return _lps_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())


def _header_text(path: Path, limit: int = 1 << 16) -> str:
    """The text header of an MHA/MHD or NRRD file: its lines up to the first blank line (NRRD) or the
    ``ElementDataFile`` line (MetaImage, which ends the header)."""
    with path.open("rb") as fh:
        head = fh.read(limit)
    lines = []
    for raw in head.split(b"\n"):
        line = raw.rstrip(b"\r").decode("latin-1")
        if not line.strip():
            break
        lines.append(line)
        if line.split("=")[0].strip().lower() == "elementdatafile":
            break
    return "\n".join(lines)


def _check_data_file(path: Path) -> None:
    """A detached header (MHD, NHDR, or one naming a data file) must point at one file beside it: never at an
    absolute path, outside its folder (a server's own files), a list or a numbered pattern."""
    refs = []
    for line in _header_text(path).splitlines():
        key, sep, value = line.partition("=") if "=" in line.split(":")[0] else line.partition(":")
        name = key.strip().lower().replace(" ", "")
        if sep and name in ("elementdatafile", "datafile"):
            refs.append(value.strip())
    for ref in refs:
        if ref.upper() == "LOCAL":
            continue
        parts = ref.split()
        if len(parts) != 1 or parts[0].upper() == "LIST" or "%" in ref:
            raise InputError(path, f"names its voxel data as {ref!r}; only one data file beside the header is read")
        target = (path.parent / ref).resolve()
        if Path(ref).is_absolute() or not target.is_relative_to(path.parent.resolve()):
            raise InputError(path, f"names a data file outside its folder ({ref!r}); such a file is not read")
        if not target.is_file():
            raise InputError(path, f"names a data file {ref!r} that does not exist beside it")


def _read_itk(path: Path) -> Volume:
    """An MHA/MHD or NRRD file: its header is checked (size, components, geometry) before any voxel is read."""
    sitk = _sitk()

    def reason(exc: RuntimeError) -> str:
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__

    try:
        _check_data_file(path)
    except InputError:
        raise
    except (OSError, ValueError) as exc:  # unreadable, or a data file name no path can hold (a NUL byte)
        raise InputError(path, f"header cannot be read ({type(exc).__name__})") from exc
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"is not a readable image ({reason(exc)})") from exc
    if reader.GetDimension() != 3:
        raise InputError(path, f"is a {reader.GetDimension()}D image; a 3D volume is required")
    size = tuple(int(s) for s in reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    n_values = int(np.prod(size, dtype=np.int64)) * components
    if n_values > MAX_VOXELS:
        raise InputError(
            path,
            f"header claims {size} voxels × {components} component(s) = {n_values:,} values, more than the "
            f"limit {MAX_VOXELS:,}; not read",
        )
    if components != 1:
        raise InputError(path, f"has {components} components per voxel; a scalar (grayscale) volume is required")
    check_geometry(_lps_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin()), path)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"voxel data cannot be read ({reason(exc)})") from exc
    return _sitk_to_volume(image, path, "itk")


def _starts_like_dicom(path: Path) -> bool:
    """``DICM`` after the 128-byte preamble."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _refuse_deflated(folder: Path, shown: Path) -> None:
    """Refuse a folder holding a deflated DICOM file, before GDCM or pydicom parse it: both inflate the whole
    dataset first (a few KB can become gigabytes) and GDCM does so while merely scanning for series."""
    from pydicom.filereader import read_file_meta_info

    for f in sorted(folder.iterdir()):
        if not f.is_file() or not _starts_like_dicom(f):
            continue
        try:
            syntax = str(read_file_meta_info(f).get("TransferSyntaxUID", ""))
        except Exception:  # unreadable meta: the series' own checks name the file
            continue
        if syntax == _DEFLATED:
            raise InputError(
                shown,
                f"DICOM file {f.name} uses the Deflated Explicit VR Little Endian transfer syntax, which is not "
                "read (its size cannot be bounded before it is inflated); convert the series to an "
                "uncompressed or JPEG transfer syntax",
            )


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


def _header_int(ds: Dataset, keyword: str, default: int, shown: Path) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise InputError(shown, f"DICOM {keyword} of {Path(ds.filename).name} is not a number") from exc
    if number < 0:
        raise InputError(shown, f"DICOM {keyword} of {Path(ds.filename).name} is negative ({number})")
    return number


def _check_series_size(headers: Sequence[Dataset], shown: Path) -> None:
    """Bound what the series decodes to from its headers alone: Σ Rows × Columns × NumberOfFrames × samples,
    whatever the transfer syntax; then refuse multi-frame files (one slice per file is read)."""
    total, frames_seen = 0, 0
    for ds in headers:
        rows, cols = _header_int(ds, "Rows", 0, shown), _header_int(ds, "Columns", 0, shown)
        frames = max(1, _header_int(ds, "NumberOfFrames", 1, shown))
        samples = max(1, _header_int(ds, "SamplesPerPixel", 1, shown))
        total += rows * cols * frames * samples
        frames_seen = max(frames_seen, frames)
    if total > MAX_VOXELS:
        first = headers[0]
        rows, cols = _header_int(first, "Rows", 0, shown), _header_int(first, "Columns", 0, shown)
        raise InputError(
            shown,
            f"DICOM headers claim {total:,} voxels ({cols}×{rows} pixels, {len(headers)} file(s), frames "
            f"included), more than the limit {MAX_VOXELS:,}; not decoded",
        )
    if frames_seen > 1:
        raise InputError(
            shown,
            f"holds a multi-frame DICOM image ({frames_seen} frames in one file); a series of single-frame "
            "slices is required",
        )


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """``(columns, rows)`` a JPEG, JPEG-LS or JPEG 2000 codestream declares; ``None`` when none is found."""
    if frame[:2] == b"\xff\xd8":  # JPEG, JPEG-LS: walk the marker segments up to the frame header (SOFn)
        i = 2
        while i + 4 <= len(frame):
            if frame[i] != 0xFF:
                return None
            marker = frame[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a segment
                i += 2
                continue
            is_sof = (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7
            if is_sof and i + 9 <= len(frame):
                rows, cols = struct.unpack(">HH", frame[i + 5 : i + 9])
                return cols, rows
            if marker == 0xDA:  # start of scan and no frame header before it
                return None
            i += 2 + int.from_bytes(frame[i + 2 : i + 4], "big")
        return None
    j = frame.find(b"\xff\x4f\xff\x51", 0, 1 << 16)  # JPEG 2000: SOC then SIZ (raw, or in a JP2 box)
    if j >= 0 and j + 24 <= len(frame):
        xsiz, ysiz, x0, y0 = struct.unpack(">IIII", frame[j + 8 : j + 24])
        return xsiz - x0, ysiz - y0
    return None


def _check_pixel_data(files: Sequence[str], headers: Sequence[Dataset], shown: Path) -> None:
    """Every uncompressed slice must hold the pixel bytes its header claims, and every compressed frame must
    declare, in its own codestream, the Rows × Columns its header gives:
    GDCM decodes at the codestream's size, so a few KB of JPEG can otherwise decode to gigabytes."""
    import pydicom
    from pydicom.encaps import generate_frames

    for f, ds in zip(files, headers, strict=True):
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if not syntax:
            continue
        uid = pydicom.uid.UID(syntax)
        name = Path(f).name
        if not uid.is_encapsulated:
            _check_native_length(Path(f), ds, shown)
            continue
        if syntax == _RLE:
            continue
        if syntax not in _SIZED_CODESTREAMS:
            raise InputError(shown, f"DICOM file {name} uses transfer syntax {uid.name or syntax}, which is not read")
        rows, cols = _header_int(ds, "Rows", 0, shown), _header_int(ds, "Columns", 0, shown)
        try:  # the compressed bytes only (no decoding); their size is the file's
            pixels = pydicom.dcmread(f, force=True, specific_tags=["PixelData"]).get("PixelData")
            frames = list(generate_frames(pixels, number_of_frames=1)) if pixels else []
        except Exception as exc:  # pydicom raises ValueError, struct.error, EOFError...
            raise InputError(shown, f"compressed pixel data of DICOM file {name} cannot be parsed") from exc
        if not frames:
            raise InputError(shown, f"DICOM file {name} holds no pixel data")
        declared = _codestream_size(frames[0])
        if declared is None:
            raise InputError(shown, f"compressed frame of DICOM file {name} declares no size; not decoded")
        if declared != (cols, rows):
            raise InputError(
                shown,
                f"compressed frame of DICOM file {name} is {declared[0]}×{declared[1]} pixels but its header says "
                f"{cols}×{rows}; not decoded",
            )


def _check_native_length(path: Path, ds: Dataset, shown: Path) -> None:
    """An uncompressed slice's file must hold at least the pixel bytes its header claims: GDCM reads a
    shorter Pixel Data element without a word (the missing pixels come out as whatever follows)."""
    rows, cols = _header_int(ds, "Rows", 0, shown), _header_int(ds, "Columns", 0, shown)
    samples = max(1, _header_int(ds, "SamplesPerPixel", 1, shown))
    bits = max(1, _header_int(ds, "BitsAllocated", 16, shown))
    needed = rows * cols * samples * ((bits + 7) // 8)
    size = path.stat().st_size
    if size < needed:
        raise InputError(
            shown,
            f"DICOM file {path.name} is {size:,} bytes, shorter than the {cols}×{rows} pixels its header claims "
            f"({needed:,} bytes); truncated or corrupt",
        )


def _unread_dicom_files(folder: Path, files: Sequence[str]) -> list[Path]:
    """Files in ``folder`` that start like DICOM (``DICM`` after the preamble) but are not among ``files``.

    GDCM leaves out of a series, silently, every file it cannot parse: a truncated or corrupt slice would
    otherwise become a missing slice and shift the geometry.
    """
    used = {Path(f).resolve() for f in files}
    return [
        f
        for f in sorted(folder.iterdir())
        if f.is_file() and f.resolve() not in used and f.name.upper() != "DICOMDIR" and _starts_like_dicom(f)
    ]


def _slice_planes(headers: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray] | None:
    """Each slice's Image Orientation (n, 6) and Image Position (n, 3), or ``None`` when a header lacks them."""
    try:
        orientation = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in headers])
        position = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    except (AttributeError, TypeError, ValueError):
        return None
    if orientation.shape != (len(headers), 6) or position.shape != (len(headers), 3):
        return None
    if not (np.isfinite(orientation).all() and np.isfinite(position).all()):
        return None
    return orientation, position


def _check_slice_headers(headers: Sequence[Dataset], shown: Path) -> None:
    """Before decoding: every slice has a position, an orientation and a pixel spacing (else SimpleITK takes
    1 mm), one orientation for all, and no two slices at one position."""
    planes = _slice_planes(headers)
    try:
        pixel_spacing = np.array([[float(v) for v in ds.PixelSpacing] for ds in headers])
    except (AttributeError, TypeError, ValueError):
        pixel_spacing = np.zeros((0, 2))
    if planes is None or pixel_spacing.shape != (len(headers), 2):
        raise InputError(
            shown,
            "DICOM slices lack Image Position, Image Orientation or Pixel Spacing: the voxel size and position "
            "are unknown (they are never assumed to be 1 mm); such a series is not read",
        )
    if not np.isfinite(pixel_spacing).all() or (pixel_spacing <= 0).any():
        shown_spacing = ", ".join(f"{v:g}" for v in pixel_spacing[np.argmin(pixel_spacing.min(axis=1))])
        raise InputError(
            shown,
            f"DICOM Pixel Spacing ({shown_spacing}) is zero, negative or not a number; the voxel size is unknown "
            "(it is never assumed to be 1 mm)",
        )
    orientation, position = planes
    if np.abs(orientation - orientation[0]).max() > 1e-3:
        raise InputError(
            shown, "DICOM slices do not share one orientation (projections or a localizer?); a 3D volume is required"
        )
    row, col = orientation[0][:3], orientation[0][3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or np.linalg.norm(normal) < 0.99:
        raise InputError(shown, "DICOM Image Orientation (Patient) is not two orthogonal unit vectors")
    depth = np.sort(position @ normal)
    if np.diff(depth).min() < 1e-3:
        raise InputError(
            shown, "several DICOM slices lie at one position (duplicates, or more than one acquisition in the series)"
        )


def _check_slice_geometry(volume: Volume, headers: Sequence[Dataset], shown: Path) -> None:
    """Every slice header must sit where the volume's affine puts its slice: ``sources[z]`` is slice ``z``.

    SimpleITK builds one regular grid from the first slices and only warns when the others do not fit it
    (a missing slice, uneven spacing, gantry tilt); the result would then be in the wrong place.
    """
    planes = _slice_planes(headers)
    if planes is None:  # refused before decoding; kept for callers with their own headers
        raise InputError(shown, "DICOM slices lack Image Position or Image Orientation")
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
    """One DICOM series from a folder; ``shown`` is the path messages name (default: the folder).

    Everything that bounds or places the volume is checked from the headers before a pixel is decoded.
    """
    sitk = _sitk()

    shown = folder if shown is None else shown
    _refuse_deflated(folder, shown)
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
    headers = _read_dicom_headers(files, shown)
    _check_series_size(headers, shown)
    if len(files) < 2:
        raise InputError(shown, "DICOM series has a single slice; a 3D volume is required")
    _check_slice_headers(headers, shown)
    _check_pixel_data(files, headers, shown)
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
    sitk = _sitk()

    from pipelines.common import archives

    with tempfile.TemporaryDirectory(prefix="medinfer-zip-") as tmp:
        root = archives.safe_extract_zip(
            archive, Path(tmp), max_total_bytes=archives.MAX_UNPACKED_BYTES, max_members=archives.MAX_MEMBERS
        )
        # the series may sit in a sub-folder; macOS archivers add __MACOSX/ with resource forks beside it
        folders = sorted(
            {f.parent for f in root.rglob("*") if f.is_file() and "__MACOSX" not in f.relative_to(root).parts}
        )
        for folder in folders:  # before GDCM scans them
            _refuse_deflated(folder, archive)
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
        InputError: missing, empty, corrupt, not 3D, oversized (from its header, before decoding), with
            broken geometry (NaN, singular, a voxel size that is zero or outside :data:`VOXEL_MM_RANGE`, a
            DICOM series without positions or spacing, uneven slices), NaN-holding or absurd intensities, or
            unsupported (deflated DICOM, multi-frame DICOM); for a zip, also an unsafe or too large archive
            (:class:`~pipelines.common.archives.ArchiveError`).
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


def write_like(
    array: np.ndarray,
    ref: Volume,
    path: Path,
    dtype: type = np.uint8,
    *,
    descrip: str | None = None,
    estimate_of: str | None = None,
) -> Path:
    """Write ``array`` as NIfTI in ``ref``'s geometry.

    The first three axes must be exactly ``ref``'s shape; a trailing axis (e.g. per-region probabilities)
    is written as a 4D image. The header is a fresh one holding ``ref``'s geometry only: the affine, and for a
    NIfTI input its qform/sform codes (kept as they are, 0 included), spatial and time units and dim_info.
    Nothing else is copied: no ``descrip``, ``aux_file``, ``db_name``, intent, scaling or extensions, which
    may carry identifiers or describe the input's values rather than the result's.

    Args:
        descrip: the result's own ``descrip`` (ASCII, cut to the field's 79 bytes).
        estimate_of: mark the values as an estimate (NIFTI_INTENT_ESTIMATE) of this quantity, named in the
            header's ``intent_name`` (ASCII, cut to 15 bytes).

    Raises:
        ValueError: if the array's spatial shape differs from the reference's.
    """
    import nibabel as nib

    if tuple(array.shape[:3]) != ref.shape or array.ndim not in (3, 4):
        raise ValueError(f"result shape {tuple(array.shape)} does not match input shape {ref.shape}")
    data: np.ndarray = np.asarray(array).astype(dtype)
    klass = nib.Nifti1Image if max(data.shape) <= np.iinfo(np.int16).max else nib.Nifti2Image
    img = klass(data, None)
    header = img.header
    header.set_data_dtype(dtype)
    sform_code, qform_code = 1, 1  # scanner coordinates: DICOM and ITK inputs
    if ref.header is not None:
        sform_code, qform_code = int(ref.header["sform_code"]), int(ref.header["qform_code"])
        header.set_xyzt_units(*ref.header.get_xyzt_units())
        header.set_dim_info(*ref.header.get_dim_info())
    else:
        header.set_xyzt_units("mm")
    # the qform first: with both codes 0, readers rebuild the affine from pixdim, which the qform sets
    img.set_qform(ref.affine, code=qform_code)
    img.set_sform(ref.affine, code=sform_code)
    if descrip is not None:
        header["descrip"] = descrip.encode("ascii", "replace")[:79]
    if estimate_of is not None:
        header.set_intent("estimate", (), name=estimate_of.encode("ascii", "replace").decode("ascii")[:15])
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
