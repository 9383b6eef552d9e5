"""Health, readiness, models and OpenAPI of the real app with the analytic task."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_ready(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    assert body["models"]["addone"]["state"] == "ready"
    assert body["models"]["addone"]["device"] == "cpu"


def test_readyz_503_with_states_when_a_model_is_missing(
    start_client: Callable[..., TestClient], settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"tasks": "addone,nosuch"})
    with pytest.raises(ValueError, match="unknown task"):
        start_client(settings)
    empty = settings.model_copy(update={"tasks": "addone", "checkpoints": tmp_path / "none"})
    client = start_client(empty, wait_ready=False)
    try:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["models"]["addone"] == {
            "state": "failed",
            "device": None,
            "error": "no checkpoint installed",
            "torch_threads": None,
        }
        r = client.post("/api/v1/models/addone/predict", files={"files": ("a.npy", b"x")})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "not_ready"
    finally:
        client.__exit__(None, None, None)


def test_models_list_and_detail(client: TestClient) -> None:
    r = client.get("/api/v1/models")
    assert r.status_code == 200
    (info,) = r.json()["models"]
    assert info["task"] == "addone"
    assert info["labels"] == ["y"]
    assert info["contract"]["channels"] == ["x"]
    assert "not a medical device" in info["model_card"]
    assert info["data_card"]["name"] == "addone.md"
    assert info["checkpoint_version"].count("+") >= 1
    assert info["max_batch_size"] == 4
    assert client.get("/api/v1/models/addone").json() == info


def test_unknown_task_404(client: TestClient) -> None:
    r = client.get("/api/v1/models/nosuch")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert "nosuch" in r.json()["error"]["message"]
    r = client.post("/api/v1/models/nosuch/predict", files={"files": ("a.npy", b"x")})
    assert r.status_code == 404


def test_unknown_route_404_is_json(client: TestClient) -> None:
    r = client.get("/api/v1/nothing")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"code", "message"}


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/v1/models", "get"),
        ("/api/v1/models/{task}", "get"),
        ("/api/v1/models/{task}/predict", "post"),
        ("/api/v1/models/{task}/explain", "post"),
        ("/api/v1/jobs", "post"),
        ("/api/v1/jobs/{job_id}", "get"),
        ("/api/v1/jobs/{job_id}/result", "get"),
        ("/api/v1/jobs/{job_id}/files/{path}", "get"),
    }
    assert expected <= {(p, m) for p, ops in paths.items() for m in ops}
    predict = paths["/api/v1/models/{task}/predict"]["post"]
    for code in ("400", "401", "404", "413", "415", "422", "503"):
        assert predict["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert "PredictResponse" in spec["components"]["schemas"]
    assert "multipart/form-data" in predict["requestBody"]["content"]
