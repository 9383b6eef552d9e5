"""End to end through the CLI: synth → train (tiny, both stages) → evaluate → predict a DICOM series with its SEG.

The tiny model must really learn PZ and TZ on held-out synthetic cases, and stage 2 must lower the paths'
disagreement.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from app.cli import app
from pipelines.common.checkpoint import load_checkpoint
from pipelines.common.task import get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prostate_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-preset prostate run (40 supervised + 10 co-training epochs) on eight synthetic cases."""
    data = get_task("prostate").synth(tmp_path_factory.mktemp("prostate_train"), n=8, seed=0)
    run = tmp_path_factory.mktemp("prostate_run") / "run"
    args = ["train", "prostate", "--data", str(data), "-o", str(run), "--preset", "tiny", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return get_task("prostate").synth(tmp_path_factory.mktemp("prostate_heldout"), n=3, seed=101, dicom=True)


def test_run_folder_checkpoint_and_card(prostate_run: Path) -> None:
    for name in ("best.pt", "last.pt", "metrics.json", "training_curve.png", "MODEL_CARD.md", "config.json"):
        assert (prostate_run / name).is_file(), name
    ckpt = load_checkpoint(prostate_run)
    assert ckpt.heads == {"zones": ["PZ", "TZ", "DPU", "AFS"]}
    assert ckpt.model_name == "prostate_dual_path_unet"
    assert ckpt.provenance["synthetic"] is True
    card = (prostate_run / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Not a medical device" in card
    for stated in ("Path A predicts {background, PZ, TZ}", "signed distance maps", "exp(−5(1−t)²)", "Fusion"):
        assert stated in card, stated


def test_both_stages_run_and_stage_two_lowers_disagreement(prostate_run: Path) -> None:
    metrics = json.loads((prostate_run / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["stages"]) == {"supervised", "co_training"}
    assert len(metrics["history"]) == 40 + 10
    assert all("disagreement" in h for h in metrics["history"])
    end = metrics["disagreement_at_stage_end"]
    assert end["co_training"] < end["supervised"], end
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]


def test_tiny_model_learns_pz_and_tz_on_heldout_cases(prostate_run: Path, heldout: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "prostate", "--data", str(heldout), "--checkpoint", str(prostate_run), "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_cases"] == 3
    dice = {z: summary["metrics"][f"dice_{z}"]["mean"] for z in ("PZ", "TZ", "DPU", "AFS")}
    assert dice["PZ"] >= 0.7, dice
    assert dice["TZ"] >= 0.7, dice
    masd = summary["metrics"]["masd_PZ"]["mean"]
    assert 0 <= masd < 3.0, masd  # mm; a few voxels at most
    assert "MASD = mean of the two directed mean surface distances" in summary["notes"]
    header = (out / "cases.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert {"case", "dice_PZ", "hd95_TZ", "masd_AFS", "present_DPU"} <= set(header)


def test_dicom_series_in_dicom_seg_out(prostate_run: Path, heldout: Path, tmp_path: Path) -> None:
    import highdicom as hd

    series = sorted(p for p in heldout.iterdir() if p.is_dir())[0] / "dicom"
    args = ["predict", "prostate", str(series), "-o", str(tmp_path), "--checkpoint", str(prostate_run)]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    files = {f["role"]: tmp_path / f["path"] for f in report["results"][0]["files"]}
    labels = np.asarray(nib.load(str(files["segmentation"])).dataobj)
    assert set(np.unique(labels).tolist()) >= {1, 2}
    seg = hd.seg.segread(files["dicom_seg"])
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["PZ", "TZ", "DPU", "AFS"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "279706003"
    sources = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in series.iterdir()),
        key=lambda d: float(d.ImagePositionPatient[2]),
    )
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    uids = [d.SOPInstanceUID for d in sources]
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3, 4])
    # (slices, rows, columns, segments) against the NIfTI's (columns, rows, slices) in the same slice order
    for number in range(4):
        np.testing.assert_array_equal(masks[..., number].transpose(2, 1, 0).astype(bool), labels == number + 1)
