"""Task options on the command line: flags from the task's typed model, ``--option KEY=VALUE``, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field
from typer.testing import CliRunner

from app.cli import app
from app.task_args import TaskArgsError, describe_options, flags_of, parse_task_args
from pipelines.common.config import ConfigError, TaskOptions


class Opts(TaskOptions):
    tta: bool = Field(False, description="flip")
    overlap: float = Field(0.5, ge=0, le=0.95, description="overlap")
    sw_batch_size: int = Field(4, ge=1, description="windows")
    labels: Literal["a", "b"] | None = Field(None, description="convention")


def parse(*tokens: str) -> tuple[dict, list[str]]:
    return parse_task_args(Opts, list(tokens), "task toy")


def test_flags_values_and_positional_tokens_are_split_in_order() -> None:
    values, rest = parse("case1", "--tta", "case2", "--overlap", "0.25", "--sw-batch-size=8", "--labels", "b", "c3")
    assert rest == ["case1", "case2", "c3"]
    assert values == {"tta": True, "overlap": "0.25", "sw_batch_size": "8", "labels": "b"}
    opts = Opts.parse(values)
    assert (opts.tta, opts.overlap, opts.sw_batch_size, opts.labels) == (True, 0.25, 8, "b")


def test_no_flags_option_pairs_and_none() -> None:
    values, _ = parse("--no-tta", "--option", "overlap=0.1", "--option=sw_batch_size=2", "--labels", "none")
    assert values == {"tta": False, "overlap": "0.1", "sw_batch_size": "2", "labels": None}
    assert Opts.parse(values).labels is None


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["--speed", "3"], "unknown option --speed for task toy"),
        (["--overlapp", "0.3"], "did you mean --overlap"),
        (["--option", "nope=1"], "unknown option --nope"),
        (["--option", "overlap"], "expected KEY=VALUE"),
        (["--overlap"], "--overlap needs a value"),
        (["--option"], "--option needs KEY=VALUE"),
    ],
)
def test_bad_flags_are_named(tokens: list[str], message: str) -> None:
    with pytest.raises(TaskArgsError, match=message):
        parse(*tokens)


def test_invalid_values_are_named_by_the_model() -> None:
    with pytest.raises(ConfigError, match="option 'overlap'"):
        Opts.parse({"overlap": "2"})
    with pytest.raises(ConfigError, match="option 'labels'"):
        Opts.parse({"labels": "c"})


def test_describe_lists_every_flag_with_help() -> None:
    rows = {r["name"]: r for r in describe_options(Opts)}
    assert rows["tta"]["flag"] == "--tta/--no-tta"
    assert rows["tta"]["help"] == "flip"
    assert rows["sw_batch_size"]["flag"] == "--sw-batch-size"
    assert rows["sw_batch_size"]["default"] == 4
    assert rows["labels"]["type"] == "a|b|none"
    assert rows["overlap"]["type"] == "number"
    assert set(flags_of(Opts)) == {"--tta", "--no-tta", "--overlap", "--sw-batch-size", "--labels"}


def test_cli_unknown_or_invalid_task_option_exits_2_naming_it(tmp_path: Path, brats_random_checkpoint: Path) -> None:
    runner = CliRunner()
    base = [
        "predict",
        "brats",
        str(tmp_path),
        "-o",
        str(tmp_path / "out"),
        "--checkpoint",
        str(brats_random_checkpoint),
    ]
    unknown = runner.invoke(app, [*base, "--sampling-rate", "100"])
    assert unknown.exit_code == 2
    assert "unknown option --sampling-rate for task brats" in unknown.output
    invalid = runner.invoke(app, [*base, "--overlap", "3"])
    assert invalid.exit_code == 2
    assert "option 'overlap'" in invalid.output
    bad_pair = runner.invoke(app, [*base, "--option", "labels=brats2015"])
    assert bad_pair.exit_code == 2
    assert "option 'labels'" in bad_pair.output
    train = runner.invoke(app, ["train", "brats", "--data", str(tmp_path), "-o", str(tmp_path), "--stage", "joint"])
    assert train.exit_code == 2
    assert "unknown option --stage for task brats" in train.output
    assert "--all-cases" in train.output  # the task's own training flags are listed


def test_models_lists_heads_and_options() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    tasks = {t["task"]: t for t in json.loads(result.output)["tasks"]}
    brats = tasks["brats"]
    assert brats["contract"]["heads"] == [{"name": "regions", "labels": ["WT", "TC", "ET"], "activation": "multilevel"}]
    assert {f["name"] for f in brats["option_flags"]} == {
        "tta",
        "overlap",
        "sw_batch_size",
        "overlay",
        "dicom_seg",
        "labels",
    }
    assert {f["name"] for f in brats["train_option_flags"]} == {"all_cases"}
    assert {f["name"] for f in tasks["ecg"]["option_flags"]} == {
        "sampling_rate",
        "signal_unit",
        "explain_labels",
        "pictures",
    }
    branches = tasks["ecg"]["branches"]
    assert {k: len(v) for k, v in branches.items()} == {"rhythm": 16, "morphology": 52, "diffuse": 3}
    text = CliRunner().invoke(app, ["models"]).output
    assert "--sw-batch-size" in text
    assert "predict options:" in text
    assert "head statements (sigmoid)" in text
