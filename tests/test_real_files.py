"""Files written by other tools, shipped with the packages we depend on, through the task families.

Our generators agree with our readers by construction; these files do not: nibabel's ``anatomical.nii``
(big-endian int16, LAS orientation, qform and sform code 2), pydicom's ``waveform_ecg.dcm`` (a vendor
12-lead ECG at 1000 Hz with vendor lead names, and a second 1.2 s rhythm waveform) and pydicom's CT5N series
(a scanner's slices, for DICOM in and DICOM SEG out).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from app.cli import app
from pipelines.common.checkpoint import save_checkpoint
from pipelines.common.task import get_task

NIBABEL_ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _predict(task: str, inputs: list[str], out: Path, tmp_path: Path, *extra: str) -> dict:
    ckpt = save_checkpoint(get_task(task).untrained_checkpoint("tiny"), tmp_path / f"{task}.pt")
    args = ["predict", task, *inputs, "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_nifti_written_by_another_tool_comes_back_in_its_own_grid_and_header(tmp_path: Path) -> None:
    """anatomical.nii is t1; the other modalities are its voxels rescaled, written with its own header (one
    file given for all four is refused: the modalities would be one image)."""
    src = nib.load(str(NIBABEL_ANATOMICAL))
    roles = [f"t1={NIBABEL_ANATOMICAL}"]
    for k, role in enumerate(("t1ce", "t2", "flair"), start=2):
        path = tmp_path / f"{role}.nii"
        nib.save(nib.Nifti1Image(np.asarray(src.dataobj) * k, src.affine, src.header), str(path))
        roles.append(f"{role}={path}")
    report = _predict("brats", roles, tmp_path / "out", tmp_path, "--explain", "--overlay")
    (res,) = report["results"]
    files = {f["role"]: tmp_path / "out" / f["path"] for f in res["files"]}
    assert set(files) == {"segmentation", "probabilities", "overlay", "result"}
    for role in ("segmentation", "probabilities"):
        out = nib.load(str(files[role]))
        assert out.shape[:3] == src.shape == (33, 41, 25)
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        assert int(out.header["qform_code"]) == int(out.header["sform_code"]) == 2  # the input's codes kept
    assert res["outputs"]["shape"] == [33, 41, 25]
    assert res["outputs"]["voxel_volume_ml"] == pytest.approx(0.008)  # 2 mm isotropic


@pytest.mark.slow
def test_pydicoms_vendor_ecg_is_read_and_explained(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    path = str(get_testdata_file("waveform_ecg.dcm"))
    report = _predict("ecg", [path], tmp_path / "out", tmp_path, "--explain")
    (res,) = report["results"]
    assert res["status"] == "ok"
    assert res["outputs"]["input_fs"] == 1000.0
    assert res["outputs"]["input_seconds"] == 10.0
    assert sum(len(v) for v in res["outputs"]["probabilities"].values()) == 71
    labels = res["outputs"]["explanation"]["labels"]
    positive = {c for group in res["outputs"]["positive"].values() for c in group}
    assert {e["label"] for e in labels} == positive
    assert sorted(f["path"] for f in res["files"] if f["role"] == "explanation") == sorted(e["picture"] for e in labels)


PYDICOM_CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


@pytest.mark.slow
def test_a_vendor_dicom_series_gets_a_dicom_seg_aligned_with_it(tmp_path: Path) -> None:
    """pydicom's CT5N (a scanner's 5-slice series, 0.49 × 0.49 × 2.5 mm) through prostate: NIfTI + DICOM SEG.

    prostate reads MR only: the CT series itself is refused by name, and read once its Modality says MR."""
    import highdicom as hd

    ckpt = save_checkpoint(get_task("prostate").untrained_checkpoint("tiny"), tmp_path / "refused.pt")
    args = ["predict", "prostate", str(PYDICOM_CT5N), "-o", str(tmp_path / "ct"), "--checkpoint", str(ckpt)]
    refused = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert refused.exit_code == 1
    assert "is a DICOM CT series; t2 must be MR" in refused.output
    series = tmp_path / "CT5N"
    shutil.copytree(PYDICOM_CT5N, series)
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    report = _predict("prostate", [str(series)], tmp_path / "out", tmp_path, "--explain")
    (res,) = report["results"]
    files = {f["role"]: tmp_path / "out" / f["path"] for f in res["files"]}
    assert {"segmentation", "probabilities", "disagreement", "dicom_seg", "result"} <= set(files)
    labels = np.asarray(nib.load(str(files["segmentation"])).dataobj)
    assert labels.shape == (16, 16, 5)
    sources = sorted((pydicom.dcmread(p) for p in series.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    seg = hd.seg.segread(files["dicom_seg"])
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    positions = {d.SOPInstanceUID: [float(v) for v in d.ImagePositionPatient] for d in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        got = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(got, positions[uid], atol=1e-3)
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in sources], segment_numbers=[1, 2, 3, 4]
    )
    for number in range(4):
        np.testing.assert_array_equal(masks[..., number].transpose(2, 1, 0).astype(bool), labels == number + 1)
