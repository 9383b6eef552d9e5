"""The service with a tiny trained ecg checkpoint: WFDB pairs, CSV with a rate, prototypes, batching."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow

PREDICT = "/api/v1/models/ecg/predict"


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A held-out synthetic WFDB record's ``.hea`` path (its ``.dat`` beside it)."""
    from pipelines.common.task import get_task

    task = get_task("ecg")
    root = task.synth(tmp_path_factory.mktemp("ecg_heldout"), n=2, seed=55)
    return next(Path(root).rglob("*.hea"))


def wfdb_files(hea: Path) -> list[tuple[str, tuple[str, bytes]]]:
    dat = hea.with_suffix(".dat")
    return [("files", (hea.name, hea.read_bytes())), ("files", (dat.name, dat.read_bytes()))]


def test_wfdb_pair(ecg_client: TestClient, record: Path) -> None:
    r = ecg_client.post(PREDICT, files=wfdb_files(record))
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["status"] == "ok", res
    probs = res["outputs"]["probabilities"]
    assert sum(len(v) for v in probs.values()) == 71
    assert all(0.0 <= p <= 1.0 for branch in probs.values() for p in branch.values())
    # the whole result is in the answer: nothing was kept (no folder, report, CSV or record)
    assert r.json()["id"] is None
    assert res["files"] == []
    assert r.json()["files"] == []


def test_save_keeps_the_result_as_files(ecg_client: TestClient, record: Path) -> None:
    plain = ecg_client.post(PREDICT, files=wfdb_files(record)).json()["results"][0]
    r = ecg_client.post(PREDICT, files=wfdb_files(record), params={"save": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    (res,) = body["results"]
    assert plain["outputs"].pop("files") == []
    assert res["outputs"].pop("files") == ["input-000.json"]
    assert res["outputs"] == plain["outputs"]  # the same answer, kept as files as well
    (result,) = [f for f in res["files"] if f["role"] == "result"]
    assert result["url"].startswith(f"/api/v1/jobs/{body['id']}/files/")
    assert ecg_client.get(result["url"]).json()["record"] == res["outputs"]["record"]
    kept = {f["name"] for f in body["files"]}
    assert {"report.json", "report.csv", "predictions.csv"} <= kept


def test_explain_gives_prototypes(ecg_client: TestClient, record: Path) -> None:
    r = ecg_client.post("/api/v1/models/ecg/explain", files=wfdb_files(record))
    assert r.status_code == 200, r.text
    outputs = r.json()["results"][0]["outputs"]
    assert set(outputs["explanation"]) >= {"rhythm", "morphology", "diffuse"}
    pngs = [f["url"] for f in r.json()["results"][0]["files"] if f["role"] == "explanation"]
    assert len(pngs) == 3
    assert all(p.endswith(".png") for p in pngs)
    assert ecg_client.get(pngs[0]).headers["content-type"] == "image/png"


def test_csv_with_a_rate_option(ecg_client: TestClient, record: Path) -> None:
    import wfdb

    sig = wfdb.rdrecord(str(record.with_suffix(""))).p_signal
    buf = io.StringIO()
    np.savetxt(buf, sig, delimiter=",", fmt="%.5f")
    files = {"files": ("rec.csv", buf.getvalue().encode())}
    assert ecg_client.post(PREDICT, files=files).status_code == 400  # no rate: the task says so
    r = ecg_client.post(PREDICT, files=files, data={"options": '{"sampling_rate": 100}'})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["outputs"]["input_fs"] == 100.0


def test_concurrent_records_are_batched(ecg_client: TestClient, record: Path) -> None:
    files = wfdb_files(record)

    def one(_: int) -> float:
        r = ecg_client.post(PREDICT, files=files)
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["timings"]["batch_size"]

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(one, range(16)))
    assert max(sizes) > 1
