"""API keys: without a key, with a wrong key, with a right key; health stays open; bind refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_testkit import npy_bytes, started_client

from app.settings import Settings

SECURED = [
    ("get", "/api/v1/models", {}),
    ("get", "/api/v1/models/addone", {}),
    ("post", "/api/v1/models/addone/predict", {"files": {"files": ("a.npy", npy_bytes([1]))}}),
    ("post", "/api/v1/models/addone/explain", {"files": {"files": ("a.npy", npy_bytes([1]))}}),
    ("post", "/api/v1/jobs", {"files": {"files": ("a.npy", npy_bytes([1]))}, "data": {"task": "addone"}}),
    ("get", "/api/v1/jobs/0123abcd", {}),
    ("get", "/api/v1/jobs/0123abcd/result", {}),
    ("get", "/api/v1/jobs/0123abcd/files/x.npy", {}),
]
OPEN = ["/healthz", "/readyz", "/metrics", "/openapi.json"]


@pytest.fixture(scope="module")
def keyed(checkpoints_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One keyed app for the whole matrix (keys from the variable and from a file)."""
    tmp = tmp_path_factory.mktemp("keyed")
    keyfile = tmp / "keys.txt"
    keyfile.write_text("# one key per line\n  # an indented comment\nfile-key-0123456789\n")
    settings = Settings(
        checkpoints=checkpoints_dir,
        data_dir=tmp / "data",
        tasks="addone",
        device="cpu",
        api_keys="env-key-0123456789,other-key-0123456789",
        api_keys_file=keyfile,
    )
    client = started_client(settings)
    yield client
    client.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic env-key-0123456789"}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": "Bearer env-key-0123456789"}, None),
        ({"Authorization": "Bearer file-key-0123456789"}, None),
    ],
)
@pytest.mark.parametrize(("method", "path", "kwargs"), SECURED)
def test_auth_matrix(
    keyed: TestClient, headers: dict[str, str], expected: int | None, method: str, path: str, kwargs: dict
) -> None:
    r = getattr(keyed, method)(path, headers=headers, **kwargs)
    if expected == 401:
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    else:
        assert r.status_code in (200, 202, 404), r.text  # the right key gets through to the route
        if r.status_code == 404:
            assert "0123abcd" in r.json()["error"]["message"]


@pytest.mark.parametrize("path", OPEN)
def test_health_stays_open(keyed: TestClient, path: str) -> None:
    assert keyed.get(path).status_code == 200


def test_no_keys_means_open(client: TestClient) -> None:
    assert client.get("/api/v1/models").status_code == 200


@pytest.mark.parametrize(
    ("host", "keys", "insecure", "refused"),
    [
        ("127.0.0.1", "", False, False),
        ("localhost", "", False, False),
        ("::1", "", False, False),
        ("0.0.0.0", "", False, True),
        ("192.168.1.5", "", False, True),
        ("0.0.0.0", "k" * 16, False, False),
        ("0.0.0.0", "", True, False),
    ],
)
def test_refuses_to_listen_beyond_loopback_without_keys(host: str, keys: str, insecure: bool, refused: bool) -> None:
    s = Settings(api_keys=keys, insecure=insecure)
    if refused:
        with pytest.raises(ValueError, match="refusing to listen"):
            s.check_bind(host)
    else:
        s.check_bind(host)


def test_unreadable_key_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="API key file"):
        Settings(api_keys_file=tmp_path / "missing.txt").keys()


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = ("a" * 16, "b" * 16, "c" * 16)
    monkeypatch.setenv("MEDINFER_API_KEYS", f"{a}, {b} ,,{c}")
    assert Settings().keys() == {a, b, c}
