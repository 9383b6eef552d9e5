"""prostate prediction with an untrained checkpoint: inputs, geometry round trips, outputs, bad input."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from pipelines.common.checkpoint import load_checkpoint, save_checkpoint
from pipelines.common.io import read_volume
from pipelines.common.task import PredictOptions, get_task
from pipelines.prostate import synthetic
from pipelines.prostate.config import ProstateOptions
from pipelines.prostate.infer import ProstatePredictor, keep_largest_components
from pipelines.prostate.transforms import preprocess_transforms

TASK = get_task("prostate")


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three cases: RAS with DICOM, LPS, RAS (every case anisotropic)."""
    root = synthetic.generate(tmp_path_factory.mktemp("prostate_cases"), n=3, seed=7, dicom=False)
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(TASK.untrained_checkpoint("tiny", seed=0), tmp_path_factory.mktemp("ckpt") / "p.pt")


def _predictor(ckpt: Path, explain: bool = False, **opts: object) -> ProstatePredictor:
    options = PredictOptions(device="cpu", explain=explain, task=ProstateOptions.parse(opts))
    return ProstatePredictor(load_checkpoint(ckpt, task="prostate"), options)


def _predict_cli(inputs: list[str], out: Path, ckpt: Path, *extra: str) -> tuple[int, dict, str]:
    args = ["predict", "prostate", *inputs, "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--continue-on-error", *extra])
    report_path = out / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    return result.exit_code, report, result.output


def test_collect_inputs_finds_every_kind(cases: list[Path], tmp_path: Path) -> None:
    dicom = cases[0] / "dicom"
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(dicom.iterdir()):
            zf.write(f, f"series/{f.name}")
    loose = sorted(str(p) for p in dicom.glob("*.dcm"))
    collected = TASK.collect_inputs(
        [str(cases[0]), str(dicom), str(cases[1] / "t2.nii.gz"), str(archive), *loose, str(tmp_path / "missing")]
    )
    names = [(i.name, i.paths["t2"]) for i in collected.items]
    assert names == [
        (cases[0].name, cases[0] / "t2.nii.gz"),
        (cases[0].name, dicom),
        (cases[1].name, cases[1] / "t2.nii.gz"),
        ("series", archive),
        (cases[0].name, dicom),  # loose slices of one series: one item, the series
    ]
    assert [e.path for e in collected.errors] == [str(tmp_path / "missing")]
    # a folder of cases is searched; zones are never taken for an image
    every = TASK.collect_inputs([str(cases[0].parent)])
    assert [i.name for i in every.items] == [c.name for c in cases]
    assert all(i.paths["t2"].name == "t2.nii.gz" for i in every.items)
    empty = tmp_path / "empty"
    empty.mkdir()
    (bad,) = TASK.collect_inputs([str(empty)]).errors
    assert "holds no T2 volume" in bad.problem


def test_keep_largest_components() -> None:
    labels = np.zeros((10, 10, 3), dtype=np.uint8)
    labels[1:4, 1:4, :] = 1
    labels[7, 7, 1] = 1  # an island of PZ
    labels[5:9, 1:3, :] = 2
    out = keep_largest_components(labels, range(1, 5))
    assert out[7, 7, 1] == 0
    assert (out[1:4, 1:4, :] == 1).all()
    assert (out == 2).sum() == (labels == 2).sum()


@pytest.mark.parametrize(("index", "source"), [(0, "nifti"), (1, "nifti"), (0, "dicom"), (1, "nrrd")])
def test_known_zones_come_back_on_the_input_grid(
    index: int, source: str, cases: list[Path], checkpoint: Path, tmp_path: Path
) -> None:
    """An oracle: the reference zones through the preprocessing, as one-hot maps, inverted and decoded.

    Case 0 is RAS, case 1 LPS, both anisotropic; case 0's T2 is also a DICOM series, and case 1's is written
    as NRRD (SimpleITK) here.
    """
    case = cases[index]
    predictor = _predictor(checkpoint)
    path = {"nifti": case, "dicom": case / "dicom", "nrrd": _as_nrrd(case / "t2.nii.gz", tmp_path / "t2.nrrd")}
    (item,) = TASK.collect_inputs([str(path[source])]).items
    prepared = predictor.prepare(item)
    zones = read_volume(case / "zones.nii.gz")
    both = preprocess_transforms(predictor.cfg, with_label=True)(_as_pair(case))
    grid_label = torch.as_tensor(both["label"])[0].long()
    assert tuple(grid_label.shape) == tuple(prepared.data.shape[1:]) == predictor.cfg.roi_size
    one_hot = torch.nn.functional.one_hot(grid_label, 5).movedim(-1, 0).float()
    maps = torch.cat([one_hot, torch.zeros(1, *grid_label.shape)])  # fused zones, then no disagreement
    labels, restored = predictor.postprocess(prepared, maps)
    assert labels.shape == zones.shape
    assert restored.shape == (6, *zones.shape)
    for value in (1, 2, 4):  # PZ, TZ, AFS survive 2 mm resampling both ways
        a, b = labels == value, zones.array == value
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.8, (value, dice)


def _as_nrrd(nifti: Path, path: Path) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(path))
    return path


def _as_pair(case: Path) -> dict:
    from pipelines.prostate.transforms import LoadProstateCased

    return LoadProstateCased(with_label=True)({"t2": str(case / "t2.nii.gz"), "zones": str(case / "zones.nii.gz")})


def test_predict_writes_zone_map_volumes_and_explanations(cases: list[Path], checkpoint: Path, tmp_path: Path) -> None:
    code, report, output = _predict_cli([str(cases[1])], tmp_path, checkpoint, "--explain", "--overlay")
    assert code == 0, output
    (res,) = report["results"]
    assert res["status"] == "ok", res
    roles = {f["role"]: tmp_path / f["path"] for f in res["files"]}
    assert {"segmentation", "probabilities", "disagreement", "overlay", "result"} <= set(roles)
    assert "dicom_seg" not in roles  # NIfTI in, NIfTI out
    ref = nib.load(str(cases[1] / "t2.nii.gz"))
    for role in ("segmentation", "probabilities", "disagreement"):
        img = nib.load(str(roles[role]))
        assert img.shape[:3] == ref.shape, role
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    prob_files = res["outputs"]["files"]["probabilities"]
    assert list(prob_files) == ["PZ", "TZ", "DPU", "AFS"]
    probs = np.stack([np.asarray(nib.load(str(tmp_path / p)).dataobj) for p in prob_files.values()], axis=-1)
    assert probs.shape == (*ref.shape, 4)
    assert probs.min() >= 0
    assert probs.max() <= 1 + 1e-5
    gap = np.asarray(nib.load(str(roles["disagreement"])).dataobj)
    assert gap.min() >= 0
    assert gap.max() <= 1
    labels = np.asarray(nib.load(str(roles["segmentation"])).dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3, 4}
    out = res["outputs"]
    assert set(out["volumes_ml"]) == {"PZ", "TZ", "DPU", "AFS"}
    voxel_ml = float(np.prod(ref.header.get_zooms()[:3])) / 1000
    assert out["volumes_ml"]["PZ"] == pytest.approx((labels == 1).sum() * voxel_ml, abs=1e-3)
    assert out["labels"] == {"background": 0, "PZ": 1, "TZ": 2, "DPU": 3, "AFS": 4}


def test_largest_component_option(cases: list[Path], checkpoint: Path, tmp_path: Path) -> None:
    from scipy import ndimage

    counts = {}
    for flag in ("--largest-component", "--no-largest-component"):
        out = tmp_path / flag
        code, report, output = _predict_cli([str(cases[2])], out, checkpoint, flag)
        assert code == 0, output
        seg = next(f["path"] for f in report["results"][0]["files"] if f["role"] == "segmentation")
        labels = np.asarray(nib.load(str(out / seg)).dataobj)
        counts[flag] = max(ndimage.label(labels == v, structure=np.ones((3, 3, 3)))[1] for v in range(1, 5))
    assert counts["--largest-component"] <= 1
    assert counts["--no-largest-component"] >= counts["--largest-component"]


def _nifti(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 3.0, 1.0])), str(path))
    return str(path)


def test_bad_inputs_give_clear_errors(cases: list[Path], checkpoint: Path, tmp_path: Path) -> None:
    flat = _nifti(tmp_path / "flat.nii.gz", np.ones((64, 64), dtype=np.float32))
    series = _nifti(tmp_path / "dynamic.nii.gz", np.ones((32, 32, 8, 3), dtype=np.float32))
    nan = np.ones((32, 32, 8), dtype=np.float32)
    nan[3, 3, 3] = np.nan
    nans = _nifti(tmp_path / "nans.nii.gz", nan)
    corrupt = tmp_path / "corrupt_dicom"
    shutil.copytree(cases[0] / "dicom", corrupt)
    victim = sorted(corrupt.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:300])
    code, report, _ = _predict_cli([flat, series, nans, str(corrupt), str(cases[1])], tmp_path / "out", checkpoint)
    assert code == 1
    errors = {r["input"]: r["error"] for r in report["results"] if r["status"] == "error"}
    assert len(errors) == 4
    messages = list(errors.values())
    assert "flat.nii.gz" in messages[0]
    assert "2D" in messages[0]
    assert "dynamic.nii.gz" in messages[1]
    assert "4 dimensions" in messages[1]
    assert "nans.nii.gz" in messages[2]
    assert "NaN" in messages[2]
    assert "corrupt_dicom" in messages[3]
    assert victim.name in messages[3]
    assert report["counts"]["ok"] == 1  # the good case still ran
