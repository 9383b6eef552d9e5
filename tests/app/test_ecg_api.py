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
    """The explanation is in the answer; its pictures are drawn when their links are first fetched."""
    r = ecg_client.post(
        "/api/v1/models/ecg/explain", files=wfdb_files(record), data={"options": '{"explain_labels": "NORM"}'}
    )
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    labels = res["outputs"]["explanation"]["labels"]
    positive = {c for group in res["outputs"]["positive"].values() for c in group}
    assert {e["label"] for e in labels} == positive | {"NORM"}
    pictures = [f for f in res["files"] if f["role"] == "explanation"]
    assert sorted(f["name"] for f in pictures) == sorted(e["picture"] for e in labels)
    assert all(f["deferred"] and f["size"] == 0 for f in pictures)
    (data,) = [f for f in res["files"] if f["role"] == "explanation_data"]
    assert ecg_client.get(data["url"]).json()["signal"]["shape"] == [12, 1000]
    got = ecg_client.get(pictures[0]["url"])
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    assert got.content.startswith(b"\x89PNG")
    again = ecg_client.get(pictures[0]["url"])  # drawn once, then served as a file
    assert again.content == got.content
    missing = pictures[0]["url"].replace("_explain_", "_explain_X")
    assert ecg_client.get(missing).status_code == 404


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
