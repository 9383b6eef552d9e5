"""Deployment traps: the bind rule however the app is served, Host/Origin checks without keys, unknown
``MEDINFER_*`` variables, API key rules, and uploaded archives with odd member names."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import socket
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_testkit import npy_bytes
from typer.testing import CliRunner

from app.cli import app as cli
from app.main import create_app
from app.security import LocalOnlyMiddleware
from app.settings import MIN_KEY_LENGTH, OTHER_VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]
KEY = "k" * MIN_KEY_LENGTH


@pytest.fixture
def plain(tmp_path: Path) -> Settings:
    """Settings without keys and without checkpoints (no model to load: the middleware is what is tested)."""
    empty = tmp_path / "checkpoints"
    empty.mkdir()
    return Settings(checkpoints=empty, data_dir=tmp_path / "data", device="cpu", warmup=False)


def _client(settings: Settings, base_url: str) -> TestClient:
    return TestClient(create_app(settings), base_url=base_url)


# -- the bind rule, per request ------------------------------------------------------------------------------
@pytest.mark.parametrize("base_url", ["http://10.0.0.5", "http://192.168.1.5:8000", "http://[2001:db8::1]:8000"])
def test_requests_arriving_beyond_loopback_are_refused_without_keys(
    plain: Settings, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(plain, base_url)
    with caplog.at_level(logging.ERROR, logger="app.security"):
        for path in ("/healthz", "/api/v1/models", "/openapi.json"):
            r = client.get(path)
            assert r.status_code == 403, path
            assert r.json()["error"]["code"] == "forbidden"
            assert "MEDINFER_API_KEYS" in r.json()["error"]["message"]
        r = client.post("/api/v1/models/addone/predict", files={"files": ("a.npy", npy_bytes([1]))})
        assert r.status_code == 403
    refusals = [rec for rec in caplog.records if "refusing requests" in rec.getMessage()]
    assert len(refusals) == 1, "logged once, not per request"


@pytest.mark.parametrize("base_url", ["http://127.0.0.1", "http://127.0.0.2:8000", "http://localhost", "http://[::1]"])
def test_requests_arriving_on_loopback_are_served(plain: Settings, base_url: str) -> None:
    assert _client(plain, base_url).get("/healthz").status_code == 200


def test_insecure_or_keys_serve_beyond_loopback(plain: Settings) -> None:
    insecure = plain.model_copy(update={"insecure": True})
    assert _client(insecure, "http://10.0.0.5").get("/healthz").status_code == 200
    keyed = plain.model_copy(update={"api_keys": KEY})
    client = _client(keyed, "http://10.0.0.5")
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/models").status_code == 401
    assert client.get("/api/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_create_app_checks_the_configured_host(plain: Settings) -> None:
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0"):
        create_app(plain.model_copy(update={"host": "0.0.0.0"}))
    create_app(plain.model_copy(update={"host": "0.0.0.0", "insecure": True}))
    create_app(plain.model_copy(update={"host": "127.0.0.5"}))  # all of 127/8 is loopback


# -- Host and Origin without keys ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 200),
        ({"Host": "127.0.0.1:8000"}, 200),
        ({"Host": "localhost"}, 200),
        ({"Host": "LOCALHOST.:8000"}, 200),
        ({"Host": "[::1]:8000"}, 200),
        ({"Host": "127.1.2.3"}, 200),
        ({"Host": "evil.example"}, 403),
        ({"Host": "evil.example:8000"}, 403),
        ({"Host": "localhost.evil.example"}, 403),
        ({"Host": "127.0.0.1.nip.io"}, 403),
        ({"Host": "localhost:8000@evil.example"}, 403),
        ({"Host": "localhost:80:80"}, 403),
        ({"Host": "[::1"}, 403),
        ({"Host": ""}, 403),
        ({"Origin": "http://localhost:3000"}, 200),
        ({"Origin": "http://127.0.0.1"}, 200),
        ({"Origin": "https://[::1]:8443"}, 200),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "http://127.0.0.1.evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "file://"}, 403),
        ({"Origin": "http://localhost/path"}, 403),
    ],
)
def test_host_and_origin_must_be_loopback_without_keys(plain: Settings, headers: dict[str, str], status: int) -> None:
    r = _client(plain, "http://127.0.0.1").get("/healthz", headers=headers)
    assert r.status_code == status, r.text
    if status == 403:
        assert r.json()["error"]["code"] == "forbidden"
        assert ("Host" if "Host" in headers else "Origin") in r.json()["error"]["message"]


def test_a_cross_site_form_post_is_refused_before_the_upload_is_read(plain: Settings) -> None:
    files = {"files": ("a.npy", npy_bytes([1]))}
    client = _client(plain, "http://127.0.0.1")
    r = client.post("/api/v1/jobs", files=files, data={"task": "addone"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert "cross-site" in r.json()["error"]["message"]
    assert not (plain.data_dir / "uploads").exists() or not any((plain.data_dir / "uploads").iterdir())


def test_keys_replace_the_host_and_origin_checks(plain: Settings) -> None:
    client = _client(plain.model_copy(update={"api_keys": KEY}), "http://127.0.0.1")
    hostile = {"Host": "evil.example", "Origin": "https://evil.example"}
    assert client.get("/api/v1/models", headers=hostile).status_code == 401
    ok = client.get("/api/v1/models", headers={**hostile, "Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_insecure_beyond_loopback_accepts_its_own_host_but_not_other_origins(plain: Settings) -> None:
    client = _client(plain.model_copy(update={"insecure": True}), "http://10.0.0.5:8000")
    assert client.get("/healthz", headers={"Host": "gpu-box:8000"}).status_code == 200
    same = {"Host": "gpu-box:8000", "Origin": "http://gpu-box:8000"}
    assert client.get("/healthz", headers=same).status_code == 200
    other = {"Host": "gpu-box:8000", "Origin": "http://evil.example"}
    assert client.get("/healthz", headers=other).status_code == 403


def _asgi_call(scope: dict[str, Any]) -> list[dict[str, Any]]:
    """Run :class:`LocalOnlyMiddleware` around an app that accepts everything; the messages it sent."""
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        sent.append({"type": "passed"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(LocalOnlyMiddleware(inner)(scope, receive, send))
    return sent


def test_two_host_headers_are_refused() -> None:
    scope = {"type": "http", "server": ("127.0.0.1", 8000), "headers": [(b"host", b"localhost"), (b"host", b"evil")]}
    sent = _asgi_call({**scope, "method": "GET", "path": "/healthz", "query_string": b""})
    assert sent[0]["status"] == 403
    assert b"more than one host header" in sent[1]["body"]


def test_a_refused_websocket_is_closed() -> None:
    scope = {"type": "websocket", "server": ("10.0.0.5", 8000), "headers": [], "path": "/ws"}
    sent = _asgi_call(scope)
    assert [(m["type"], m["code"]) for m in sent] == [("websocket.close", 1008)]
    assert "MEDINFER_API_KEYS" in sent[0]["reason"]
    assert _asgi_call({**scope, "server": ("127.0.0.1", 8000)}) == [{"type": "passed"}]
    assert _asgi_call({"type": "lifespan"}) == [{"type": "passed"}]


def test_the_default_test_client_is_served(plain: Settings) -> None:
    """In-process transports name their server (``testserver``) rather than give an address."""
    assert TestClient(create_app(plain)).get("/healthz").status_code == 200


# -- a real server started without the CLI -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _non_loopback_addresses() -> list[str]:
    """This machine's IPv4 addresses beyond loopback (the route a datagram socket would take; none offline)."""
    found = set()
    for probe in ("192.0.2.1", "10.255.255.255"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
            except OSError:
                continue
            address = s.getsockname()[0]
            if not address.startswith("127.") and address != "0.0.0.0":
                found.add(address)
    return sorted(found)


@pytest.fixture
def factory_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``uvicorn --factory app.main:create_app --host 0.0.0.0``: the bind the CLI would refuse, without keys."""
    port = _free_port()
    (tmp_path / "checkpoints").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MEDINFER_")}
    env.update({"MEDINFER_CHECKPOINTS": str(tmp_path / "checkpoints"), "MEDINFER_DATA_DIR": str(tmp_path / "data")})
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0",
             "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.slow  # a real server process: a few seconds to import and start
def test_uvicorn_factory_keeps_the_rules(factory_server: tuple[int, Path]) -> None:
    port, log = factory_server
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    rebound = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"Host": f"evil.example:{port}"})
    assert rebound.status_code == 403
    cross = httpx.post(f"http://127.0.0.1:{port}/api/v1/jobs", headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    for address in _non_loopback_addresses():  # where this machine has a network address, it is refused there
        r = httpx.get(f"http://{address}:{port}/healthz")
        assert r.status_code == 403, address
        assert "MEDINFER_API_KEYS" in r.json()["error"]["message"]
        assert "refusing requests on" in log.read_text()


# -- MEDINFER_* variables ------------------------------------------------------------------------------------
def _env(monkeypatch: pytest.MonkeyPatch, name: str, value: str = "x") -> None:
    for key in list(os.environ):
        if key.upper().startswith("MEDINFER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("MEDINFER_" + "API_KEY", "MEDINFER_API_KEYS"),
        ("MEDINFER_" + "MAX_UPLOAD", "MEDINFER_MAX_UPLOAD_MB"),
        ("MEDINFER_" + "CHECKPOINT", "MEDINFER_CHECKPOINTS"),
        ("medinfer_" + "devise", "MEDINFER_DEVICE"),
    ],
)
def test_unknown_variables_are_refused_with_the_nearest_name(
    monkeypatch: pytest.MonkeyPatch, name: str, suggestion: str
) -> None:
    _env(monkeypatch, name)
    with pytest.raises(ValueError, match=rf"{name} \(did you mean {suggestion}\?\)"):
        Settings()


def test_an_unknown_variable_without_a_near_name_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, "MEDINFER_" + "ZZZ")
    with pytest.raises(ValueError, match=r"known ones are .*MEDINFER_API_KEYS"):
        Settings()


@pytest.mark.parametrize("name", ["MEDINFER_TASKS", "medinfer_tasks", *sorted(OTHER_VARIABLES)])
def test_known_variables_are_accepted(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _env(monkeypatch, name, "0")
    Settings()


def test_serve_names_an_unknown_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, "MEDINFER_" + "API_KEY", KEY)
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 2
    assert "did you mean MEDINFER_API_KEYS" in result.output


def test_every_variable_the_repository_mentions_is_known() -> None:
    """README, docs, docker files, code and tests: each ``MEDINFER_*`` name is a setting or on the list."""
    known = {"MEDINFER_" + f.upper() for f in Settings.model_fields} | OTHER_VARIABLES
    skip = {".git", ".venv", "node_modules", "__pycache__", "build", "dist", ".pytest_cache", ".mypy_cache"}
    texts = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".sh", ""}
    mentioned: dict[str, str] = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if path.suffix not in texts and name != "Makefile" and not name.startswith("Dockerfile"):
                continue
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            for found in re.findall(r"MEDINFER_[A-Z0-9_]*[A-Z0-9]", text):
                mentioned.setdefault(found, str(path.relative_to(ROOT)))
    assert len(mentioned) >= 10
    unknown = {name: where for name, where in mentioned.items() if name not in known}
    assert unknown == {}, "document each as a Settings field or add it to app.settings.OTHER_VARIABLES"


# -- API keys ------------------------------------------------------------------------------------------------
def test_short_keys_are_refused_without_echoing_them(tmp_path: Path) -> None:
    pattern = rf"API key 2 of MEDINFER_API_KEYS has 5 characters; keys must be at least {MIN_KEY_LENGTH}"
    with pytest.raises(ValueError, match=pattern) as err:
        Settings(api_keys=f"{KEY},s3cr7").keys()
    assert "s3cr7" not in str(err.value)
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(f"{KEY}\n\nt1ny\n")
    with pytest.raises(ValueError, match=r"keys\.txt: the API key on line 3 has 4 characters") as err:
        Settings(api_keys_file=keyfile).keys()
    assert "t1ny" not in str(err.value)


def test_a_binary_key_file_is_an_error(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys.bin"
    keyfile.write_bytes(b"\xff\xfe" + KEY.encode())
    with pytest.raises(ValueError, match=r"keys\.bin: API key file cannot be read \(not UTF-8 text\)"):
        Settings(api_keys_file=keyfile).keys()


def test_startup_refuses_a_short_key(plain: Settings) -> None:
    with pytest.raises(ValueError, match="at least"):
        create_app(plain.model_copy(update={"api_keys": "abc"}))


def test_key_file_comments_are_ignored_however_indented(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys.txt"
    other = "o" * 20
    keyfile.write_text(f"# keys\n    # indented comment\n\t# tab comment\n\n   \n  {KEY}  \n{other}\n")
    assert Settings(api_keys_file=keyfile).keys() == {KEY, other}


# -- archives with odd member names through the service -------------------------------------------------------
def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point of one archive here
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ([("a", b"x"), ("a/b.npy", npy_bytes([1]))], "also a file"),
        ([("a/b.npy", npy_bytes([1])), ("a", b"x")], "both a file and a folder"),
        ([("d/" + "n" * 300 + ".npy", npy_bytes([1]))], "over 255 bytes"),
        ([("d/" * 50 + "x.npy", npy_bytes([1]))], "path parts"),
        ([("x.npy", npy_bytes([1])), ("x.npy", npy_bytes([2]))], "appears twice"),
    ],
    ids=["file-then-folder", "folder-then-file", "long", "deep", "duplicate"],
)
def test_odd_zip_members_are_400s(client: TestClient, members: list[tuple[str, bytes]], words: str) -> None:
    r = client.post("/api/v1/models/addone/predict", files={"files": ("odd.zip", _zip(members))})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(("odd.zip: ", "files[0]: "))  # the archive, by name or by position
    assert words in message
    assert "Traceback" not in message


def test_every_setting_is_documented_for_operators() -> None:
    from pathlib import Path

    from app.settings import Settings

    text = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"MEDINFER_{name.upper()}" not in text]
    assert not missing, f"docs/service.md does not document {missing}"
