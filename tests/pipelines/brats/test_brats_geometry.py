"""Predictions land in exactly the input's grid: RAS, LPS, anisotropic, oblique NIfTI and DICOM series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipelines.brats import synthetic
from pipelines.brats.config import BratsConfig, BratsOptions
from pipelines.brats.infer import BratsPredictor
from pipelines.brats.transforms import MODALITIES, NAMING_2023
from pipelines.common.checkpoint import Checkpoint, load_checkpoint, make_provenance
from pipelines.common.io import read_volume
from pipelines.common.task import InputItem, PredictOptions, get_task

KINDS = ["ras", "lps", "aniso", "oblique"]


@pytest.fixture(scope="module")
def geometry_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = synthetic.generate(tmp_path_factory.mktemp("geom"), n=4, seed=3, spacing=4.0)
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    return dict(zip(KINDS, cases, strict=True))


def _item(case: Path) -> InputItem:
    collected = get_task("brats").collect_inputs([str(case)])
    assert len(collected.items) == 1
    assert not collected.errors
    return collected.items[0]


def _predictor(ckpt_path: Path, explain: bool = False, **opts: object) -> BratsPredictor:
    options = PredictOptions(device="cpu", explain=explain, task=BratsOptions.parse(opts))
    return BratsPredictor(load_checkpoint(ckpt_path, task="brats"), options)


def test_synthetic_geometry_kinds(geometry_cases: dict[str, Path]) -> None:
    codes = {k: nib.aff2axcodes(nib.load(str(next(c.glob("*_t1.nii.gz")))).affine) for k, c in geometry_cases.items()}
    assert codes["ras"] == ("R", "A", "S")
    assert codes["lps"] == ("L", "P", "S")
    aniso = nib.load(str(next(geometry_cases["aniso"].glob("*_t1.nii.gz"))))
    zooms = aniso.header.get_zooms()
    assert zooms[2] > 2 * zooms[0]
    oblique = nib.load(str(next(geometry_cases["oblique"].glob("*_t1.nii.gz")))).affine[:3, :3]
    off_diagonal = oblique - np.diag(np.diag(oblique))
    assert np.abs(off_diagonal).max() > 0.5, "the oblique case has a rotated affine"


@pytest.mark.parametrize("kind", KINDS)
def test_prediction_has_input_shape_and_affine(
    kind: str, geometry_cases: dict[str, Path], brats_random_checkpoint: Path, tmp_path: Path
) -> None:
    predictor = _predictor(brats_random_checkpoint, overlay=True, explain=True)
    item = _item(geometry_cases[kind])
    prep = predictor.prepare(item)
    result = predictor.finish(prep, predictor.run([prep])[0], tmp_path).data
    ref = nib.load(str(item.paths["t1"]))
    out = nib.load(str(tmp_path / result["files"]["segmentation"]))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
    assert int(out.header["sform_code"]) == int(ref.header["sform_code"])
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert list(result["files"]["probabilities"]) == ["WT", "TC", "ET"]
    for name in result["files"]["probabilities"].values():
        probs = nib.load(str(tmp_path / name))
        assert probs.shape == ref.shape
        np.testing.assert_allclose(probs.affine, ref.affine, atol=1e-5)
    assert (tmp_path / result["files"]["overlay"]).stat().st_size > 1000


@pytest.mark.parametrize("kind", KINDS)
def test_inversion_is_exact_without_resampling(
    kind: str, geometry_cases: dict[str, Path], brats_random_checkpoint: Path
) -> None:
    """Send the preprocessed FLAIR back through the inversion: it must equal the z-scored input voxel for voxel."""
    ckpt = load_checkpoint(brats_random_checkpoint, task="brats")
    cfg = dict(ckpt.config, target_spacing=None)
    predictor = BratsPredictor(Checkpoint(**{**ckpt.__dict__, "config": cfg}), PredictOptions(device="cpu"))
    item = _item(geometry_cases[kind])
    prep = predictor.prepare(item)
    flair_pre = torch.as_tensor(prep.data)[3:4]
    _, restored = predictor.postprocess(prep, flair_pre)
    raw = read_volume(item.paths["flair"]).array
    mask = raw != 0
    expected = np.zeros_like(raw)
    expected[mask] = (raw[mask] - raw[mask].mean()) / raw[mask].std()
    np.testing.assert_allclose(restored[0], expected, atol=1e-4)


def test_inversion_with_resampling_tracks_the_input(
    geometry_cases: dict[str, Path], brats_random_checkpoint: Path
) -> None:
    predictor = _predictor(brats_random_checkpoint)
    item = _item(geometry_cases["oblique"])
    prep = predictor.prepare(item)
    _, restored = predictor.postprocess(prep, torch.as_tensor(prep.data)[3:4])
    raw = read_volume(item.paths["flair"]).array
    mask = raw != 0
    corr = np.corrcoef(restored[0][mask], raw[mask])[0, 1]
    assert corr > 0.9


def test_dicom_series_prediction_keeps_series_geometry(
    brats_heldout_data: Path, brats_random_checkpoint: Path, tmp_path: Path
) -> None:
    case = sorted(p for p in brats_heldout_data.iterdir() if p.is_dir())[1]
    dicom_dir = case / "dicom"
    items = get_task("brats").collect_inputs([str(dicom_dir)]).items
    assert len(items) == 1
    assert set(items[0].paths) == set(MODALITIES)
    predictor = _predictor(brats_random_checkpoint)
    prep = predictor.prepare(items[0])
    result = predictor.finish(prep, predictor.run([prep])[0], tmp_path).data
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom_dir / "t1")))
    series = reader.Execute()
    out = sitk.ReadImage(str(tmp_path / result["files"]["segmentation"]))
    assert out.GetSize() == series.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), series.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(out.GetOrigin(), series.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(out.GetDirection(), series.GetDirection(), atol=1e-5)
    # and the DICOM series holds the same voxels as the NIfTI it was written from
    nifti = read_volume(next(case.glob("*_t1.nii.gz")))
    dicom = read_volume(dicom_dir / "t1")
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-3)
    np.testing.assert_allclose(dicom.array, np.round(nifti.array), atol=0.5)


@pytest.mark.parametrize(("convention", "expected"), [("brats2018", [0, 2, 1, 4]), ("brats2023", [0, 2, 1, 3])])
def test_label_conventions_and_volumes(
    convention: str, expected: list[int], geometry_cases: dict[str, Path], brats_random_checkpoint: Path, tmp_path: Path
) -> None:
    predictor = _predictor(brats_random_checkpoint, labels=convention)
    prep = predictor.prepare(_item(geometry_cases["aniso"]))
    ref = prep.context["ref"]
    levels = np.zeros(ref.shape, dtype=np.uint8)
    levels[:10, :10, :2] = 1  # 200 edema voxels
    levels[:5, :5, :2] = 2  # 50 of them necrotic core
    levels[:2, :2, :2] = 3  # 8 of those enhancing
    maps = np.zeros((4, *ref.shape), np.float32)
    result = predictor.write_outputs(prep, predictor.labels_from_levels(levels, prep), maps, tmp_path).data
    written = np.asarray(nib.load(str(tmp_path / result["files"]["segmentation"])).dataobj)
    for level, value in enumerate(expected):
        assert (written[levels == level] == value).all()
    vox = ref.voxel_volume_ml
    assert result["volumes_ml"] == pytest.approx({"WT": 200 * vox, "TC": 50 * vox, "ET": 8 * vox}, abs=1e-3)
    assert result["label_convention"] == convention


def test_2023_naming_gives_2023_labels(brats_random_checkpoint: Path, tmp_path: Path) -> None:
    root = synthetic.generate(tmp_path / "data", n=1, seed=5, naming=NAMING_2023, spacing=4.0)
    case = next(p for p in root.iterdir() if p.is_dir())
    assert (case / f"{case.name}-t2f.nii.gz").is_file()
    predictor = _predictor(brats_random_checkpoint)
    prep = predictor.prepare(_item(case))
    assert prep.context["convention"] == NAMING_2023
    levels = np.full(prep.context["ref"].shape, 3, np.uint8)
    labels = predictor.labels_from_levels(levels, prep)
    result = predictor.write_outputs(prep, labels, np.zeros((4, *levels.shape), np.float32), tmp_path).data
    assert np.unique(np.asarray(nib.load(str(tmp_path / result["files"]["segmentation"])).dataobj)).tolist() == [3]


def test_unknown_label_convention_is_rejected(brats_random_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="option 'labels'"):
        _predictor(brats_random_checkpoint, labels="brats2015")


def test_random_checkpoint_fixture_is_a_brats_checkpoint(brats_random_checkpoint: Path) -> None:
    ckpt = load_checkpoint(brats_random_checkpoint)
    assert ckpt.task == "brats"
    assert BratsConfig.load("tiny").roi_size == tuple(ckpt.config["roi_size"])
    assert make_provenance("x", "y", 1)["seed"] == 1


def test_mirror_tta_makes_symmetric_inputs_give_symmetric_maps(brats_random_checkpoint: Path) -> None:
    """TTA averages all 8 mirrorings, so an input symmetric under a flip gets maps symmetric under it."""
    torch.manual_seed(0)
    a = torch.randn(4, 32, 32, 32)
    x = (a + torch.flip(a, (1,))) / 2  # symmetric along the first spatial axis; one window of 32³
    plain = _predictor(brats_random_checkpoint).infer_maps(x)
    tta = _predictor(brats_random_checkpoint, tta=True).infer_maps(x)
    assert not torch.allclose(plain, torch.flip(plain, (1,)), atol=1e-4), "a random network is not symmetric"
    assert torch.allclose(tta, torch.flip(tta, (1,)), atol=1e-5)
