"""End to end through the CLI: synth → train (tiny) → predict → evaluate; the tiny model really learns."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from pipelines.common.checkpoint import installed_checkpoint, load_checkpoint

pytestmark = pytest.mark.slow


def test_synth_cli_writes_real_layout(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["synth", "brats", "-o", str(out), "--n", "2", "--seed", "4", "--dicom"])
    assert result.exit_code == 0, result.output
    case = out / "BraTS20_Training_04001"
    for role in ("t1", "t1ce", "t2", "flair", "seg"):
        assert (case / f"{case.name}_{role}.nii.gz").is_file()
    assert (
        len(list((case / "dicom" / "flair").glob("*.dcm"))) == nib.load(str(case / f"{case.name}_t1.nii.gz")).shape[2]
    )
    seg = np.asarray(nib.load(str(case / f"{case.name}_seg.nii.gz")).dataobj)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
    v2023 = CliRunner().invoke(
        app, ["synth", "brats", "-o", str(tmp_path / "s23"), "--n", "1", "--variant", "brats2023"]
    )
    assert v2023.exit_code == 0
    assert list((tmp_path / "s23").glob("*/*-t1c.nii.gz"))
    assert CliRunner().invoke(app, ["synth", "brats", "-o", str(tmp_path / "x"), "--variant", "v9"]).exit_code == 2


def test_run_folder_contents(brats_tiny_run: Path) -> None:
    for name in ("best.pt", "last.pt", "metrics.json", "training_curve.png", "MODEL_CARD.md", "config.json"):
        assert (brats_tiny_run / name).is_file(), name
    ckpt = load_checkpoint(brats_tiny_run)
    assert ckpt.path == brats_tiny_run / "best.pt"
    raw = torch.load(brats_tiny_run / "best.pt", weights_only=True)
    assert set(raw["provenance"]) == {
        "task",
        "dataset",
        "data_card",
        "seed",
        "trained_at",
        "code_version",
        "synthetic",
        "stands_in_for",
    }
    assert raw["provenance"]["synthetic"] is True
    assert raw["provenance"]["task"] == "brats"
    assert raw["provenance"]["data_card"] == "synthetic.md"
    assert raw["provenance"]["stands_in_for"] == "brats.md"  # the synthetic data imitate BraTS, not another set
    assert raw["heads"] == {"regions": ["WT", "TC", "ET"]}
    assert raw["labels"] == ["WT", "TC", "ET"]
    assert raw["model_name"] == "brats_nested_unet"
    history = json.loads((brats_tiny_run / "metrics.json").read_text())["history"]
    assert len(history) == 40
    assert all({"dice_WT", "dice_TC", "dice_ET"} <= set(h) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    card = (brats_tiny_run / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Not a medical device; not for diagnosis" in card
    assert "[INF] Multi-level activation" in card
    assert "synthetic" in card
    # every departure from the paper is stated
    assert "no final retrain on all training cases" in card
    assert "--all-cases" in card
    assert "gradients clipped to norm 12.0" in card
    assert "mixed precision" in card
    assert "float32 on CPU" in card


@pytest.mark.slow
def test_all_cases_is_the_papers_final_retrain(brats_train_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "all"
    args = ["train", "brats", "--data", str(brats_train_data), "-o", str(run), "--preset", "tiny", "--epochs", "2"]
    result = CliRunner().invoke(app, [*args, "--all-cases", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best.extra["train_cases"] == 8
    assert best.extra["train_options"] == {"all_cases": True}
    assert best.metrics["epoch"] == 2  # no held-out case to choose by: the last epoch is kept
    assert all(torch.equal(best.state_dict[k], last.state_dict[k]) for k in best.state_dict)
    history = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["history"]
    assert len(history) == 2
    assert not any(k.startswith("dice") for h in history for k in h)
    card = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Final retrain on all 8 labelled cases" in card
    assert "0 validation cases" in card


def test_tiny_model_learns_and_cli_round_trip(brats_tiny_run: Path, brats_heldout_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cases = sorted(str(p) for p in brats_heldout_data.iterdir() if p.is_dir())
    pred_dir = tmp_path / "pred"
    result = runner.invoke(
        app,
        ["predict", "brats", *cases, "-o", str(pred_dir), "--checkpoint", str(brats_tiny_run), "--overlay"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((pred_dir / "report.json").read_text())
    assert report["counts"] == {"ok": 3, "error": 0, "skipped": 0}
    for r in report["results"]:
        assert set(r["outputs"]["volumes_ml"]) == {"WT", "TC", "ET"}
        assert r["outputs"]["volumes_ml"]["WT"] >= r["outputs"]["volumes_ml"]["TC"] >= r["outputs"]["volumes_ml"]["ET"]
        assert r["outputs"]["volumes_ml"]["WT"] > 5.0
        assert {"read", "preprocess", "infer", "postprocess", "write"} <= set(r["timings"])
    csv_lines = (pred_dir / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("input,status,error,seconds,name,source.")
    assert ",volumes_ml.WT,volumes_ml.TC,volumes_ml.ET," in csv_lines[0]
    assert len(csv_lines) == 4

    eval_dir = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "brats",
            "--data",
            str(brats_heldout_data),
            "--checkpoint",
            str(brats_tiny_run),
            "-o",
            str(eval_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((eval_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["n_cases"] == 3
    assert metrics["dice_WT"]["mean"] >= 0.8, metrics["dice_WT"]
    for region in ("TC", "ET"):
        assert 0.0 <= metrics[f"dice_{region}"]["mean"] <= 1.0
        assert "median" in metrics[f"dice_{region}"]
        assert metrics[f"hd95_{region}"]["n"] == 3
    rows = (eval_dir / "cases.csv").read_text().splitlines()
    assert rows[0].startswith("case,dice_WT,hd95_WT")
    assert len(rows) == 4
    assert len(list((eval_dir / "predictions").glob("*_pred.nii.gz"))) == 3


def test_install_then_predict_without_checkpoint_flag(
    brats_tiny_run: Path, brats_heldout_data: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    from pipelines.common.checkpoint import install_checkpoint

    install_checkpoint(brats_tiny_run, "brats")
    assert installed_checkpoint("brats") is not None
    listing = runner.invoke(app, ["models", "--json"])
    assert listing.exit_code == 0
    tasks = {t["task"]: t for t in json.loads(listing.output)["tasks"]}
    assert tasks["brats"]["checkpoint"]
    assert tasks["brats"]["contract"]["channels"] == ["t1", "t1ce", "t2", "flair"]
    case = next(p for p in brats_heldout_data.iterdir() if p.is_dir())
    result = runner.invoke(app, ["predict", "brats", str(case), "-o", str(tmp_path / "p"), "--labels", "brats2023"])
    assert result.exit_code == 0, result.output
    seg = np.asarray(nib.load(str(tmp_path / "p" / f"{case.name}_pred.nii.gz")).dataobj)
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 3}
