"""Bad inputs give a clear error naming the file; grouping of user paths into cases."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import app
from pipelines.brats import synthetic
from pipelines.brats.infer import BratsPredictor
from pipelines.common.checkpoint import load_checkpoint
from pipelines.common.errors import InputError
from pipelines.common.task import PredictOptions, get_task


@pytest.fixture(scope="module")
def good_cases(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = synthetic.generate(tmp_path_factory.mktemp("inputs"), n=3, seed=11, spacing=4.5)
    return sorted(p for p in root.iterdir() if p.is_dir())


def _copy_case(case: Path, dst: Path) -> Path:
    target = dst / case.name
    shutil.copytree(case, target)
    return target


def _file(case: Path, role: str) -> Path:
    return next(case.glob(f"*_{role}.nii.gz"))


def _break_missing(case: Path) -> Path:
    _file(case, "flair").unlink()
    return case


def _break_shape(case: Path) -> Path:
    f = _file(case, "t2")
    img = nib.load(str(f))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), str(f))
    return f


def _break_gzip(case: Path) -> Path:
    f = _file(case, "t1ce")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return f


def _break_2d(case: Path) -> Path:
    f = _file(case, "t1")
    nib.save(nib.Nifti1Image(np.ones((40, 40), np.float32), np.eye(4)), str(f))
    return f


def _break_nan(case: Path) -> Path:
    f = _file(case, "flair")
    img = nib.load(str(f))
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), str(f))
    return f


def _break_empty(case: Path) -> Path:
    f = _file(case, "t2")
    f.write_bytes(b"")
    return f


def _break_garbage(case: Path) -> Path:
    f = _file(case, "t1")
    f.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    return f


def _break_huge_header(case: Path) -> Path:
    f = _file(case, "t1")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 4096))
    hdr.set_data_dtype(np.float32)
    f.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000))
    return f


BREAKERS = {
    "missing modality": (_break_missing, "missing modality flair"),
    "different shapes": (_break_shape, "differs from"),
    "corrupt gzip": (_break_gzip, "truncated or corrupt"),
    "2D image": (_break_2d, "2D image"),
    "NaN": (_break_nan, "NaN"),
    "empty file": (_break_empty, "empty"),
    "not NIfTI": (_break_garbage, "not a readable NIfTI"),
    "huge header": (_break_huge_header, "more than the limit"),
}


@pytest.mark.parametrize("kind", sorted(BREAKERS))
def test_bad_case_names_the_file(
    kind: str, good_cases: list[Path], brats_random_checkpoint: Path, tmp_path: Path
) -> None:
    breaker, message = BREAKERS[kind]
    case = _copy_case(good_cases[0], tmp_path)
    culprit = breaker(case)
    predictor = BratsPredictor(load_checkpoint(brats_random_checkpoint), PredictOptions(device="cpu"))
    (item,) = get_task("brats").collect_inputs([str(case)]).items
    with pytest.raises(InputError) as exc:
        predictor.prepare(item)
    assert message in str(exc.value)
    assert str(culprit) in str(exc.value) or culprit.name in str(exc.value)


def test_continue_on_error_finishes_the_others(
    good_cases: list[Path], brats_random_checkpoint: Path, tmp_path: Path
) -> None:
    broken = _copy_case(good_cases[0], tmp_path / "in")
    culprit = _break_gzip(broken)
    out = tmp_path / "out"
    args = ["predict", "brats", str(broken), str(good_cases[1]), str(good_cases[2])]
    args += ["-o", str(out), "--checkpoint", str(brats_random_checkpoint), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--continue-on-error"])
    assert result.exit_code == 1, result.output
    import json

    report = json.loads((out / "report.json").read_text())
    statuses = [r["status"] for r in report["results"]]
    assert statuses == ["error", "ok", "ok"]
    assert culprit.name in report["results"][0]["error"]
    assert (out / f"{good_cases[1].name}_pred.nii.gz").is_file()
    assert (out / f"{good_cases[2].name}_pred.nii.gz").is_file()

    # without --continue-on-error the run stops at the first failure and marks the rest skipped
    out2 = tmp_path / "out2"
    args2 = [a if a != str(out) else str(out2) for a in args]
    result = CliRunner().invoke(app, args2)
    assert result.exit_code == 1
    report = json.loads((out2 / "report.json").read_text())
    assert [r["status"] for r in report["results"]] == ["error", "skipped", "skipped"]


def test_grouping_files_folders_and_roles(good_cases: list[Path], tmp_path: Path) -> None:
    task = get_task("brats")
    case = good_cases[0]
    files = [str(p) for p in sorted(case.glob("*.nii.gz"))]
    (by_files,) = task.collect_inputs(files).items
    assert set(by_files.paths) == {"t1", "t1ce", "t2", "flair"}, "the seg file is not an input"
    (by_folder,) = task.collect_inputs([str(case)]).items
    assert by_folder.paths == by_files.paths
    assert by_folder.name == case.name
    roles = [f"t1={_file(case, 't1')}", f"T1CE={_file(case, 't1ce')}", f"t2w={_file(case, 't2')}"]
    (explicit,) = task.collect_inputs([*roles, f"flair={_file(case, 'flair')}"]).items
    assert explicit.paths == by_files.paths
    many = task.collect_inputs([str(case.parent)]).items
    assert sorted(i.name for i in many) == sorted(c.name for c in good_cases)
    globbed = task.collect_inputs([str(case.parent / "*" / "*_t1.nii.gz")]).items
    assert len(globbed) == 3
    assert all(set(i.paths) == {"t1"} for i in globbed)
    (unknown,) = task.collect_inputs([f"pd={_file(case, 't1')}"]).errors
    assert "unknown modality 'pd'" in str(unknown)


def test_nonexistent_and_unnamed_inputs_are_grouping_errors(tmp_path: Path) -> None:
    task = get_task("brats")
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    (tmp_path / "empty").mkdir()
    collected = task.collect_inputs([str(tmp_path / "missing_case"), str(stray), str(tmp_path / "empty")])
    assert collected.items == []
    messages = [str(e) for e in collected.errors]
    assert len(messages) == 3
    assert any("empty" in m and "is not a BraTS case" in m for m in messages)
    assert any("missing_case" in m and "does not exist" in m for m in messages)
    assert any("notes.txt" in m and "cannot tell which modality" in m for m in messages)


def test_cli_usage_errors_exit_2(tmp_path: Path, brats_random_checkpoint: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["predict", "bratz", "x", "-o", str(tmp_path)]).exit_code == 2
    no_ckpt = runner.invoke(app, ["predict", "brats", "x", "-o", str(tmp_path)])
    assert no_ckpt.exit_code == 2
    assert "medinfer demo" in no_ckpt.output
    wrong = runner.invoke(app, ["predict", "brats", "x", "-o", str(tmp_path), "--checkpoint", str(tmp_path / "no.pt")])
    assert wrong.exit_code == 2
    assert "not found" in wrong.output
    assert runner.invoke(app, ["train", "brats", "--data", str(tmp_path / "nope"), "-o", str(tmp_path)]).exit_code == 2
    bad_preset = runner.invoke(
        app, ["train", "brats", "--data", str(tmp_path), "-o", str(tmp_path), "--preset", "huge"]
    )
    assert bad_preset.exit_code == 2
    assert "preset" in bad_preset.output
