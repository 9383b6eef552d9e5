"""DICOM in, DICOM out: series read from folders and zips keep their slice headers in z order; hostile zips and
broken series are refused by name; region masks written as a DICOM SEG reference their source slices and decode
back to themselves; the brats predictor writes a SEG next to its NIfTI for DICOM input only."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.coding import Code
from typer.testing import CliRunner

from app.cli import app
from pipelines.brats import synthetic
from pipelines.brats.config import BratsOptions
from pipelines.brats.infer import SEGMENT_CODES, BratsPredictor
from pipelines.common import archives
from pipelines.common.archives import ArchiveError
from pipelines.common.checkpoint import load_checkpoint
from pipelines.common.dicom import SegmentCode, write_dicom_seg, write_dicom_series
from pipelines.common.errors import InputError
from pipelines.common.io import Volume, read_volume
from pipelines.common.task import PredictOptions, get_task

KINDS = ["ras", "lps", "aniso", "oblique"]
LPS = np.diag([-1.0, -1.0, 1.0])
ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
CODES = {
    "A": SegmentCode("Region A", ABNORMAL, Code("108369006", "SCT", "Neoplasm")),
    "B": SegmentCode("Region B", ABNORMAL, Code("52988006", "SCT", "Lesion")),
    "C": SegmentCode("Region C", Code("91723000", "SCT", "Anatomical Structure"), Code("13648007", "SCT", "Urethra")),
}


def write_series(folder: Path, kind: str, seed: int = 0) -> np.ndarray:
    """A tiny MR series of a geometry kind (about 10³ voxels); returns the RAS affine written."""
    shape, affine = synthetic.case_geometry(kind, 15.0)
    image = np.random.default_rng(seed).integers(0, 1000, shape)
    write_dicom_series(image, affine, folder, description="T1", case_index=seed)
    return affine


def zip_tree(folder: Path, archive: Path, arcroot: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{arcroot}{f.relative_to(folder).as_posix()}")
    return archive


def slice_position(vol: Volume, z: int) -> np.ndarray:
    """World (LPS) position of voxel (0, 0, z): where DICOM puts slice z's Image Position (Patient)."""
    return LPS @ (vol.affine @ np.array([0.0, 0.0, z, 1.0]))[:3]


def floats(values: Iterable[object]) -> list[float]:
    return [float(str(v)) for v in values]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    root = tmp_path_factory.mktemp("series")
    return {kind: (root / kind, write_series(root / kind, kind, seed=i)) for i, kind in enumerate(KINDS)}


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary folders made by the reader land here, so a test can see that they are removed."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# -- reading ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_folder_and_zip_read_the_same_volume_with_sources_in_z_order(
    kind: str, series: dict[str, tuple[Path, np.ndarray]], tmp_path: Path, private_tmp: Path
) -> None:
    folder, affine = series[kind]
    vol = read_volume(folder)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    assert vol.kind == "dicom"
    assert vol.sources is not None
    assert len(vol.sources) == vol.shape[2]
    for z, ds in enumerate(vol.sources):
        np.testing.assert_allclose(floats(ds.ImagePositionPatient), slice_position(vol, z), atol=1e-3)
        assert "PixelData" not in ds  # headers only
        # the slice the array holds at z is the pixel data of the file this header came from
        pixels = pydicom.dcmread(ds.filename).pixel_array.T
        np.testing.assert_array_equal(vol.array[:, :, z], pixels)
    assert "SYNTHETIC" not in repr(vol)  # the headers (patient name) stay out of reprs and logs

    archive = zip_tree(folder, tmp_path / f"{kind}.zip", arcroot="study/series/")
    zipped = read_volume(archive)
    np.testing.assert_array_equal(zipped.array, vol.array)
    np.testing.assert_allclose(zipped.affine, vol.affine, atol=1e-9)
    assert zipped.path == archive
    assert zipped.sources is not None
    assert [ds.SOPInstanceUID for ds in zipped.sources] == [ds.SOPInstanceUID for ds in vol.sources]
    assert list(private_tmp.iterdir()) == [], "the extracted folder is removed"


def test_zip_with_a_readme_beside_the_series_is_read(
    series: dict[str, tuple[Path, np.ndarray]], tmp_path: Path
) -> None:
    folder, _ = series["lps"]
    archive = zip_tree(folder, tmp_path / "s.zip", arcroot="series/")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("README.txt", "exported series")
        zf.writestr("__MACOSX/series/._IM0001.dcm", b"\0" * 200)
    assert read_volume(archive).shape == read_volume(folder).shape


def _encrypted_flag(data: bytes) -> bytes:
    """Mark every member encrypted in the central directory (the stdlib writes no encrypted zips)."""
    raw = bytearray(data)
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        raw[at + 8] |= 0x01
        at = raw.find(b"PK\x01\x02", at + 4)
    return bytes(raw)


def hostile_zip(kind: str, archive: Path, series_folder: Path) -> None:
    """Write a hostile or unusable archive of a kind."""
    slices = sorted(series_folder.glob("*.dcm"))
    if kind == "corrupt":
        archive.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
        return
    if kind == "encrypted":
        zip_tree(series_folder, archive)
        archive.write_bytes(_encrypted_flag(archive.read_bytes()))
        return
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        if kind == "dotdot":
            zf.writestr("series/IM0001.dcm", slices[0].read_bytes())
            zf.writestr("../evil.dcm", slices[1].read_bytes())
        elif kind == "absolute":
            zf.writestr("/tmp/evil.dcm", slices[0].read_bytes())
        elif kind == "symlink":
            info = zipfile.ZipInfo("series/link.dcm")
            info.external_attr = (0o120777 << 16) | 0x20
            zf.writestr(info, "/etc/passwd")
        elif kind in ("too_many", "too_large"):
            for f in slices:
                zf.writestr(f"series/{f.name}", f.read_bytes())
        elif kind == "no_dicom":
            zf.writestr("notes/readme.txt", "hello")
        elif kind == "two_series":
            for f in slices:
                zf.writestr(f"a/{f.name}", f.read_bytes())
                zf.writestr(f"b/{f.name}", f.read_bytes())


HOSTILE = [
    # kind, archive error status (None: an InputError that is no archive error), words in the message
    ("dotdot", 400, "unsafe path"),
    ("absolute", 400, "unsafe path"),
    ("symlink", 400, "link or special file"),
    ("too_many", 413, "members"),
    ("too_large", 413, "limit"),
    ("corrupt", 400, "not a readable zip"),
    ("encrypted", 400, "cannot be read"),
    ("no_dicom", None, "no readable DICOM series"),
    ("two_series", None, "2 folders"),
]


@pytest.mark.parametrize(("kind", "status", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_zips_are_refused_naming_the_file(
    kind: str,
    status: int | None,
    words: str,
    series: dict[str, tuple[Path, np.ndarray]],
    tmp_path: Path,
    private_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(archives, "MAX_MEMBERS", 4 if kind == "too_many" else 100)
    monkeypatch.setattr(archives, "MAX_UNPACKED_BYTES", 4096 if kind == "too_large" else 1 << 20)
    work = tmp_path / "inner" / "work"
    work.mkdir(parents=True)
    archive = work / f"{kind}.zip"
    hostile_zip(kind, archive, series["ras"][0])
    with pytest.raises(InputError) as err:
        read_volume(archive)
    assert str(archive) in str(err.value)
    assert words in err.value.problem
    if status is None:
        assert not isinstance(err.value, ArchiveError)
    else:
        assert isinstance(err.value, ArchiveError)
        assert err.value.status == status
    assert {p.name for p in work.parent.rglob("*")} == {"work", archive.name}, "nothing escaped"
    assert list(private_tmp.iterdir()) == [], "the extracted folder is removed"


def test_app_wrapper_keeps_its_service_errors(tmp_path: Path) -> None:
    from app.errors import ServiceError
    from app.security import safe_extract_zip

    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"m{i}.txt", "x")
    with pytest.raises(ServiceError) as err:
        safe_extract_zip(archive, tmp_path / "out", max_total_bytes=100, max_members=2, label="upload.zip")
    assert err.value.status == 413
    assert err.value.message.startswith("upload.zip: ")
    (tmp_path / "ok").mkdir()
    assert safe_extract_zip(archive, tmp_path / "ok", max_total_bytes=100, max_members=3, label="u.zip").is_dir()


# -- real files that pydicom ships ---------------------------------------------------------------------------
def _pydicom_file(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return Path(str(found))


def _stack_of_mr_small(folder: Path, n: int) -> list[Path]:
    """``n`` slices made of pydicom's real MR_small.dcm, moved 0.8 mm apart along its normal."""
    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        ds = pydicom.dcmread(_pydicom_file("MR_small.dcm"))
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{i + 1}"
        ds.InstanceNumber = i + 1
        x, y, z = floats(ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.8 * i]
        out.append(folder / f"IM{i + 1}.dcm")
        ds.save_as(out[-1])
    return out


def test_real_mr_slices_read_in_z_order_and_segment(tmp_path: Path) -> None:
    """Three slices of pydicom's real MR_small.dcm (a scanner's header, 16-bit pixels), stacked in reverse file
    order: GDCM sorts them along the normal, and the SEG carries the real header's study."""
    files = _stack_of_mr_small(tmp_path / "mr", 3)
    for i, f in enumerate(reversed(files)):  # file names no longer follow the slice order
        f.rename(f.with_name(f"X{i}.dcm"))
    vol = read_volume(tmp_path / "mr")
    assert vol.shape == (64, 64, 3)
    assert vol.sources is not None
    for z, ds in enumerate(vol.sources):
        np.testing.assert_allclose(floats(ds.ImagePositionPatient), slice_position(vol, z), atol=1e-3)
        full = pydicom.dcmread(ds.filename)
        np.testing.assert_allclose(vol.array[:, :, z], pydicom.pixels.apply_modality_lut(full.pixel_array, full).T)
    assert [int(ds.InstanceNumber) for ds in vol.sources] == [1, 2, 3]
    regions = {"A": vol.array > np.percentile(vol.array, 60), "B": np.zeros(vol.shape, bool)}
    path = write_dicom_seg(
        regions, CODES, vol, tmp_path / "seg.dcm", algorithm_name="m", algorithm_version="1", series_description="t"
    )
    seg = hd.seg.segread(path)
    assert seg.PatientName == vol.sources[0].PatientName  # the study's identifiers, as DICOM requires
    assert seg.StudyInstanceUID == vol.sources[0].StudyInstanceUID
    decoded = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in vol.sources], segment_numbers=[1, 2])
    np.testing.assert_array_equal(decoded.transpose(2, 1, 0, 3), np.stack(list(regions.values()), -1))


def test_real_projection_series_is_not_a_volume() -> None:
    """pydicom's MR700: seven MR angiography projections, each slice at its own angle (a scanner's export)."""
    folder = _pydicom_file("MR_small.dcm").parent / "dicomdirtests" / "98892003" / "MR700"
    if not folder.is_dir():
        pytest.skip("pydicom's dicomdirtests are not installed")
    with pytest.raises(InputError, match="do not share one orientation") as err:
        read_volume(folder)
    assert err.value.path == str(folder)


def test_series_with_a_missing_slice_is_refused(series: dict[str, tuple[Path, np.ndarray]], tmp_path: Path) -> None:
    for kind in ("lps", "oblique"):
        folder = tmp_path / kind
        shutil.copytree(series[kind][0], folder)
        (folder / "IM0004.dcm").unlink()
        with pytest.raises(InputError, match="off one regular grid") as err:
            read_volume(folder)
        assert err.value.path == str(folder)


def test_real_single_slice_and_truncated_files_are_refused(tmp_path: Path) -> None:
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(_pydicom_file("MR_small.dcm"), single / "IM1.dcm")
    with pytest.raises(InputError, match="single slice") as err:
        read_volume(single)
    assert err.value.path == str(single)

    # two good slices and pydicom's truncated MR: GDCM would silently leave it out of the series
    broken = tmp_path / "broken"
    _stack_of_mr_small(broken, 2)
    shutil.copy(_pydicom_file("MR_truncated.dcm"), broken / "IM3.dcm")
    with pytest.raises(InputError, match=r"IM3\.dcm cannot be read \(truncated or corrupt\)") as err:
        read_volume(broken)
    assert err.value.path == str(broken)

    # a real slice cut inside its header
    cut = tmp_path / "cut"
    files = _stack_of_mr_small(cut, 3)
    files[1].write_bytes(files[1].read_bytes()[:700])
    with pytest.raises(InputError, match=r"IM2\.dcm cannot be read"):
        read_volume(cut)
    # and the same series zipped names the archive
    with pytest.raises(InputError, match=r"IM2\.dcm cannot be read") as err:
        read_volume(zip_tree(cut, tmp_path / "cut.zip"))
    assert err.value.path == str(tmp_path / "cut.zip")

    # the intact real series of three reads
    ok = read_volume(_stack_of_mr_small(tmp_path / "ok", 3)[0].parent)
    assert ok.shape == (64, 64, 3)
    np.testing.assert_allclose(ok.spacing, [0.3125, 0.3125, 0.8], atol=1e-4)


# -- writing a SEG ------------------------------------------------------------------------------------------
def region_masks(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Two overlapping boxes and an empty region; the first and last slices are empty (omitted frames)."""
    nx, ny, nz = shape
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[1 : nx // 2 + 2, 2 : ny - 2, 1 : nz - 1] = True
    b[nx // 2 : nx - 1, 1 : ny // 2 + 1, 2 : nz - 1] = True
    b[nx // 2, ny // 2, 1] = True  # one voxel of B alone on a slice A also covers
    return {"A": a, "B": b, "C": np.zeros(shape, bool)}


@pytest.mark.parametrize("kind", KINDS)
def test_seg_round_trip(kind: str, series: dict[str, tuple[Path, np.ndarray]], tmp_path: Path) -> None:
    vol = read_volume(series[kind][0])
    assert vol.sources is not None
    regions = region_masks(vol.shape)
    assert (regions["A"] & regions["B"]).any()
    path = write_dicom_seg(
        regions,
        CODES,
        vol,
        tmp_path / "out" / "case_seg.dcm",
        algorithm_name="brats_nested_unet",
        algorithm_version="2024+1.0",
        series_description="brats segmentation",
    )
    seg = hd.seg.segread(path)
    src = vol.sources
    # the SEG belongs to the source's study, frame of reference and patient, and references its series
    assert seg.Modality == "SEG"
    assert seg.StudyInstanceUID == src[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    assert seg.PatientID == src[0].PatientID
    assert seg.SeriesInstanceUID != src[0].SeriesInstanceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == src[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in src
    }
    assert seg.SegmentationType == "BINARY"
    assert seg.SegmentsOverlap == "YES"
    assert seg.ContentQualification == "RESEARCH"
    # segments 1..R in the regions' order, coded and automatic
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    for item, (name, code) in zip(seg.SegmentSequence, CODES.items(), strict=True):
        assert item.SegmentLabel == code.label, name
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == code.category.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == code.type.value
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == "brats_nested_unet"
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient),
        floats(src[0].ImageOrientationPatient),
        atol=1e-6,
    )
    measures = shared.PixelMeasuresSequence[0]
    np.testing.assert_allclose(float(measures.SpacingBetweenSlices), vol.spacing[2], rtol=1e-4)
    np.testing.assert_allclose(floats(measures.PixelSpacing), vol.spacing[[1, 0]], rtol=1e-5)

    # every frame: at its source slice's position, referencing that slice, holding that slice of its segment
    z_of = {ds.SOPInstanceUID: z for z, ds in enumerate(src)}
    names = list(regions)
    frames = seg.pixel_array.reshape(-1, vol.shape[1], vol.shape[0])
    seen = set()
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        (derivation,) = item.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        z = z_of[source.ReferencedSOPInstanceUID]
        position = floats(item.PlanePositionSequence[0].ImagePositionPatient)
        np.testing.assert_allclose(position, floats(src[z].ImagePositionPatient), atol=1e-4)
        np.testing.assert_allclose(position, slice_position(vol, z), atol=1e-3)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frame.T.astype(bool), regions[names[number - 1]][:, :, z])
        seen.add((number, z))
    expected = {(n + 1, z) for n, m in enumerate(regions.values()) for z in range(vol.shape[2]) if m[:, :, z].any()}
    assert seen == expected, "exactly the non-empty frames are stored"
    # and highdicom decodes the masks back, by source instance
    decoded = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in src], segment_numbers=[1, 2, 3])
    np.testing.assert_array_equal(decoded.transpose(2, 1, 0, 3).astype(bool), np.stack(list(regions.values()), -1))


def test_seg_refuses_bad_arguments(series: dict[str, tuple[Path, np.ndarray]], tmp_path: Path) -> None:
    vol = read_volume(series["ras"][0])
    regions = region_masks(vol.shape)
    kw = {"algorithm_name": "m", "algorithm_version": "1", "series_description": "s"}
    with pytest.raises(ValueError, match="no segment code for region"):
        write_dicom_seg(regions, {"A": CODES["A"]}, vol, tmp_path / "s.dcm", **kw)
    with pytest.raises(ValueError, match="shape"):
        write_dicom_seg({"A": regions["A"][:-1]}, CODES, vol, tmp_path / "s.dcm", **kw)
    with pytest.raises(ValueError, match="no regions"):
        write_dicom_seg({}, CODES, vol, tmp_path / "s.dcm", **kw)
    nifti = Volume(vol.array, vol.affine, tmp_path / "x.nii.gz", "nifti")
    with pytest.raises(ValueError, match="not read from a DICOM series"):
        write_dicom_seg(regions, CODES, nifti, tmp_path / "s.dcm", **kw)
    assert vol.sources is not None
    headers = [pydicom.Dataset(ds) for ds in vol.sources]
    del headers[2].FrameOfReferenceUID
    lacking = Volume(vol.array, vol.affine, vol.path, "dicom", sources=headers)
    with pytest.raises(InputError, match="lack FrameOfReferenceUID"):
        write_dicom_seg(regions, CODES, lacking, tmp_path / "s.dcm", **kw)
    assert not (tmp_path / "s.dcm").exists()


def test_seg_fills_missing_type2_study_attributes(series: dict[str, tuple[Path, np.ndarray]], tmp_path: Path) -> None:
    vol = read_volume(series["aniso"][0])
    assert vol.sources is not None
    headers = [pydicom.Dataset(ds) for ds in vol.sources]
    for tag in ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientSex", "SliceThickness"):
        if tag in headers[0]:
            delattr(headers[0], tag)
    bare = Volume(vol.array, vol.affine, vol.path, "dicom", sources=headers)
    kw = {"algorithm_name": "m", "algorithm_version": "1", "series_description": "s"}
    path = write_dicom_seg(region_masks(vol.shape), CODES, bare, tmp_path / "s.dcm", **kw)
    seg = hd.seg.segread(path)
    assert seg.AccessionNumber == ""
    assert "AccessionNumber" not in headers[0], "the reference's own headers are left as they were"
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    np.testing.assert_allclose(float(measures.SliceThickness), vol.spacing[2], rtol=1e-4)


# -- end to end: brats ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small synthetic brats case (oblique) with its four modalities also as DICOM series."""
    root = synthetic.generate(tmp_path_factory.mktemp("brats_dicom"), n=1, seed=4, dicom=True, spacing=6.0)
    return next(p for p in root.iterdir() if p.is_dir())


def _regions_of_label_map(labels: np.ndarray) -> np.ndarray:
    """WT, TC, ET of a 2018-convention label map (0, 1 NCR/NET, 2 ED, 4 ET), stacked last."""
    wt = labels > 0
    return np.stack([wt, wt & (labels != 2), labels == 4], axis=-1)


def _decode(seg_path: Path, series_folder: Path) -> tuple[np.ndarray, hd.seg.Segmentation]:
    """The SEG's three segments as (X, Y, Z, 3), by the source series' instances in z order."""
    ref = read_volume(series_folder)
    assert ref.sources is not None
    seg = hd.seg.segread(seg_path)
    uids = [ds.SOPInstanceUID for ds in ref.sources]
    decoded = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3], assert_missing_frames_are_empty=True)
    return decoded.transpose(2, 1, 0, 3).astype(bool), seg


def _predict(*args: str) -> dict:
    result = CliRunner().invoke(app, ["predict", "brats", *args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("-o") + 1])
    return json.loads((out / "report.json").read_text())["results"][0]


def test_cli_writes_a_seg_for_dicom_series_unless_told_not_to(
    dicom_case: Path, brats_random_checkpoint: Path, tmp_path: Path
) -> None:
    ckpt = str(brats_random_checkpoint)
    res = _predict(str(dicom_case / "dicom"), "-o", str(tmp_path / "dcm"), "--checkpoint", ckpt)
    files = {f["role"]: tmp_path / "dcm" / f["path"] for f in res["files"]}
    assert files["dicom_seg"].name == files["segmentation"].name.replace("_pred.nii.gz", "_seg.dcm")
    assert json.loads(files["result"].read_text())["files"]["dicom_seg"] == files["dicom_seg"].name
    labels = np.asarray(nib.load(str(files["segmentation"])).dataobj)
    decoded, seg = _decode(files["dicom_seg"], dicom_case / "dicom" / "t1")
    np.testing.assert_array_equal(decoded, _regions_of_label_map(labels))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [c.label for c in SEGMENT_CODES.values()]
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(next((dicom_case / "dicom" / "t1").glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    )

    off = _predict(str(dicom_case / "dicom"), "-o", str(tmp_path / "off"), "--checkpoint", ckpt, "--no-dicom-seg")
    assert "dicom_seg" not in {f["role"] for f in off["files"]}
    assert not list((tmp_path / "off").glob("*.dcm"))


def test_predictor_seg_holds_nested_regions_logs_no_identifiers_and_skips_nifti(
    dicom_case: Path, brats_random_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    options = PredictOptions(device="cpu", task=BratsOptions.parse({}))
    predictor = BratsPredictor(load_checkpoint(brats_random_checkpoint, task="brats"), options)
    (item,) = get_task("brats").collect_inputs([str(dicom_case / "dicom")]).items
    prep = predictor.prepare(item)
    shape = prep.context["ref"].shape
    levels = np.zeros(shape, np.uint8)
    levels[3:15, 4:16, 2:12] = 1  # edema
    levels[5:12, 6:13, 4:10] = 2  # necrotic / non-enhancing core
    levels[7:10, 8:11, 5:8] = 3  # enhancing
    labels = predictor.labels_from_levels(levels, prep)
    result = predictor.write_outputs(prep, labels, np.zeros((4, *shape), np.float32), tmp_path)
    decoded, seg = _decode(tmp_path / result.data["files"]["dicom_seg"], dicom_case / "dicom" / "t1")
    np.testing.assert_array_equal(decoded, np.stack([levels >= 1, levels >= 2, levels >= 3], axis=-1))
    codes = [
        (s.SegmentedPropertyCategoryCodeSequence[0].CodeValue, s.SegmentedPropertyTypeCodeSequence[0].CodeValue)
        for s in seg.SegmentSequence
    ]
    assert codes == [("49755003", "52988006"), ("49755003", "108369006"), ("49755003", "108369006")]
    assert seg.PatientName == "SYNTHETIC^PHANTOM"  # carried by the SEG, as DICOM requires...
    for identifier in ("SYNTHETIC", "PHANTOM", "SYN0000"):  # ...and never logged
        assert identifier not in caplog.text

    prep.options = BratsOptions.parse({"dicom_seg": "false"})
    result = predictor.write_outputs(prep, labels, np.zeros((4, *shape), np.float32), tmp_path / "off")
    assert "dicom_seg" not in result.data["files"]
    assert not list((tmp_path / "off").glob("*.dcm"))

    # the same case's NIfTI files: no SEG, whatever the option
    (nifti_item,) = get_task("brats").collect_inputs([str(dicom_case)]).items
    assert nifti_item.paths["t1"].name.endswith(".nii.gz")
    nifti = predictor.prepare(nifti_item)
    assert nifti.options.dicom_seg
    result = predictor.write_outputs(nifti, labels, np.zeros((4, *shape), np.float32), tmp_path / "nii")
    assert "dicom_seg" not in result.data["files"]
    assert not list((tmp_path / "nii").glob("*.dcm"))
