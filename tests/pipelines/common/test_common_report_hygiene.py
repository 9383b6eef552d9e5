"""Result hygiene of the shared prediction path: CSV cells never start a spreadsheet formula, NaN never reaches
JSON (a non-finite result is an error, not "ok"), and inputs of the same name never overwrite each other's files."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from app.cli import app
from pipelines.breakhis.config import BreakhisConfig, BreakhisTrainOptions
from pipelines.breakhis.train import BreakhisRun
from pipelines.common.checkpoint import Checkpoint, save_checkpoint
from pipelines.common.classification import evaluate_multiclass, evaluate_multilabel
from pipelines.common.csvsafe import SafeDictWriter, safe_cell, safe_writer
from pipelines.common.errors import InputError
from pipelines.common.predict import (
    REPORT_COLUMNS,
    ItemResult,
    Report,
    non_finite,
    run_predictions,
    unique_names,
)
from pipelines.common.task import InputItem, ItemOutput, PredictOptions, Predictor, Prepared, TrainOptions, get_task

HOSTILE = ['=HYPERLINK("x")', "+cmd", "@SUM(1)", "-2+3"]  # file names: no "/" in a name


def _strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity (as browsers and most JSON parsers do)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


# -- the cell rule ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+cmd", "'+cmd"),
        ("@SUM(1)", "'@SUM(1)"),
        ("-2+3", "'-2+3"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-inf", "'-inf"),
        ("-0.5", "-0.5"),
        ("-0.500000", "-0.500000"),
        ("+1e-3", "+1e-3"),
        ("-.5", "-.5"),
        ("plain", "plain"),
        ("a=b", "a=b"),
        (-0.5, -0.5),
        (-3, -3),
        (np.float32(-0.25), np.float32(-0.25)),
        (True, True),
        (None, None),
    ],
)
def test_safe_cell_neutralises_formulas_and_keeps_numbers(value: Any, expected: Any) -> None:
    assert safe_cell(value) == expected
    assert type(safe_cell(value)) is type(expected)


def test_safe_writers_route_every_cell(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = safe_writer(fh)
        w.writerow(["=h", "-1.5", -2.0])
        w.writerows([["@a", 1]])
        d = SafeDictWriter(fh, fieldnames=["=col", "v"])
        d.writeheader()
        d.writerow({"=col": "+x", "v": -1})
        with pytest.raises(ValueError, match="other"):
            d.writerow({"other": 1})
    assert _rows(path) == [["'=h", "-1.5", "-2.0"], ["'@a", "1"], ["'=col", "v"], ["'+x", "-1"]]


# -- report.csv / report.json -------------------------------------------------------------------------------
class Minus(Predictor):
    """Reads a number from a text file and returns ``-x - 0.5`` (negative numbers in the outputs)."""

    def __init__(self) -> None:  # an analytic model: no checkpoint to build
        self.max_batch = 2
        self.options = PredictOptions()
        self.checkpoint = Checkpoint("toy", "toy", {}, {}, [])

    def prepare(self, item: InputItem) -> Prepared:
        path = item.paths["x"]
        try:
            return Prepared(item, float(path.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise InputError(path, "is not a number") from exc

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        return [-p.data - 0.5 for p in batch]

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path) -> ItemOutput:
        path = out_dir / f"{prepared.item.name}.txt"
        path.write_text(f"{prepared.item.paths['x']}\n{raw}", encoding="utf-8")
        output = ItemOutput({"y": raw})
        output.add("result", path, out_dir)
        return output


def test_report_csv_cells_cannot_start_a_formula(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative inputs: the input cell starts with the file's own name
    items = []
    for i, name in enumerate(HOSTILE):
        Path(f"{name}.txt").write_text("x" if i == 0 else str(i), encoding="utf-8")
        items.append(InputItem(name, {"x": Path(f"{name}.txt")}))
    report = run_predictions(Minus(), items, Path("out"), task="toy", continue_on_error=True)
    assert [r.status for r in report.results] == ["error", "ok", "ok", "ok"]
    header, *rows = _rows(Path("out") / "report.csv")
    assert header == [*REPORT_COLUMNS, "source.x", "y"]
    col = {c: i for i, c in enumerate(header)}
    for name, row in zip(HOSTILE, rows, strict=True):
        assert row[col["input"]] == f"'{name}.txt"
        assert row[col["name"]] == f"'{name}"
        assert row[col["source.x"]] == f"'{name}.txt"
        float(row[col["seconds"]])  # a number, left alone
    assert rows[0][col["error"]] == f"'{HOSTILE[0]}.txt: is not a number"
    assert rows[1][col["y"]] == "-1.5"  # a negative number stays a number
    data = _strict_json((Path("out") / "report.json").read_text(encoding="utf-8"))
    assert [r["name"] for r in data["results"]] == HOSTILE  # JSON keeps the names as they are
    assert data["results"][3]["outputs"] == {"y": -3.5}


# -- NaN never reaches JSON ---------------------------------------------------------------------------------
def test_non_finite_finds_the_first_bad_number() -> None:
    assert non_finite({"a": [1.0, 2], "b": {"c": "x"}}) is None
    assert non_finite({"a": [1.0, float("nan")]}) == ("a[1]", "NaN")
    assert non_finite({"p": {"B": np.float32("inf")}}) == ("p.B", "inf")
    assert non_finite({"m": np.array([[0.0, 1.0], [np.nan, 0.0]])}) == ("m[1, 0]", "NaN")
    assert non_finite({"ints": np.arange(3)}) is None


def test_an_ok_result_with_nan_becomes_an_error() -> None:
    r = ItemResult(
        "scan.png",
        "ok",
        outputs={"probabilities": {"a": float("nan"), "b": 0.5}},
        seconds=math.nan,
        timings={"read": math.inf, "infer": 0.25},
    )
    assert r.status == "error"
    assert r.error == "scan.png: model output is not finite (NaN at probabilities.a); no result for this input"
    assert r.outputs == {}
    as_json = _strict_json(json.dumps(r.to_dict(), allow_nan=False))
    assert as_json["seconds"] == 0.0
    assert as_json["timings"] == {"infer": 0.25}
    failed = ItemResult("x.png", "error", outputs={"v": [np.float32("-inf")]}, error="x.png: broke")
    assert failed.error == "x.png: broke"
    assert failed.outputs == {}
    fine = ItemResult("y.png", "ok", outputs={"v": [-0.5, 1]})
    assert fine.status == "ok"


def test_a_slipped_nan_fails_the_report_loudly(tmp_path: Path) -> None:
    r = ItemResult("a.png", "ok", outputs={"p": 0.5})
    r.outputs["p"] = float("nan")  # changed after the check: writing must not produce invalid JSON
    with pytest.raises(ValueError, match="not JSON compliant"):
        Report("toy", "", [r]).write(tmp_path)


# -- the classification family, with a real (untrained, 32-pixel) breakhis model ----------------------------
@pytest.fixture(scope="module")
def breakhis_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("hygiene_breakhis")
    config = BreakhisConfig.load("tiny", overrides={"image_size": 32})
    opts = TrainOptions(work, work / "run", device="cpu", task=BreakhisTrainOptions(target="binary"))
    return save_checkpoint(BreakhisRun(get_task("breakhis"), config, opts).untrained_checkpoint(), work / "b.pt")


def _images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        Image.fromarray(rng.integers(0, 255, (46, 70, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        out.append(folder / f"{name}.png")
    return out


def _breakhis_predictor(ckpt: Path, batch_size: int = 1) -> Any:
    from pipelines.common.checkpoint import load_checkpoint

    task = get_task("breakhis")
    return task.load_predictor(load_checkpoint(ckpt), PredictOptions(device="cpu", batch_size=batch_size))


def test_predictions_csv_cells_cannot_start_a_formula(
    breakhis_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _images(Path("in"), HOSTILE)
    task = get_task("breakhis")
    collected = task.collect_inputs([f"in/{n}.png" for n in HOSTILE])
    report = run_predictions(_breakhis_predictor(breakhis_ckpt, 4), collected, Path("out"), task="breakhis")
    assert report.ok
    header, *rows = _rows(Path("out") / "predictions.csv")
    assert header == ["image", "benign", "malignant", "prediction"]
    assert [row[0] for row in rows] == [f"'{n}" for n in HOSTILE]
    for row in rows:
        assert sum(float(v) for v in row[1:3]) == pytest.approx(1.0, abs=1e-5)
        assert row[3] in ("benign", "malignant")
    report_rows = _rows(Path("out") / "report.csv")[1:]
    assert [[r[0], r[4]] for r in report_rows] == [[f"in/{n}.png", f"'{n}"] for n in HOSTILE]  # input, name
    for name in HOSTILE:  # the per-input JSON keeps the real name
        assert json.loads((Path("out") / f"{name}.json").read_text(encoding="utf-8"))["image"] == name


class NaNOnce(torch.nn.Module):
    """Wraps a model; its ``n``-th call returns NaN logits."""

    def __init__(self, model: torch.nn.Module, n: int) -> None:
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.model(x)
        return torch.full_like(out, math.nan) if self.calls == self.n else out


def test_nan_logits_make_that_input_an_error(breakhis_ckpt: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "in", ["a", "b", "c"])
    predictor = _breakhis_predictor(breakhis_ckpt)
    predictor.model = NaNOnce(predictor.model, 2)
    collected = get_task("breakhis").collect_inputs([str(p) for p in images])
    out = tmp_path / "out"
    report = run_predictions(predictor, collected, out, task="breakhis", continue_on_error=True)
    assert [r.status for r in report.results] == ["ok", "error", "ok"]
    error = report.results[1].error or ""
    assert error.startswith(f"{images[1]}: model output is not finite (NaN in 2 of 2 probabilities")
    data = _strict_json((out / "report.json").read_text(encoding="utf-8"))
    assert data["counts"] == {"ok": 2, "error": 1, "skipped": 0}
    assert data["results"][1]["outputs"] == {}
    assert not (out / "b.json").exists()  # nothing written for it
    assert [row[0] for row in _rows(out / "predictions.csv")[1:]] == ["a", "c"]
    # without --continue-on-error the run stops there
    predictor.model.calls = 0
    stopped = run_predictions(predictor, collected, tmp_path / "stop", task="breakhis")
    assert [r.status for r in stopped.results] == ["ok", "error", "skipped"]


def test_evaluation_csvs_neutralise_ids_and_labels(tmp_path: Path) -> None:
    labels = ["=cmd", "ok"]
    ids = ["@rec", "-5"]
    y = np.array([[1, 0], [0, 1]], dtype=np.float32)
    p = np.array([[0.9, 0.2], [0.1, 0.8]])
    evaluate_multilabel(y, p, np.full(2, 0.5), labels, ids, tmp_path / "ml", id_column="+id")
    assert _rows(tmp_path / "ml" / "predictions.csv") == [
        ["'+id", "'=cmd", "ok"],
        ["'@rec", "0.90000", "0.20000"],
        ["-5", "0.10000", "0.80000"],
    ]
    assert _rows(tmp_path / "ml" / "per_class.csv")[1][0] == "'=cmd"
    evaluate_multiclass(np.array([0, 1]), p, labels, ["-x", "-1"], tmp_path / "mc", id_column="image")
    assert [r[:3] for r in _rows(tmp_path / "mc" / "predictions.csv")] == [
        ["image", "true", "predicted"],
        ["'-x", "'=cmd", "'=cmd"],
        ["-1", "ok", "ok"],
    ]
    assert _rows(tmp_path / "mc" / "per_class.csv")[1][0] == "'=cmd"
    assert _rows(tmp_path / "mc" / "confusion_matrix.csv")[0] == ["true \\ predicted", "'=cmd", "ok"]


# -- unique output names ------------------------------------------------------------------------------------
def test_unique_names_are_deterministic_by_input_order() -> None:
    names = ["case", "case", "Case", "case-2", "report", "other"]
    items = [InputItem(n, {"x": Path(f"{i}/{n}.txt")}) for i, n in enumerate(names)]
    renamed = unique_names(items, reserved=("report",))
    assert [it.name for it in renamed] == ["case", "case-3", "Case-4", "case-2", "report-2", "other"]
    assert [it.paths for it in renamed] == [it.paths for it in items]  # only the name changes
    assert unique_names(items[-1:]) == items[-1:]


def test_same_names_never_overwrite_in_run_predictions(tmp_path: Path) -> None:
    items = []
    for i, folder in enumerate(["a", "b", "c"]):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "case.txt"
        path.write_text(str(i), encoding="utf-8")
        items.append(InputItem("case", {"x": path}))
    (tmp_path / "report.txt").write_text("7", encoding="utf-8")
    items.append(InputItem("report", {"x": tmp_path / "report.txt"}))
    out = tmp_path / "out"
    report = run_predictions(Minus(), items, out, task="toy")
    assert [r.name for r in report.results] == ["case", "case-2", "case-3", "report-2"]
    for r, item in zip(report.results, items, strict=True):
        assert r.source == {"x": str(item.paths["x"])}
        (written,) = [f.path for f in r.files]
        assert written == f"{r.name}.txt"
        assert (out / written).read_text(encoding="utf-8").splitlines()[0] == str(item.paths["x"])
    data = _strict_json((out / "report.json").read_text(encoding="utf-8"))
    assert [r["source"]["x"] for r in data["results"]] == [str(it.paths["x"]) for it in items]
    assert data["counts"]["ok"] == 4  # report.json is the run's, not the input called "report"


def test_two_cases_of_the_same_name_through_the_cli(tmp_path: Path) -> None:
    """Two ``<site>/<case>`` NIfTI folders and two ``<site>/<case>/dicom`` series of the same case names."""
    task = get_task("prostate")
    ckpt = save_checkpoint(task.untrained_checkpoint(), tmp_path / "prostate.pt")
    inputs: list[str] = []
    for site, seed in (("siteA", 3), ("siteB", 4)):
        made = task.example_inputs(tmp_path / "synth" / site, 2, seed=seed)  # a NIfTI case, a <case>/dicom
        for name, raw in zip(("caseN", "caseD"), made, strict=True):  # different data, the same case names
            case = Path(raw) if Path(raw).name != "dicom" else Path(raw).parent
            shutil.copytree(case, tmp_path / site / name)
            inputs.append(str(tmp_path / site / name / Path(raw).relative_to(case)))
    out = tmp_path / "out"
    args = ["predict", "prostate", *inputs, "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = _strict_json((out / "report.json").read_text(encoding="utf-8"))
    names = [r["name"] for r in data["results"]]
    assert names == ["caseN", "caseD", "caseN-2", "caseD-2"]
    written = [f["path"] for r in data["results"] for f in r["files"]]
    assert len(written) == len(set(written))
    for res, given in zip(data["results"], inputs, strict=True):
        assert Path(res["source"]["t2"]).is_relative_to(given)  # the report says which input each came from
        (result_file,) = [f["path"] for f in res["files"] if f["role"] == "result"]
        assert result_file == f"{res['name']}.json"
        assert _strict_json((out / result_file).read_text(encoding="utf-8")) == res["outputs"]
        assert res["outputs"]["case"] == res["name"]
    seg = [f["path"] for r in data["results"] for f in r["files"] if f["role"] == "dicom_seg"]
    assert len(seg) == 2
    header, *rows = _rows(out / "report.csv")
    csv_sources = [row[header.index("source.t2")] for row in rows]
    assert csv_sources == [r["source"]["t2"] for r in data["results"]]
