"""Synchronous prediction through the real app with the analytic task (``x + 1``)."""

from __future__ import annotations

import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.testclient import TestClient
from serve_testkit import npy_bytes

PREDICT = "/api/v1/models/addone/predict"


def test_predict_one_vector(client: TestClient) -> None:
    r = client.post(PREDICT, files={"files": ("case1.npy", npy_bytes([1, 2, 3]))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "addone"
    (res,) = body["results"]
    assert res["status"] == "ok"
    assert res["input"] == "files[0]"  # the upload by position: no server path, no file name
    assert res["outputs"]["values"] == [2.0, 3.0, 4.0]
    assert [f["role"] for f in res["files"]] == ["mask"]  # no explanation without asking
    link = res["files"][0]["url"]
    assert link == f"/api/v1/jobs/{body['id']}/files/input-000_out.npy"  # output names are opaque
    assert res["files"][0]["name"] == "input-000_out.npy"
    assert res["files"][0]["size"] > 0
    names = {f["name"] for f in body["files"]}
    assert {"input-000_out.npy", "report.json", "report.csv"} <= names
    got = client.get(link)
    assert got.status_code == 200
    assert np.load(io.BytesIO(got.content)).tolist() == [2.0, 3.0, 4.0]
    # the stored result is also readable as a finished job
    assert client.get(f"/api/v1/jobs/{body['id']}/result").json()["results"][0]["files"][0]["url"] == link


def test_explain_adds_the_explanation(client: TestClient) -> None:
    r = client.post("/api/v1/models/addone/explain", files={"files": ("v.npy", npy_bytes([0, 0]))})
    assert r.status_code == 200, r.text
    files = {f["role"]: f["url"] for f in r.json()["results"][0]["files"]}
    assert files["explanation"].endswith("/files/input-000_explanation.json")
    assert client.get(files["explanation"]).json() == {"saliency": [1.0, 1.0]}


def test_options_field_reaches_the_task_per_request(client: TestClient) -> None:
    csv = ("sig.csv", b"1,2,3\n")
    r = client.post(PREDICT, files={"files": csv})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "files[0]: CSV needs a sampling_rate"
    r = client.post(PREDICT, files={"files": csv}, data={"options": json.dumps({"sampling_rate": 250})})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["outputs"]["sampling_rate"] == 250.0
    assert r.json()["results"][0]["outputs"]["values"] == [2.0, 3.0, 4.0]
    # the shared predictor's options are untouched by a request's field
    assert client.post(PREDICT, files={"files": csv}).status_code == 400


def test_several_files_and_a_zip_in_one_request(client: TestClient) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("series/a.npy", npy_bytes([10]))
        zf.writestr("series/b.npy", npy_bytes([20]))
        zf.writestr("series/README.txt", b"ignored by the task")
    files = [("files", ("one.npy", npy_bytes([1]))), ("files", ("bundle.zip", buf.getvalue()))]
    r = client.post(PREDICT, files=files)
    assert r.status_code == 200, r.text
    got = {res["input"]: res["outputs"]["values"] for res in r.json()["results"]}
    # the k-th input found in an archive is ``files[i]#k``
    assert got == {"files[0]": [2.0], "files[1]#0": [11.0], "files[1]#1": [21.0]}


def test_a_bad_input_among_good_ones_gets_its_own_error(client: TestClient) -> None:
    files = [
        ("files", ("good.npy", npy_bytes([1]))),
        ("files", ("v13.npy", npy_bytes([13]))),  # fails inside run, batched with its neighbours
        ("files", ("broken.npy", b"\x93NUMPY garbage")),  # fails in prepare
        ("files", ("good2.npy", npy_bytes([5]))),
    ]
    r = client.post(PREDICT, files=files)
    assert r.status_code == 200, r.text
    by_input = {res["input"]: res for res in r.json()["results"]}
    assert by_input["files[0]"]["outputs"]["values"] == [2.0]
    assert by_input["files[3]"]["outputs"]["values"] == [6.0]
    assert by_input["files[1]"]["status"] == "error"
    assert by_input["files[1]"]["error"] == "files[1]: unlucky input"
    assert by_input["files[2]"]["status"] == "error"
    assert by_input["files[2]"]["error"].startswith("files[2]: ")
    assert "broken" not in r.text
    assert "/tmp" not in r.text
    assert "upload-" not in r.text


def test_concurrent_requests_are_batched(client: TestClient) -> None:
    def one(i: int) -> float:
        r = client.post(PREDICT, files={"files": (f"v{i}.npy", npy_bytes([i]))})
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        assert res["outputs"]["values"] == [i + 1.0]
        return res["timings"]["batch_size"]

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(one, range(20, 36)))
    assert max(sizes) > 1
    assert max(sizes) <= 4  # the settings' max_batch_size
    metrics = client.get("/metrics").text
    assert 'medinfer_batch_size_count{task="addone"}' in metrics
