"""The tiny preset learns: benign/malignant on held-out synthetic patients, then 8 subtypes from its trunk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from pipelines.common.checkpoint import load_checkpoint
from pipelines.common.task import get_task


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_binary_then_subtype_learn_on_held_out_patients(breakhis_data: Path, tmp_path: Path) -> None:
    held_out = get_task("breakhis").synth(tmp_path / "held_out", n=2, seed=99)  # other patients altogether
    binary, subtype = tmp_path / "binary", tmp_path / "subtype"
    _cli("train", "breakhis", "--data", str(breakhis_data), "-o", str(binary), "--preset", "tiny", "--device", "cpu")
    _cli("train", "breakhis", "--data", str(breakhis_data), "-o", str(subtype), "--preset", "tiny", "--device", "cpu",
         "--target", "subtype", "--transfer-from", str(binary))  # fmt: skip

    _cli("evaluate", "breakhis", "--data", str(held_out), "--checkpoint", str(binary), "-o", str(tmp_path / "e1"))
    first = json.loads((tmp_path / "e1" / "summary.json").read_text(encoding="utf-8"))
    assert first["scored"] == "every image (external set)"
    assert first["images"] == 128
    assert first["binary"]["image"]["balanced_accuracy"] >= 0.9, first["binary"]["image"]
    assert first["binary"]["patient"]["n"] == 16
    assert set(first["binary"]["by_magnification"]) == {"40", "100", "200", "400"}

    _cli("evaluate", "breakhis", "--data", str(held_out), "--checkpoint", str(subtype), "-o", str(tmp_path / "e2"))
    second = json.loads((tmp_path / "e2" / "summary.json").read_text(encoding="utf-8"))
    assert second["subtype"]["image"]["balanced_accuracy"] >= 0.3, second["subtype"]["image"]  # chance: 1/8
    assert second["binary"]["image"]["balanced_accuracy"] >= 0.85  # the subtypes' benign/malignant sums
    for name in ("summary.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png", "predictions.csv"):
        assert (tmp_path / "e2" / "subtype" / name).is_file(), name

    # the run's own held-out test patients are what an evaluation on its training data scores
    _cli("evaluate", "breakhis", "--data", str(breakhis_data), "--checkpoint", str(binary), "-o", str(tmp_path / "e3"))
    own = json.loads((tmp_path / "e3" / "summary.json").read_text(encoding="utf-8"))
    test_patients = load_checkpoint(binary).extra["split"]["test_patients"]
    assert own["scored"] == "the run's held-out test split"
    assert own["patients"] == len(test_patients) == 8
    card = (subtype / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "not a medical device" in card.lower()
    assert "w_c = N / (C·n_c)" in card
