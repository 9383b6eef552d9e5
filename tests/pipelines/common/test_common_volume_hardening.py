"""Volume readers and the segmentation family refuse what a header claims before allocating it, refuse broken
geometry and absurd intensities, warn in the result itself, and write NIfTI outputs with the input's geometry
and nothing else of its header. Every input here is tiny (16³ or less)."""

from __future__ import annotations

import gzip
import io
import shutil
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, Spacingd
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit

from pipelines.common.checkpoint import load_checkpoint, save_checkpoint
from pipelines.common.dicom import write_dicom_series
from pipelines.common.errors import InputError
from pipelines.common.io import MAX_VOXELS, Volume, _codestream_size, read_volume, write_like
from pipelines.common.segmentation import resampled_shape
from pipelines.common.task import InputItem, PredictOptions, get_task
from pipelines.prostate.config import ProstateOptions
from pipelines.prostate.infer import ProstatePredictor

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
#: a change made to one slice of a series: ``change(dataset, index in file order)``
Change = Callable[[pydicom.Dataset, int], None]


def load(path: Path) -> nib.Nifti1Image:
    img = nib.load(str(path))
    assert isinstance(img, nib.Nifti1Image)
    return img


def image16(seed: int = 0, shape: tuple[int, int, int] = (16, 16, 16)) -> np.ndarray:
    """A smooth positive MR-like image: a bright ellipsoid on a dark background, with noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.6
    return (100 + 400 * inside + rng.uniform(0, 50, shape)).astype(np.float32)


def raw_nifti(path: Path, data: np.ndarray, **fields: object) -> Path:
    """A NIfTI-1 written byte by byte, so that nibabel does not repair the header fields set here."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(AFFINE, code=1)
    hdr.set_sform(AFFINE, code=1)
    for key, value in fields.items():
        hdr[key] = value
    hdr["vox_offset"] = 352
    payload = hdr.binaryblock + b"\0" * 4 + np.asarray(data, dtype="<f4").tobytes(order="F")
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path


# -- NIfTI geometry and intensities ----------------------------------------------------------------------------
SINGULAR: dict[str, object] = {
    "srow_x": [1.0, 0.0, 1.0, 0.0],
    "srow_y": [0.0, 1.0, 1.0, 0.0],
    "srow_z": [0.0, 0.0, 0.0, 0.0],
}
BROKEN_NIFTI: dict[str, tuple[dict[str, object], str]] = {
    "pixdim 0, qform only": ({"sform_code": 0, "pixdim": [1, 0, 2, 2, 1, 1, 1, 1]}, "zero or not a number"),
    "pixdim 0, no codes": ({"sform_code": 0, "qform_code": 0, "pixdim": [1, 2, 0, 0, 1, 0, 0, 0]}, "never assumed"),
    "pixdim NaN": ({"sform_code": 0, "pixdim": [1, np.nan, 2, 2, 1, 1, 1, 1]}, "zero or not a number"),
    "sform NaN": ({"srow_x": [np.nan, 0, 0, 0]}, "NaN or infinite"),
    "sform inf offset": ({"srow_y": [0, 2, 0, np.inf]}, "NaN or infinite"),
    "singular sform": (SINGULAR, "singular"),
    "zero voxel column": ({"srow_z": [0.0, 0.0, 0.0, 5.0]}, "outside 0.001–1000 mm"),
    "voxel 1e-4 mm": ({"srow_x": [1e-4, 0, 0, 0]}, "outside 0.001–1000 mm"),
    "voxel 5 m": ({"srow_z": [0, 0, 5000.0, 0]}, "outside 0.001–1000 mm"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_NIFTI))
def test_broken_nifti_geometry_is_refused_never_taken_as_1mm(
    kind: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    fields, message = BROKEN_NIFTI[kind]
    path = raw_nifti(tmp_path / "broken.nii.gz", image16(), **fields)
    with pytest.raises(InputError, match=message) as err:
        read_volume(path)
    assert err.value.path == str(path)
    assert "setting 0 dims to 1" not in capfd.readouterr().err  # nibabel's own repair is not what users see


def test_a_valid_sform_stands_whatever_pixdim_says(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = raw_nifti(tmp_path / "sform.nii", image16(), pixdim=[1, 0, 0, 0, 1, 1, 1, 1])
    vol = read_volume(path)
    np.testing.assert_allclose(vol.spacing, [2, 2, 2])
    assert vol.warnings == []
    assert capfd.readouterr().err == ""


def test_nifti_without_orientation_is_read_with_a_warning_and_written_back_alike(tmp_path: Path) -> None:
    path = raw_nifti(tmp_path / "analyze.nii", image16(), qform_code=0, sform_code=0, pixdim=[1, 2, 3, 4, 0, 0, 0, 0])
    vol = read_volume(path)
    np.testing.assert_allclose(vol.spacing, [2, 3, 4])
    (warning,) = vol.warnings
    assert "no orientation" in warning
    out = load(write_like(np.ones(vol.shape), vol, tmp_path / "out.nii.gz"))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (0, 0)
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-6)


@pytest.mark.parametrize(
    ("fields", "value"),
    [({}, 1e30), ({}, -3e12), ({"scl_slope": 1e28}, 100.0)],
    ids=["1e30 voxel", "-3e12 voxel", "absurd scale factor"],
)
def test_absurd_intensities_are_refused(fields: dict, value: float, tmp_path: Path) -> None:
    data = image16()
    data[2, 3, 4] = value
    path = raw_nifti(tmp_path / "absurd.nii.gz", data, **fields)
    with pytest.raises(InputError, match="no image's") as err:
        read_volume(path)
    assert err.value.path == str(path)
    data[2, 3, 4] = 1e9  # large, but an image's
    assert read_volume(raw_nifti(tmp_path / "large.nii.gz", data)).array.max() == pytest.approx(1e9)


# -- writing: geometry only ------------------------------------------------------------------------------------
PLANTED = b"DOE^JANE 1970-01-01 MRN123456"


def test_outputs_carry_the_geometry_and_none_of_the_input_header(tmp_path: Path) -> None:
    affine = np.array([[0.0, -1.5, 0.1, 20.0], [1.2, 0.0, 0.0, -30.0], [0.0, 0.2, 3.0, 12.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(image16(), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    hdr = img.header
    hdr["descrip"] = PLANTED[:79]
    hdr["aux_file"] = PLANTED[:23]
    hdr["db_name"] = PLANTED[:17]
    hdr["intent_name"] = PLANTED[:15]
    hdr.set_intent("t test", (12.0,))
    hdr.set_xyzt_units("mm", "msec")
    hdr.set_dim_info(freq=0, phase=1, slice=2)
    hdr.extensions.append(nib.nifti1.Nifti1Extension(6, PLANTED))
    src = tmp_path / "input.nii.gz"
    nib.save(img, str(src))
    assert PLANTED in gzip.decompress(src.read_bytes())  # planted where a careless copy would carry it

    ref = read_volume(src)
    labels = write_like(np.ones(ref.shape, np.uint8), ref, tmp_path / "labels.nii.gz")
    probs = write_like(np.full((*ref.shape, 3), 0.5), ref, tmp_path / "probs.nii.gz", np.float32)
    for path in (labels, probs):
        raw = gzip.decompress(path.read_bytes())
        for fragment in (b"DOE", b"MRN", b"1970"):
            assert fragment not in raw, (path.name, fragment)
        out = load(path)
        assert out.header["descrip"].item() == b""
        assert out.header["aux_file"].item() == b""
        assert out.header["db_name"].item() == b""
        assert out.header["intent_name"].item() == b""
        assert int(out.header["intent_code"]) == 0
        assert len(out.header.extensions) == 0
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
        assert out.header.get_xyzt_units() == ("mm", "msec")
        assert out.header.get_dim_info() == (0, 1, 2)
        assert out.shape[:3] == ref.shape


def test_outputs_of_a_dicom_or_itk_input_are_scanner_millimetres(tmp_path: Path) -> None:
    ref = Volume(image16(), AFFINE, tmp_path / "series", "dicom")
    out = load(write_like(np.zeros(ref.shape), ref, tmp_path / "x.nii.gz"))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 1)
    assert out.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(out.affine, AFFINE)


# -- MHA/NRRD: the header is checked before any voxel is read --------------------------------------------------
def write_mha(path: Path, **header: str) -> Path:
    """A 4³ MetaImage with header fields replaced as given (the voxels stay 4³)."""
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.float32).reshape(4, 4, 4) + 1), str(path))
    raw = path.read_bytes()
    cut = raw.index(b"ElementDataFile")
    lines = raw[:cut].decode().splitlines()
    for key, value in header.items():
        lines = [f"{key} = {value}" if line.split(" = ")[0] == key else line for line in lines]
    path.write_bytes("\n".join(lines).encode() + b"\n" + raw[cut:])
    return path


BROKEN_MHA = {
    "4096³ claimed": ({"DimSize": "4096 4096 4096"}, "more than the limit"),
    "zero spacing": ({"ElementSpacing": "0 1 1"}, "outside 0.001–1000 mm"),
    "NaN spacing": ({"ElementSpacing": "nan 1 1"}, "outside 0.001–1000 mm"),
    "singular direction": ({"TransformMatrix": "1 0 0 1 0 0 0 0 1"}, "singular"),
    "vector voxels": ({"ElementNumberOfChannels": "3"}, "components per voxel"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_MHA))
def test_broken_mha_headers_are_refused_before_reading(kind: str, tmp_path: Path) -> None:
    fields, message = BROKEN_MHA[kind]
    path = tmp_path / "broken.mha"
    write_mha(path)
    if kind == "vector voxels":  # a new header line, before ElementDataFile
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b"ElementType", b"ElementNumberOfChannels = 3\nElementType"))
    else:
        write_mha(path, **fields)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=message) as err:
        read_volume(path)
    assert time.perf_counter() - t0 < 1.0
    assert err.value.path == str(path)


def test_detached_headers_read_only_a_data_file_beside_them(tmp_path: Path) -> None:
    good = tmp_path / "case" / "t2.mhd"
    good.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(image16()), str(good))
    assert read_volume(good).shape == (16, 16, 16)
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"\1" * (16**3 * 4))
    header = good.read_text()
    for ref, message in (
        ("../secret.raw", "outside its folder"),
        (str(secret), "outside its folder"),
        ("LIST", "only one data file"),
        ("img%03d.raw 1 16 1", "only one data file"),
        ("missing.raw", "does not exist"),
        ("nul\0.raw", "header cannot be read"),
    ):
        bad = good.with_name("bad.mhd")
        lines = [f"ElementDataFile = {ref}" if ln.startswith("ElementDataFile") else ln for ln in header.splitlines()]
        bad.write_text("\n".join(lines))
        with pytest.raises(InputError, match=message):
            read_volume(bad)
    nhdr = good.with_name("bad.nhdr")
    nhdr.write_text(
        "NRRD0004\ntype: float\ndimension: 3\nsizes: 16 16 16\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
        f"encoding: raw\nendian: little\ndata file: {secret}\n"
    )
    with pytest.raises(InputError, match="outside its folder"):
        read_volume(nhdr)


# -- DICOM: everything that bounds or places the series, from headers, before decoding -----------------------
def write_series(folder: Path, spacing_z: float = 3.0, n: int = 6, modality: str = "MR") -> Path:
    affine = np.diag([2.0, 2.0, spacing_z, 1.0])
    write_dicom_series(np.round(image16(shape=(16, 16, n))), affine, folder, description="T2", case_index=0)
    if modality != "MR":
        rewrite(folder, lambda ds, i: setattr(ds, "Modality", modality))
    return folder


def rewrite(folder: Path, change: Change, syntax: str | None = None) -> None:
    """Apply ``change(dataset, index)`` to every slice of a series (in file order) and save it."""
    for i, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        change(ds, i)
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(syntax)
        ds.save_as(f, enforce_file_format=syntax is not None)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_series(tmp_path_factory.mktemp("series") / "t2")


def copy_series(series: Path, tmp_path: Path, name: str = "t2") -> Path:
    return Path(shutil.copytree(series, tmp_path / name))


def _set(**values: object) -> Change:
    def change(ds: pydicom.Dataset, i: int) -> None:
        for key, value in values.items():
            setattr(ds, key, value)

    return change


def _drop(keyword: str) -> Change:
    def change(ds: pydicom.Dataset, i: int) -> None:
        delattr(ds, keyword)

    return change


def _move(ds: pydicom.Dataset, i: int) -> None:
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, 0.0 if i < 3 else z]  # slices 0, 1 and 2 at one position


BROKEN_SERIES = {
    "8192² rows × columns": (_set(Rows=8192, Columns=8192), "more than the limit"),
    "10⁵ frames claimed": (_set(NumberOfFrames=100_000), "more than the limit"),
    "two frames per file": (_set(NumberOfFrames=2), "multi-frame"),
    "no Pixel Spacing": (_drop("PixelSpacing"), "never assumed to be 1 mm"),
    "zero Pixel Spacing": (_set(PixelSpacing=[0, 0]), r"Pixel Spacing \(0, 0\) is zero"),
    "negative Pixel Spacing": (_set(PixelSpacing=[-1, 2]), r"Pixel Spacing \(-1, 2\) is zero, negative"),
    "no Image Position": (_drop("ImagePositionPatient"), "never assumed to be 1 mm"),
    "no Image Orientation": (_drop("ImageOrientationPatient"), "never assumed to be 1 mm"),
    "three slices at one position": (_move, "at one position"),
    "parallel orientation vectors": (_set(ImageOrientationPatient=[1, 0, 0, 1, 0, 0]), "orthogonal unit vectors"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_SERIES))
def test_broken_series_are_refused_before_decoding(kind: str, series: Path, tmp_path: Path) -> None:
    change, message = BROKEN_SERIES[kind]
    folder = copy_series(series, tmp_path)
    rewrite(folder, change)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=message) as err:
        read_volume(folder)
    assert time.perf_counter() - t0 < 1.0
    assert err.value.path == str(folder)


def test_a_deflated_series_is_refused_before_anything_inflates_it(series: Path, tmp_path: Path) -> None:
    """32 MB of zeros deflate to 32 KB per file; neither GDCM's series scan nor pydicom may inflate them."""
    folder = copy_series(series, tmp_path)
    rewrite(folder, lambda ds, i: ds.add_new(0x00091010, "OB", b"\0" * (32 << 20)), DeflatedExplicitVRLittleEndian)
    assert max(f.stat().st_size for f in folder.iterdir()) < 200_000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputError, match="Deflated") as err:
            read_volume(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 8 << 20
    assert err.value.path == str(folder)


def _encapsulate(folder: Path, codestream: Callable[[pydicom.Dataset], bytes], syntax: str) -> None:
    """Replace every slice's pixels by a compressed frame: ``codestream(ds)`` gives its bytes."""

    def change(ds: pydicom.Dataset, i: int) -> None:
        ds.PixelData = encapsulate([codestream(ds)])
        ds["PixelData"].VR = "OB"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PhotometricInterpretation = "MONOCHROME2"

    rewrite(folder, change, syntax)


def _jpeg(ds: pydicom.Dataset, fmt: str = "JPEG") -> bytes:
    pixels = np.clip(ds.pixel_array / 4, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {"irreversible": False}))
    return buf.getvalue()


def _jpeg_claiming_60000(ds: pydicom.Dataset) -> bytes:
    """A real 16×16 JPEG whose frame header (SOF0) says 60000×60000: a few hundred bytes."""
    frame = bytearray(_jpeg(ds))
    sof = frame.index(b"\xff\xc0")
    frame[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    return bytes(frame)


def test_compressed_frames_are_decoded_only_at_their_header_size(series: Path, tmp_path: Path) -> None:
    plain = read_volume(series)
    jpeg = copy_series(series, tmp_path, "jpeg")
    _encapsulate(jpeg, _jpeg, JPEGBaseline8Bit)
    vol = read_volume(jpeg)  # GDCM decodes a truthful JPEG series
    assert vol.shape == plain.shape
    np.testing.assert_allclose(vol.array, np.clip(plain.array / 4, 0, 255).astype(np.uint8), atol=8)

    bomb = copy_series(series, tmp_path, "bomb")
    _encapsulate(bomb, _jpeg_claiming_60000, JPEGBaseline8Bit)
    assert sum(f.stat().st_size for f in bomb.iterdir()) < 20_000
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"is 60000×60000 pixels but its header says 16×16") as err:
        read_volume(bomb)
    assert time.perf_counter() - t0 < 1.0
    assert err.value.path == str(bomb)


def test_codestream_sizes_of_jpeg_and_jpeg2000(series: Path) -> None:
    ds = pydicom.dcmread(sorted(series.iterdir())[0])
    assert _codestream_size(_jpeg(ds)) == (16, 16)
    assert _codestream_size(_jpeg(ds, "JPEG2000")) == (16, 16)
    assert _codestream_size(_jpeg_claiming_60000(ds)) == (60000, 60000)
    assert _codestream_size(b"\x00" * 64) is None


def test_uneven_slices_are_refused_in_our_words_only(
    series: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """One 200 mm gap: SimpleITK would print its own warning to stderr and build a wrong grid."""
    folder = copy_series(series, tmp_path)

    def gap(ds: pydicom.Dataset, i: int) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + (200.0 if i >= 3 else 0.0)]

    rewrite(folder, gap)
    capfd.readouterr()
    with pytest.raises(InputError, match="off one regular grid"):
        read_volume(folder)
    err = capfd.readouterr().err
    assert "WARNING" not in err
    assert "ITK" not in err


# -- the segmentation family -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prostate_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = get_task("prostate").untrained_checkpoint("tiny", seed=0)
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "prostate.pt")


def prostate(checkpoint: Path, explain: bool = False) -> ProstatePredictor:
    options = PredictOptions(device="cpu", explain=explain, task=ProstateOptions.parse({"dicom_seg": False}))
    return ProstatePredictor(load_checkpoint(checkpoint, task="prostate"), options)


def predict(predictor: ProstatePredictor, path: Path, out: Path) -> dict:
    prep = predictor.prepare(InputItem(path.name.split(".")[0], {"t2": path}))
    return predictor.finish(prep, predictor.run([prep])[0], out).data


def test_a_ct_series_is_refused_for_an_mr_task(series: Path, prostate_checkpoint: Path, tmp_path: Path) -> None:
    folder = copy_series(series, tmp_path, "ct")
    rewrite(folder, _set(Modality="CT"))
    with pytest.raises(InputError, match="is a DICOM CT series; t2 must be MR") as err:
        prostate(prostate_checkpoint).prepare(InputItem("ct", {"t2": folder}))
    assert err.value.path == str(folder)


def test_ct_like_intensities_and_missing_orientation_are_warned_in_the_result(
    prostate_checkpoint: Path, tmp_path: Path
) -> None:
    data = image16() - 1124.0  # background at −1024, like air in Hounsfield units
    path = raw_nifti(tmp_path / "ctlike.nii.gz", data, qform_code=0, sform_code=0)
    result = predict(prostate(prostate_checkpoint, explain=True), path, tmp_path / "out")
    said = result["warnings"]
    assert any("ctlike.nii.gz" in w and "like air in a CT" in w for w in said), said
    assert any("no orientation" in w for w in said), said
    clean = predict(prostate(prostate_checkpoint), raw_nifti(tmp_path / "mr.nii.gz", image16()), tmp_path / "o2")
    assert "warnings" not in clean


def test_a_uniform_200mm_slice_gap_is_resampled_with_a_stated_warning(
    prostate_checkpoint: Path, tmp_path: Path
) -> None:
    folder = write_series(tmp_path / "gap200", spacing_z=200.0)
    vol = read_volume(folder)
    np.testing.assert_allclose(vol.spacing, [2, 2, 200], atol=1e-3)
    result = predict(prostate(prostate_checkpoint), folder, tmp_path / "out")
    (warning,) = result["warnings"]
    assert "200 mm along array axis 2" in warning
    assert "result is coarse" in warning


def test_a_constant_image_is_refused(prostate_checkpoint: Path, tmp_path: Path) -> None:
    path = raw_nifti(tmp_path / "flat.nii.gz", np.full((16, 16, 16), 7.0, np.float32))
    with pytest.raises(InputError, match=r"t2 is constant \(every voxel 7\)") as err:
        prostate(prostate_checkpoint).prepare(InputItem("flat", {"t2": path}))
    assert err.value.path == str(path)


@pytest.mark.parametrize("kind", ["99.5% of voxels one value", "a field of view far smaller than the ROI"])
def test_an_empty_intensity_window_is_warned_in_our_words_only(
    kind: str, prostate_checkpoint: Path, tmp_path: Path
) -> None:
    """MONAI would warn "Divide by zero (a_min == a_max)" on stderr and feed the network raw intensities."""
    if kind.startswith("99.5%"):
        data = np.where(np.arange(16**3).reshape(16, 16, 16) < 20, 300.0, 0.0).astype(np.float32)
        path = raw_nifti(tmp_path / "sparse.nii.gz", data)
    else:  # 16 × 16 × 4 voxels of 0.25 mm: 2 × 2 × 1 voxels in the 48 × 48 × 24 ROI, zeros around them
        path = raw_nifti(
            tmp_path / "tiny_fov.nii.gz", image16(shape=(16, 16, 4)), srow_x=[0.25, 0, 0, 0], srow_y=[0, 0.25, 0, 0]
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predict(prostate(prostate_checkpoint), path, tmp_path / "out")
    assert not [w for w in caught if "Divide by zero" in str(w.message)]
    (warning,) = result["warnings"]
    assert warning.startswith(f"{path.name}: in the model's field of view")
    assert "intensity window is empty" in warning


def test_resampling_that_would_exceed_the_limit_is_refused_before_allocating(
    prostate_checkpoint: Path, tmp_path: Path
) -> None:
    """16³ voxels of 900 mm: a few KB that resampling to 2 × 2 × 4 mm would make about 10¹³ voxels."""
    path = raw_nifti(tmp_path / "huge_voxels.nii.gz", image16(), srow_x=[900.0, 0, 0, 0], srow_y=[0, 900.0, 0, 0])
    predictor = prostate(prostate_checkpoint)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"would become \(6751, 6751, 9\)") as err:
        predictor.prepare(InputItem("huge", {"t2": path}))
    assert time.perf_counter() - t0 < 1.0
    assert f"more than the limit {MAX_VOXELS:,}" in str(err.value)
    assert err.value.path == str(path)


@pytest.mark.parametrize("kind", ["axis-aligned", "oblique, permuted"])
def test_resampled_shape_is_monais(kind: str) -> None:
    affine = np.diag([0.7, 1.3, 3.1, 1.0])
    if kind != "axis-aligned":
        c, s = np.cos(0.3), np.sin(0.3)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]])
        affine[:3, :3] = rotation @ affine[:3, :3]
    vol = Volume(np.zeros((13, 17, 9), np.float32), affine, Path("v.nii"), "nifti")
    target = (0.5, 0.5, 3.0)
    steps = Compose(
        [
            Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys="image", pixdim=target),
        ]
    )
    out = steps({"image": MetaTensor(torch.zeros(1, *vol.shape), affine=torch.as_tensor(affine))})["image"]
    assert resampled_shape(vol, target) == tuple(out.shape[1:])


def test_non_finite_values_never_become_a_result(
    prostate_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = prostate(prostate_checkpoint)
    path = raw_nifti(tmp_path / "t2.nii.gz", image16())
    prep = predictor.prepare(InputItem("t2", {"t2": path}))
    maps = predictor.run([prep])[0]
    maps[0] = float("nan")
    with pytest.raises(InputError, match="maps hold NaN or infinite values") as err:
        predictor.finish(prep, maps, tmp_path / "out")
    assert err.value.path == str(path)
    assert not (tmp_path / "out" / "t2.json").exists()

    # and the tensor preprocessing makes is checked before the forward pass
    steps = predictor.preprocess
    monkeypatch.setattr(predictor, "preprocess", lambda data: {"image": steps(data)["image"] * float("inf")})
    with pytest.raises(InputError, match="preprocessing gave NaN or infinite values"):
        predictor.prepare(InputItem("t2", {"t2": path}))
