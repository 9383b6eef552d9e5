"""``report.csv``: one column per scalar result, never JSON in a cell, every value as in ``report.json``."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.common.checkpoint import load_checkpoint, save_checkpoint
from pipelines.common.predict import (
    CSV_EXCLUDED,
    REPORT_COLUMNS,
    ItemResult,
    Report,
    csv_scalars,
    report_table,
    run_predictions,
)
from pipelines.common.task import PredictOptions, get_task

BRATS_LIKE: dict[str, Any] = {
    "case": "BraTS20_Training_001",
    "files": {"segmentation": "BraTS20_Training_001_pred.nii.gz"},
    "label_convention": "brats2018",
    "labels": {"background": 0, "necrosis_non_enhancing": 1, "edema": 2, "enhancing": 4},
    "volumes_ml": {"WT": 1076.902, "TC": 284.174, "ET": 0.129},
    "shape": [62, 75, 58],
    "voxel_volume_ml": 0.014349313643731047,
    "model": {"task": "brats", "version": "v1", "synthetic_demo": True, "provenance": {"seed": 0}},
    "warnings": ["t1.nii.gz: no orientation", "resampled to 1 mm"],
}

ECG_LIKE: dict[str, Any] = {
    "record": "00001_lr",
    "input_fs": 100.0,
    "probabilities": {"rhythm": {"SR": 0.912345, "AFIB": 0.0123}, "diffuse": {"NORM": 0.5}},
    "decisions": {"rhythm": {"SR": True, "AFIB": False}, "diffuse": {"NORM": True}},
    "positive": {"rhythm": ["SR"], "diffuse": ["NORM"]},
    "explanation": {"rhythm": [{"label": "SR", "prototype": 3, "similarity": 0.8}]},
    "files": ["00001_lr.json"],
    "model": {"task": "ecg"},
}


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    return header, [dict(zip(header, row, strict=True)) for row in rows]


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every scalar of a JSON value with its dotted path; lists of strings are one leaf (one cell)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}.{i}")
    else:
        yield path, value


def _assert_csv_matches_json(out: Path) -> list[dict[str, str]]:
    """Every scalar of every row's outputs (less the excluded blocks) is in its column with the JSON's value, and
    no cell holds a JSON object or list."""
    results = json.loads((out / "report.json").read_text(encoding="utf-8"))["results"]
    header, rows = _rows(out / "report.csv")
    assert header[: len(REPORT_COLUMNS)] == list(REPORT_COLUMNS)
    assert len(rows) == len(results)
    for result, row in zip(results, rows, strict=True):
        for cell in row.values():
            if cell.startswith(("{", "[")):
                with pytest.raises(json.JSONDecodeError):
                    json.loads(cell)
        assert row["input"] == result["input"]
        assert row["status"] == result["status"]
        assert row["error"] == (result["error"] or "")
        assert float(row["seconds"]) == result["seconds"]
        for role, path in result["source"].items():
            assert row[f"source.{role}"] == path
        outputs = {k: v for k, v in result["outputs"].items() if k not in CSV_EXCLUDED}
        for path, leaf in _leaves(outputs):
            cell = row[path]
            if isinstance(leaf, bool):
                assert cell == ("true" if leaf else "false"), path
            elif isinstance(leaf, int | float):
                assert type(leaf)(cell) == leaf, path  # unrounded
            elif isinstance(leaf, list):
                assert cell == " | ".join(leaf), path
            else:
                assert cell == ("" if leaf is None else leaf), path
    return rows


def _result(name: str, outputs: dict[str, Any], **kw: Any) -> ItemResult:
    return ItemResult(f"in/{name}", kw.pop("status", "ok"), outputs=outputs, name=name, **kw)


def test_csv_scalars_flatten_by_dotted_path() -> None:
    value = {"a": {"b": 1, "c": [True, None]}, "s": ["x", "y"], "e": [], "m": {}, "n": [[1, 2], [3.5, 4]]}
    assert csv_scalars(value) == {
        "a.b": 1,
        "a.c.0": "true",
        "a.c.1": "",
        "s": "x | y",
        "e": "",
        "n.0.0": 1,
        "n.0.1": 2,
        "n.1.0": 3.5,
        "n.1.1": 4,
    }
    assert csv_scalars(0.5) == {}  # a bare scalar has no column name


def test_brats_like_volumes_one_column_per_region(tmp_path: Path) -> None:
    Report("brats", "", [_result("case", BRATS_LIKE, source={"t1": "a/t1.nii.gz", "flair": "a/flair.nii.gz"})]).write(
        tmp_path
    )
    header, (row,) = _rows(tmp_path / "report.csv")
    assert header == [
        *REPORT_COLUMNS,
        "source.t1",
        "source.flair",
        "case",
        "label_convention",
        "labels.background",
        "labels.necrosis_non_enhancing",
        "labels.edema",
        "labels.enhancing",
        "volumes_ml.WT",
        "volumes_ml.TC",
        "volumes_ml.ET",
        "shape.0",
        "shape.1",
        "shape.2",
        "voxel_volume_ml",
        "warnings",
    ]
    assert [row["volumes_ml.WT"], row["volumes_ml.TC"], row["volumes_ml.ET"]] == ["1076.902", "284.174", "0.129"]
    assert row["voxel_volume_ml"] == "0.014349313643731047"  # unrounded
    assert row["warnings"] == "t1.nii.gz: no orientation | resampled to 1 mm"
    assert not any(c.startswith(("model", "files")) for c in header)  # in report.json only
    _assert_csv_matches_json(tmp_path)


def test_ecg_like_probabilities_and_decisions(tmp_path: Path) -> None:
    Report("ecg", "", [_result("00001_lr", ECG_LIKE, source={"record": "00001_lr.hea"})]).write(tmp_path)
    header, (row,) = _rows(tmp_path / "report.csv")
    assert row["probabilities.rhythm.SR"] == "0.912345"
    assert row["probabilities.rhythm.AFIB"] == "0.0123"
    assert row["probabilities.diffuse.NORM"] == "0.5"
    assert [row["decisions.rhythm.SR"], row["decisions.rhythm.AFIB"]] == ["true", "false"]
    assert row["positive.rhythm"] == "SR"
    assert row["input_fs"] == "100.0"
    assert not any(c.startswith("explanation") for c in header)
    _assert_csv_matches_json(tmp_path)


def test_mixed_rows_take_the_union_of_columns_in_first_appearance_order(tmp_path: Path) -> None:
    results = [
        _result("a", {"y": 1.5, "p": {"x": 0.25}}, source={"x": "a.txt"}),
        _result("b", {"p": {"z": 0.75}, "q": "text"}, source={"x": "b.txt", "mask": "b_mask.txt"}),
        _result("c", {"y": -2, "p": {"x": 0.5, "z": 0.5}}, source={"x": "c.txt"}),
    ]
    Report("toy", "", results).write(tmp_path)
    header, rows = _rows(tmp_path / "report.csv")
    assert header == [*REPORT_COLUMNS, "source.x", "source.mask", "y", "p.x", "p.z", "q"]
    assert [r["y"] for r in rows] == ["1.5", "", "-2"]
    assert [r["p.x"] for r in rows] == ["0.25", "", "0.5"]
    assert [r["q"] for r in rows] == ["", "text", ""]
    assert [r["source.mask"] for r in rows] == ["", "b_mask.txt", ""]
    _assert_csv_matches_json(tmp_path)


def test_an_error_row_has_its_message_and_empty_output_cells(tmp_path: Path) -> None:
    results = [
        _result("a", {"y": 1.5}, seconds=0.25),
        _result("b", {}, status="error", error="in/b: is not a number", source={"x": "in/b"}),
        _result("c", {}, status="skipped", error="stopped after an earlier failure"),
    ]
    Report("toy", "", results).write(tmp_path)
    header, rows = _rows(tmp_path / "report.csv")
    assert header == [*REPORT_COLUMNS, "source.x", "y"]
    assert rows[1] == {
        "input": "in/b",
        "status": "error",
        "error": "in/b: is not a number",
        "seconds": "0.0",
        "name": "b",
        "source.x": "in/b",
        "y": "",
    }
    assert [rows[0]["seconds"], rows[0]["error"]] == ["0.25", ""]
    assert rows[2]["status"] == "skipped"
    _assert_csv_matches_json(tmp_path)


def test_formula_like_values_and_names_stay_text(tmp_path: Path) -> None:
    outputs = {"label": "=HYPERLINK(1)", "probabilities": {"@cmd": -0.5}, "notes": ["+x", "ok"], "neg": -3}
    Report("toy", "", [_result("-1+2", outputs, source={"x": "-1+2.txt"})]).write(tmp_path)
    header, (row,) = _rows(tmp_path / "report.csv")
    assert row["label"] == "'=HYPERLINK(1)"
    assert row["probabilities.@cmd"] == "-0.5"  # a number stays a number
    assert row["notes"] == "'+x | ok"
    assert row["neg"] == "-3"
    assert row["name"] == "'-1+2"
    assert row["source.x"] == "'-1+2.txt"
    leading = {"@p": 1}
    Report("toy", "", [_result("a", leading)]).write(tmp_path)
    header, _ = _rows(tmp_path / "report.csv")
    assert header[-1] == "'@p"  # the header goes through the same writer


def test_an_output_named_like_a_leading_column_is_prefixed(tmp_path: Path) -> None:
    outputs = {"status": "fine", "source": {"x": "inner"}, "name": "n"}
    header, (row,) = report_table([_result("a", outputs, source={"x": "a.txt"}).to_dict()])
    assert header == [*REPORT_COLUMNS, "source.x", "outputs.status", "outputs.source.x", "outputs.name"]
    assert row[header.index("status")] == "ok"
    assert row[header.index("source.x")] == "a.txt"
    assert row[header.index("outputs.status")] == "fine"
    assert row[header.index("outputs.source.x")] == "inner"


def test_numpy_values_are_written_as_the_json_writes_them(tmp_path: Path) -> None:
    outputs = {"v": np.float32(0.5), "arr": [np.int64(3)], "flag": True}
    Report("toy", "", [_result("a", outputs)]).write(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["results"][0]["outputs"]
    _, (row,) = _rows(tmp_path / "report.csv")
    assert [row["v"], row["arr"], row["flag"]] == [str(data["v"]), str(data["arr"][0]), "true"]


def test_a_real_classifier_run(tmp_path: Path) -> None:
    """breakhis (untrained, 32 pixels) through run_predictions: the CSV holds each head's probabilities."""
    from pipelines.breakhis.config import BreakhisConfig, BreakhisTrainOptions
    from pipelines.breakhis.train import BreakhisRun
    from pipelines.common.task import TrainOptions

    config = BreakhisConfig.load("tiny", overrides={"image_size": 32})
    opts = TrainOptions(tmp_path, tmp_path / "run", device="cpu", task=BreakhisTrainOptions(target="subtype"))
    ckpt = save_checkpoint(BreakhisRun(get_task("breakhis"), config, opts).untrained_checkpoint(), tmp_path / "b.pt")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (46, 70, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    (tmp_path / "c.png").write_bytes(b"not an image")
    paths.append(str(tmp_path / "c.png"))
    task = get_task("breakhis")
    predictor = task.load_predictor(load_checkpoint(ckpt), PredictOptions(device="cpu", batch_size=2))
    out = tmp_path / "out"
    run_predictions(predictor, task.collect_inputs(paths), out, task="breakhis", continue_on_error=True)
    rows = _assert_csv_matches_json(out)
    header, _ = _rows(out / "report.csv")
    assert {"binary.probabilities.malignant", "subtype.probabilities.PC", "subtype.prediction"} <= set(header)
    assert {"input_size.0", "input_size.1", "warnings"} <= set(header)
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert rows[2]["binary.probabilities.malignant"] == ""
