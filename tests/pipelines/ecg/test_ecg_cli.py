"""End to end through the CLI: synth → train (tiny) → predict --explain → evaluate, and the learning check."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from pipelines.ecg.synthetic import GENERATED_LABELS

pytestmark = pytest.mark.slow


def test_checkpoint_carries_method_data(ecg_tiny_run: Path) -> None:
    raw = torch.load(ecg_tiny_run / "best.pt", map_location="cpu", weights_only=True)
    extra = raw["extra"]
    assert raw["task"] == "ecg"
    assert len(raw["labels"]) == 71
    assert len(extra["thresholds"]) == 71
    assert all(0 < t < 1 for t in extra["thresholds"])
    assert {k: len(v) for k, v in extra["label_partition"].items()} == {"rhythm": 16, "morphology": 52, "diffuse": 3}
    assert extra["stages_done"] == ["feature_extractor", "joint", "projection", "classifier", "fusion"]
    src = [s for s in extra["prototype_sources"] if s["label"] == "SR"]
    assert src
    assert all(s["record_id"] is not None and s["score"] is not None for s in src)
    assert extra["prototype_segments"]["morphology"].dtype == torch.float16
    card = (ecg_tiny_run / "MODEL_CARD.md").read_text()
    assert "Not a medical device" in card
    assert "[INF]" in card
    assert "synthetic" in card
    assert (ecg_tiny_run / "metrics.json").is_file()
    assert (ecg_tiny_run / "training_curve.png").is_file()


def test_learns_generator_labels(ecg_synth_data: Path, ecg_tiny_run: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        ["evaluate", "ecg", "--data", str(ecg_synth_data), "--checkpoint", str(ecg_tiny_run), "-o", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["folds"] == [10]
    assert summary["n_records"] == 30
    with (tmp_path / "per_class.csv").open() as fh:
        rows = {r["label"]: r for r in csv.DictReader(fh)}
    aucs = [float(rows[c]["auroc"]) for c in GENERATED_LABELS if rows[c]["auroc"] not in ("", "nan")]
    assert len(aucs) >= 8
    macro = float(np.mean(aucs))
    print(f"fold-10 macro AUROC over generator labels: {macro:.3f} ({len(aucs)} labels)")
    assert macro >= 0.85
    for key in ("macro_auroc", "auroc_rhythm", "auroc_morphology", "auroc_diffuse", "micro_f1", "fmax"):
        assert key in summary


def test_predict_with_explanation(ecg_synth_data: Path, ecg_tiny_run: Path, tmp_path: Path) -> None:
    import pandas as pd

    from pipelines.ecg.readers import write_dicom_ecg

    df = pd.read_csv(ecg_synth_data / "ptbxl_database.csv")
    row = df[df.strat_fold == 10].iloc[0]
    hea = ecg_synth_data / f"{row.filename_hr}.hea"  # the 500 Hz record
    import wfdb

    rec = wfdb.rdrecord(str(ecg_synth_data / row.filename_hr))
    dcm = write_dicom_ecg(tmp_path / "in" / "rec.dcm", rec.p_signal.T, 500)
    npy = tmp_path / "in" / "rec_npy.npy"
    np.save(npy, rec.p_signal.T)
    out = tmp_path / "out"
    args = ["predict", "ecg", str(hea), str(dcm), str(npy), "-o", str(out), "--checkpoint", str(ecg_tiny_run)]
    explain = ["--explain", "--explain-labels", "SR,NORM,STE_"]
    res = CliRunner().invoke(app, [*args, *explain, "--sampling-rate", "500", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"ok": 3, "error": 0, "skipped": 0}
    outputs = [r["outputs"] for r in report["results"]]
    for o in outputs:
        assert set(o["probabilities"]) == {"rhythm", "morphology", "diffuse"}
        assert sum(len(v) for v in o["probabilities"].values()) == 71
        labels = {e["label"]: e for e in o["explanation"]["labels"]}
        assert set(labels) == {c for group in o["positive"].values() for c in group} | {"SR", "NORM", "STE_"}
        for e in labels.values():
            assert len(e["prototypes"]) == 2  # the tiny preset: 2 prototypes per class, all listed (top 3)
            assert all(p["label"] == e["label"] for p in e["prototypes"])
        assert all(p["source"]["record_id"] is not None for c in ("SR", "NORM") for p in labels[c]["prototypes"])
        w = labels["STE_"]["prototypes"][0]["window"]
        assert 90 <= w["end_sample"] - w["start_sample"] <= 95  # time-localised: 3 of 32 columns
        assert labels["NORM"]["prototypes"][0]["window"]["end_sample"] == 1000  # diffuse: global
        assert {f"{e['picture']}" for e in labels.values()} <= set(o["files"])
        for f in o["files"]:
            assert (out / f).is_file()
    # the same ECG through WFDB, DICOM and NPY gives the same probabilities (DICOM stores 1 µV steps)
    p = [np.array(list(o["probabilities"]["rhythm"].values())) for o in outputs]
    np.testing.assert_allclose(p[0], p[1], atol=1e-3)
    np.testing.assert_allclose(p[0], p[2], atol=1e-4)
    with (out / "predictions.csv").open() as fh:
        assert len(list(csv.reader(fh))) == 4  # header + one row per record


def test_predict_bad_inputs_exit_1(ecg_tiny_run: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((12, 1000)))
    res = CliRunner().invoke(
        app,
        ["predict", "ecg", str(tmp_path / "missing.hea"), str(flat), "-o", str(tmp_path / "o"),
         "--checkpoint", str(ecg_tiny_run), "--sampling-rate", "100", "--continue-on-error"],
    )  # fmt: skip
    assert res.exit_code == 1
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    errors = [r["error"] for r in report["results"]]
    assert "missing.hea: does not exist" in errors[0]
    assert "flat.npy" in errors[1]
    assert "flat line" in errors[1]


def test_single_stage_continues_from_run(ecg_synth_data: Path, ecg_tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ecg_tiny_run, run)
    res = CliRunner().invoke(
        app,
        ["train", "ecg", "--data", str(ecg_synth_data), "-o", str(run), "--preset", "tiny", "--stage", "fusion",
         "--epochs", "1", "--device", "cpu"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    raw = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert raw["extra"]["stages_done"][-1] == "fusion"
    assert len(raw["extra"]["stages_done"]) == 6
    assert raw["extra"]["prototype_sources"]  # carried over from the run it continued
    bad = CliRunner().invoke(
        app, ["train", "ecg", "--data", str(ecg_synth_data), "-o", str(run), "--stage", "push", "--device", "cpu"]
    )
    assert bad.exit_code == 2
    assert "stages" in bad.output
