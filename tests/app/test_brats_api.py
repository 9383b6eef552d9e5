"""The service with a tiny trained brats checkpoint: four files, a zip, DICOM series, masks in the input grid."""

from __future__ import annotations

import gzip
import io
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow

PREDICT = "/api/v1/models/brats/predict"


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One held-out synthetic case with NIfTI files and DICOM series."""
    from pipelines.common.task import get_task

    root = get_task("brats").synth(tmp_path_factory.mktemp("brats_case"), n=1, seed=77, dicom=True)
    return next(p for p in sorted(root.iterdir()) if p.is_dir())


def zip_folder(folder: Path, arcroot: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{arcroot}/{p.relative_to(folder)}")
    return buf.getvalue()


def nifti(content: bytes) -> nib.Nifti1Image:
    """A NIfTI image from downloaded ``.nii.gz`` bytes."""
    return nib.Nifti1Image.from_bytes(gzip.decompress(content))


def nifti_files(case_dir: Path) -> list[tuple[str, tuple[str, bytes]]]:
    return [
        ("files", (p.name, p.read_bytes()))
        for p in sorted(case_dir.glob("*.nii.gz"))
        if not p.name.endswith("_seg.nii.gz")
    ]


def test_models_lists_brats(brats_client: TestClient) -> None:
    info = brats_client.get("/api/v1/models/brats").json()
    assert info["labels"] == ["WT", "TC", "ET"]
    assert info["max_batch_size"] == 1  # one volume at a time; batching happens in the sliding window
    assert "not a medical device" in (info["model_card"] or "").lower()
    # trained on synthetic phantoms: the card of the data it was trained on, and the flag
    assert info["data_card"]["name"] == "synthetic.md"
    assert info["data_card"]["text"]
    assert info["synthetic_demo"] is True
    assert info["heads"] == [{"name": "regions", "labels": ["WT", "TC", "ET"], "activation": "multilevel"}]
    assert {"tta", "overlap", "sw_batch_size", "overlay", "dicom_seg", "labels"} == set(
        info["options_schema"]["properties"]
    )


def role_url(result: dict, role: str) -> str:
    """The link of the file of ``role`` an input wrote."""
    return next(f["url"] for f in result["files"] if f["role"] == role)


def test_options_reach_the_volume_task(brats_client: TestClient, case_dir: Path) -> None:
    data = {"options": '{"labels": "brats2023", "overlay": true}'}
    r = brats_client.post(PREDICT, files=nifti_files(case_dir), data=data)
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["outputs"]["label_convention"] == "brats2023"
    assert {f["role"] for f in res["files"]} == {"segmentation", "overlay", "result"}
    bad = brats_client.post(PREDICT, files=nifti_files(case_dir), data={"options": '{"overlap": 2}'})
    assert bad.status_code == 422
    assert "overlap" in bad.json()["error"]["message"]


def test_four_files_give_a_mask_in_the_input_grid(brats_client: TestClient, case_dir: Path) -> None:
    r = brats_client.post(PREDICT, files=nifti_files(case_dir))
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["status"] == "ok", res
    links = {f["role"]: f for f in res["files"]}
    assert set(links) == {"segmentation", "result"}
    assert res["outputs"]["files"]["segmentation"] == links["segmentation"]["name"]  # the task's JSON, unchanged
    seg_url = links["segmentation"]["url"]
    assert seg_url.startswith(f"/api/v1/jobs/{r.json()['id']}/files/")
    mask = brats_client.get(seg_url)
    assert mask.status_code == 200
    img = nifti(mask.content)
    ref = nib.load(next(case_dir.glob("*_t1.nii.gz")))
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2, 4}
    assert set(res["outputs"]["volumes_ml"]) == {"WT", "TC", "ET"}


def test_case_as_zip_and_explain_gives_probability_maps(brats_client: TestClient, case_dir: Path) -> None:
    files = {"files": ("case.zip", zip_folder(case_dir, case_dir.name))}
    r = brats_client.post("/api/v1/models/brats/explain", files=files)
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["status"] == "ok", res
    urls = [f["url"] for f in res["files"] if f["role"] == "probabilities"]
    assert len(urls) == 3  # WT, TC, ET: one 3D map each
    for url in urls:
        prob = brats_client.get(url)
        assert prob.status_code == 200
        assert nifti(prob.content).ndim == 3


def test_dicom_series_as_zip_runs_as_a_job(brats_client: TestClient, case_dir: Path) -> None:
    files = {"files": ("series.zip", zip_folder(case_dir / "dicom", "study"))}
    r = brats_client.post("/api/v1/jobs", files=files, data={"task": "brats"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while (job := brats_client.get(f"/api/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["state"] == "succeeded", job
    result = brats_client.get(f"/api/v1/jobs/{job_id}/result").json()
    (res,) = result["results"]
    mask = brats_client.get(role_url(res, "segmentation"))
    assert nifti(mask.content).shape == nib.load(next(case_dir.glob("*_t1.nii.gz"))).shape
