"""Inputs that are wrong but readable are refused by name, never answered with a tumour volume: the same image
given for two modalities, a constant modality, a CT series among the MRI; results carry the input's geometry
and none of its header's free text."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipelines.brats.infer import BratsPredictor
from pipelines.brats.transforms import MODALITIES
from pipelines.common.checkpoint import load_checkpoint
from pipelines.common.dicom import write_dicom_series
from pipelines.common.errors import InputError
from pipelines.common.task import InputItem, PredictOptions

AFFINE = np.diag([-2.0, -2.0, 2.5, 1.0])
PLANTED = b"DOE^JANE MRN123456"


def modality(seed: int, shape: tuple[int, int, int] = (16, 16, 12)) -> np.ndarray:
    """A skull-stripped-looking MR channel: a bright ellipsoid with its own texture, zero outside."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    return np.where(brain, 200 + 100 * seed + rng.uniform(0, 80, shape), 0).astype(np.float32)


def write_case(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, m in enumerate(MODALITIES):
        img = nib.Nifti1Image(modality(i), AFFINE)
        img.header["descrip"] = PLANTED
        img.header["db_name"] = PLANTED[:17]
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, PLANTED))
        paths[m] = folder / f"case_{m}.nii.gz"
        nib.save(img, str(paths[m]))
    return paths


@pytest.fixture
def predictor(brats_random_checkpoint: Path) -> BratsPredictor:
    options = PredictOptions(device="cpu", explain=True)
    return BratsPredictor(load_checkpoint(brats_random_checkpoint, task="brats"), options)


def test_a_good_case_gives_outputs_without_warnings_or_the_inputs_header_text(
    predictor: BratsPredictor, tmp_path: Path
) -> None:
    paths = write_case(tmp_path / "case")
    prep = predictor.prepare(InputItem("case", paths))
    result = predictor.finish(prep, predictor.run([prep])[0], tmp_path / "out").data
    assert "warnings" not in result
    src = nib.load(str(paths["t1"]))
    assert isinstance(src, nib.Nifti1Image)
    for name in (result["files"]["segmentation"], *result["files"]["probabilities"].values()):
        path = tmp_path / "out" / name
        assert PLANTED[:8] not in gzip.decompress(path.read_bytes())
        out = nib.load(str(path))
        assert isinstance(out, nib.Nifti1Image)
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
        assert int(out.header["sform_code"]) == int(src.header["sform_code"])
        assert len(out.header.extensions) == 0


@pytest.mark.parametrize("twin", ["t1ce", "t2", "flair"])
def test_two_modalities_holding_one_image_are_refused(twin: str, predictor: BratsPredictor, tmp_path: Path) -> None:
    paths = write_case(tmp_path / "case")
    shutil.copy(paths["t1"], paths[twin])  # another file, the same voxels
    with pytest.raises(InputError, match=f"t1 and {twin} are the same image") as err:
        predictor.prepare(InputItem("case", paths))
    assert err.value.path == str(paths[twin])


def test_one_file_given_for_all_four_is_refused(predictor: BratsPredictor, tmp_path: Path) -> None:
    one = write_case(tmp_path / "case")["t2"]
    with pytest.raises(InputError, match="t1 and t1ce are the same image"):
        predictor.prepare(InputItem("case", dict.fromkeys(MODALITIES, one)))


def test_a_constant_modality_is_refused(predictor: BratsPredictor, tmp_path: Path) -> None:
    paths = write_case(tmp_path / "case")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 12), np.float32), AFFINE), str(paths["flair"]))
    with pytest.raises(InputError, match=r"flair is constant \(every voxel 0\)") as err:
        predictor.prepare(InputItem("case", paths))
    assert err.value.path == str(paths["flair"])


def test_a_ct_series_among_the_mri_is_refused(predictor: BratsPredictor, tmp_path: Path) -> None:
    paths = {}
    for i, m in enumerate(MODALITIES):
        paths[m] = tmp_path / m
        write_dicom_series(np.round(modality(i)), AFFINE, paths[m], description=m.upper(), case_index=0)
    for f in sorted(paths["t1ce"].iterdir()):
        ds = pydicom.dcmread(f)
        ds.Modality = "CT"
        ds.save_as(f)
    with pytest.raises(InputError, match="is a DICOM CT series; t1ce must be MR") as err:
        predictor.prepare(InputItem("case", paths))
    assert err.value.path == str(paths["t1ce"])
