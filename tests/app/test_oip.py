"""The Open Inference Protocol (KServe v2) routes: health, metadata, inference on tensors, the binary tensor data and
classification extensions, and the protocol's errors.

The app serves untrained tiny checkpoints of ecg, breakhis (the subtype model: two heads) and brats, and the
analytic ``addone`` task; requests follow the protocol's own examples (data flattened row-major, shape, datatype,
outputs, id). A tensor must give what the same input uploaded as a file gives.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_testkit import started_client

from app.settings import Settings

INFER = "/v2/models/{}/infer"
HEADER = "Inference-Header-Content-Length"
MAX_ITEMS = 4


@pytest.fixture(scope="module")
def oip_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained tiny checkpoints of ecg, breakhis (subtype: heads binary and subtype) and brats, and addone's."""
    import serve_testkit

    from pipelines.breakhis.config import BreakhisTrainOptions
    from pipelines.common.checkpoint import save_checkpoint
    from pipelines.common.task import TrainOptions, get_task

    folder = tmp_path_factory.mktemp("oip_checkpoints")
    for name in ("ecg", "brats"):
        save_checkpoint(get_task(name).untrained_checkpoint("tiny"), folder / f"{name}.pt")
    untrained = Path("untrained")
    options = TrainOptions(untrained, untrained, preset="tiny", task=BreakhisTrainOptions(target="subtype"))
    save_checkpoint(get_task("breakhis").make_run(options).untrained_checkpoint(), folder / "breakhis.pt")
    serve_testkit.install(folder)
    return folder


@pytest.fixture(scope="module")
def oip_settings(oip_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        checkpoints=oip_checkpoints,
        data_dir=tmp_path_factory.mktemp("oip_data"),
        tasks="ecg,breakhis,brats,addone",
        device="cpu",
        warmup=False,
        max_batch_size=8,
        max_batch_delay_ms=5,
        max_upload_mb=16,
        max_items_per_request=MAX_ITEMS,
    )


@pytest.fixture(scope="module")
def client(oip_settings: Settings) -> Iterator[TestClient]:
    c = started_client(oip_settings)
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic WFDB record's ``.hea`` (its ``.dat`` beside it)."""
    from pipelines.common.task import get_task

    root = get_task("ecg").synth(tmp_path_factory.mktemp("oip_ecg"), n=2, seed=55)
    return sorted(Path(root).rglob("*.hea"))[0]


@pytest.fixture(scope="module")
def signal(record: Path) -> tuple[np.ndarray, float]:
    """The record as read from its files: (12, n) in mV in the model's lead order, and its rate."""
    from pipelines.ecg.readers import read_record
    from pipelines.ecg.transforms import map_leads

    rec = read_record(record)
    sig = map_leads(rec.signal, rec.leads, record) if rec.leads is not None else rec.signal
    return np.ascontiguousarray(sig, dtype=np.float64), rec.fs


def ecg_request(sig: np.ndarray, fs: float, datatype: str = "FP64", **extra: Any) -> dict[str, Any]:
    """An inference request of the protocol's shape: data flattened row-major, the rate as a parameter."""
    return {
        "parameters": {"sampling_rate": fs},
        "inputs": [{"name": "signal", "shape": list(sig.shape), "datatype": datatype, "data": sig.ravel().tolist()}],
        **extra,
    }


def output(body: dict[str, Any], name: str) -> np.ndarray:
    """An output of a JSON response, in its shape."""
    (out,) = [o for o in body["outputs"] if o["name"] == name]
    return np.asarray(out["data"]).reshape(out["shape"])


def labels(client: TestClient, model: str, name: str) -> list[str]:
    (out,) = [o for o in client.get(f"/v2/models/{model}").json()["outputs"] if o["name"] == name]
    return out["parameters"]["labels"].split(",")


def flat(values: dict[str, Any]) -> dict[str, Any]:
    """Label → value of a file result's field (its groups flattened)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(flat(value) if isinstance(value, dict) else {key: value})
    return out


def binary_body(request: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    """A body of the binary tensor data extension: the JSON, then the tensors' bytes, and its headers."""
    head = json.dumps(request).encode()
    return head + b"".join(blobs), {HEADER: str(len(head)), "content-type": "application/octet-stream"}


def split_binary(r: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A response with binary outputs: its JSON and each output's bytes."""
    n = int(r.headers[HEADER])
    body = json.loads(r.content[:n])
    blobs, offset = {}, n
    for out in body["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[out["name"]] = r.content[offset : offset + size]
            offset += size
    assert offset == len(r.content)
    return body, blobs


def assert_protocol_error(r: Any, status: int, *words: str) -> str:
    """The response is the protocol's ``{"error": message}`` with ``status`` and every word in the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str)
    for word in words:
        assert word in body["error"], body["error"]
    return body["error"]


# -- health and metadata ---------------------------------------------------------------------------------------------
def test_health_and_server_metadata(client: TestClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/ecg/ready"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.content == b"", path
    server = client.get("/v2").json()
    assert server["name"] == "medinfer"
    assert server["version"]
    assert set(server["extensions"]) == {"binary_tensor_data", "classification"}


def test_readiness_follows_the_models(client: TestClient) -> None:
    rt = client.app.state.service.runtimes["breakhis"]  # type: ignore[attr-defined]
    rt.state = "loading"
    try:
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/models/breakhis/ready").status_code == 503
        assert client.get("/v2/models/ecg/ready").status_code == 200
    finally:
        rt.state = "ready"
    assert client.get("/v2/health/ready").status_code == 200


def test_ecg_model_metadata(client: TestClient) -> None:
    from models.protoecgnet import LEADS, PTBXL_LABELS

    meta = client.get("/v2/models/ecg").json()
    assert meta["name"] == "ecg"
    assert meta["platform"]
    (version,) = meta["versions"]
    (signal,) = meta["inputs"]
    assert (signal["name"], signal["datatype"], signal["shape"]) == ("signal", "FP32", [-1, 12, -1])
    assert signal["parameters"]["leads"].split(",") == list(LEADS)
    assert signal["parameters"]["required_parameters"] == "sampling_rate"
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert list(outputs) == ["probabilities", "decisions"]
    assert (outputs["probabilities"]["datatype"], outputs["probabilities"]["shape"]) == ("FP32", [-1, 71])
    assert (outputs["decisions"]["datatype"], outputs["decisions"]["shape"]) == ("BOOL", [-1, 71])
    assert labels(client, "ecg", "probabilities") == list(PTBXL_LABELS)
    assert client.get(f"/v2/models/ecg/versions/{version}").json() == meta
    assert client.get(f"/v2/models/ecg/versions/{version}/ready").status_code == 200
    assert_protocol_error(client.get("/v2/models/ecg/versions/0"), 404, "no version")


def test_breakhis_metadata_has_one_output_per_head(client: TestClient) -> None:
    from models.efficientnet import BINARY_LABELS, SUBTYPES

    meta = client.get("/v2/models/breakhis").json()
    (image,) = meta["inputs"]
    assert (image["name"], image["datatype"], image["shape"]) == ("image", "UINT8", [-1, -1, -1, 3])
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("binary", "FP32", [-1, 2]),
        ("subtype", "FP32", [-1, 8]),
    ]
    assert labels(client, "breakhis", "binary") == list(BINARY_LABELS)
    assert labels(client, "breakhis", "subtype") == list(SUBTYPES)


def test_unknown_model_is_404(client: TestClient) -> None:
    assert_protocol_error(client.get("/v2/models/nope"), 404, "nope")
    assert_protocol_error(client.get("/v2/models/nope/ready"), 404, "nope")
    assert_protocol_error(client.post(INFER.format("nope"), json={"inputs": []}), 404, "nope")


@pytest.mark.parametrize("model", ["brats", "addone"])
def test_a_model_that_takes_files_says_so(client: TestClient, model: str) -> None:
    meta = client.get(f"/v2/models/{model}").json()
    assert (meta["inputs"], meta["outputs"]) == ([], [])
    assert f"/api/v1/models/{model}/predict" in meta["parameters"]["inputs"]
    sig = np.zeros((12, 1000))
    r = client.post(INFER.format(model), json=ecg_request(sig, 100.0))
    assert_protocol_error(r, 400, "takes files", f"/api/v1/models/{model}/predict")


# -- inference -------------------------------------------------------------------------------------------------------
def test_ecg_tensor_gives_the_file_result(client: TestClient, record: Path, signal: tuple[np.ndarray, float]) -> None:
    files = [("files", (p.name, p.read_bytes())) for p in (record, record.with_suffix(".dat"))]
    r = client.post("/api/v1/models/ecg/predict", files=files)
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    names = labels(client, "ecg", "probabilities")
    by_file = flat(res["outputs"]["probabilities"])
    decided = flat(res["outputs"]["decisions"])
    sig, fs = signal
    r = client.post(INFER.format("ecg"), json=ecg_request(sig, fs, id="42"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "42"
    assert body["model_name"] == "ecg"
    probs = output(body, "probabilities")
    assert probs.shape == (1, 71)
    np.testing.assert_allclose(probs[0], [by_file[n] for n in names], rtol=0, atol=1e-6)
    assert output(body, "decisions")[0].tolist() == [decided[n] for n in names]
    assert {o["datatype"] for o in body["outputs"]} == {"FP32", "BOOL"}


def test_ecg_rate_unit_and_options_as_parameters(client: TestClient, signal: tuple[np.ndarray, float]) -> None:
    """The rate may be an input parameter, the unit a request parameter: µV at 1000x gives the mV result."""
    sig, fs = signal
    base = output(client.post(INFER.format("ecg"), json=ecg_request(sig, fs)).json(), "probabilities")
    request = ecg_request(sig * 1000.0, fs)
    request["parameters"] = {"signal_unit": "uV"}
    request["inputs"][0]["parameters"] = {"sampling_rate": fs}
    r = client.post(INFER.format("ecg"), json=request)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(output(r.json(), "probabilities"), base, rtol=0, atol=1e-6)


def test_a_batch_of_three_records_in_one_request(client: TestClient, signal: tuple[np.ndarray, float]) -> None:
    sig, fs = signal
    batch = np.stack([sig, sig * 0.5, sig[::-1] * 1.5])  # three different inputs
    singles = [
        output(client.post(INFER.format("ecg"), json=ecg_request(s, fs)).json(), "probabilities")[0] for s in batch
    ]
    r = client.post(INFER.format("ecg"), json=ecg_request(batch, fs))
    assert r.status_code == 200, r.text
    probs = output(r.json(), "probabilities")
    assert probs.shape == (3, 71)
    np.testing.assert_allclose(probs, np.stack(singles), rtol=0, atol=1e-6)
    assert not np.allclose(probs[0], probs[1])


def test_requested_outputs_only_and_the_classification_extension(
    client: TestClient, signal: tuple[np.ndarray, float]
) -> None:
    sig, fs = signal
    full = client.post(INFER.format("ecg"), json=ecg_request(sig, fs)).json()
    r = client.post(INFER.format("ecg"), json=ecg_request(sig, fs, outputs=[{"name": "decisions"}]))
    assert [o["name"] for o in r.json()["outputs"]] == ["decisions"]
    assert "id" not in r.json()
    top = {"name": "probabilities", "parameters": {"classification": 3}}
    r = client.post(INFER.format("ecg"), json=ecg_request(sig, fs, outputs=[top]))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert (out["datatype"], out["shape"]) == ("BYTES", [1, 3])
    probs = output(full, "probabilities")[0]
    names = labels(client, "ecg", "probabilities")
    best = np.argsort(-probs, kind="stable")[:3]
    assert out["data"] == [f"{probs[i]:f}:{i}:{names[i]}" for i in best]


def test_binary_tensor_data_in_and_out(client: TestClient, signal: tuple[np.ndarray, float]) -> None:
    sig, fs = signal
    reference = client.post(INFER.format("ecg"), json=ecg_request(sig, fs)).json()
    x = sig.astype("<f8").tobytes()
    request = {
        "parameters": {"sampling_rate": fs, "binary_data_output": True},
        "inputs": [
            {"name": "signal", "shape": list(sig.shape), "datatype": "FP64", "parameters": {"binary_data_size": len(x)}}
        ],
        "outputs": [{"name": "probabilities"}, {"name": "decisions", "parameters": {"binary_data": False}}],
    }
    content, headers = binary_body(request, x)
    r = client.post(INFER.format("ecg"), content=content, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    body, blobs = split_binary(r)
    assert list(blobs) == ["probabilities"]
    probs = np.frombuffer(blobs["probabilities"], dtype="<f4").reshape(1, 71)
    np.testing.assert_allclose(probs, output(reference, "probabilities"), rtol=0, atol=1e-6)
    assert output(body, "decisions").tolist() == output(reference, "decisions").tolist()
    # FP32 in binary: the same record to float precision; decisions and top labels as binary outputs
    x32 = sig.astype("<f4").tobytes()
    request["inputs"][0].update(datatype="FP32", parameters={"binary_data_size": len(x32)})
    request["outputs"] = [{"name": "decisions"}, {"name": "probabilities", "parameters": {"classification": 2}}]
    content, headers = binary_body(request, x32)
    body, blobs = split_binary(client.post(INFER.format("ecg"), content=content, headers=headers))
    decisions = np.frombuffer(blobs["decisions"], dtype=np.uint8).astype(bool).reshape(1, 71)
    assert decisions.tolist() == output(reference, "decisions").tolist()
    raw, strings = blobs["probabilities"], []
    while raw:
        (n,) = struct.unpack("<I", raw[:4])
        strings.append(raw[4 : 4 + n].decode())
        raw = raw[4 + n :]
    assert len(strings) == 2
    assert [int(s.split(":")[1]) for s in strings] == np.argsort(-output(reference, "probabilities")[0])[:2].tolist()


def test_breakhis_image_tensor_gives_the_file_result(client: TestClient) -> None:
    from PIL import Image

    rgb = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    r = client.post("/api/v1/models/breakhis/predict", files={"files": ("img.png", png.getvalue())})
    assert r.status_code == 200, r.text
    by_file = r.json()["results"][0]["outputs"]
    for datatype in ("UINT8", "FP32"):
        request = {
            "inputs": [{"name": "image", "shape": [1, 40, 48, 3], "datatype": datatype, "data": rgb.ravel().tolist()}]
        }
        r = client.post(INFER.format("breakhis"), json=request)
        assert r.status_code == 200, r.text
        body = r.json()
        for head in ("binary", "subtype"):
            expected = [by_file[head]["probabilities"][n] for n in labels(client, "breakhis", head)]
            np.testing.assert_allclose(output(body, head)[0], expected, rtol=0, atol=1e-6)
        assert "not BreakHis's 700x460" in body["parameters"]["warnings"]
        assert body["parameters"]["warnings"].startswith("inputs[0][0]: ")


# -- refusals --------------------------------------------------------------------------------------------------------
def _ecg(fs: float = 100.0, n: int = 1000, **changes: Any) -> dict[str, Any]:
    request = ecg_request(np.zeros((12, n)), fs)
    request["inputs"][0].update(changes)
    return request


BAD_REQUESTS: list[tuple[str, Callable[[], Any], tuple[str, ...]]] = [
    ("shape", lambda: _ecg(shape=[11, 1000]), ("'signal'", "shape [11, 1000]")),
    ("rank", lambda: _ecg(shape=[12000]), ("'signal'", "shape")),
    ("datatype", lambda: _ecg(datatype="INT64"), ("'signal'", "INT64", "FP32")),
    ("length", lambda: _ecg(shape=[12, 999]), ("'signal'", "11988 elements", "12000")),
    ("name", lambda: _ecg(name="sig"), ("'sig'", "'signal'")),
    (
        "no data",
        lambda: _ecg() | {"inputs": [{"name": "signal", "shape": [12, 1000], "datatype": "FP32"}]},
        ("no data",),
    ),
    ("strings", lambda: _ecg(data=["a"] * 12000), ("'signal'", "numbers")),
    ("no rate", lambda: {"inputs": _ecg()["inputs"]}, ("sampling_rate",)),
    ("bad rate", lambda: _ecg(fs=10.0), ("sampling_rate",)),
    ("parameter", lambda: _ecg() | {"parameters": {"sampling_rte": 100}}, ("'sampling_rte'",)),
    ("output", lambda: _ecg() | {"outputs": [{"name": "logits"}]}, ("'logits'", "'probabilities'")),
    (
        "top k",
        lambda: _ecg() | {"outputs": [{"name": "probabilities", "parameters": {"classification": 72}}]},
        ("classification",),
    ),
    ("not json", lambda: b"{", ("JSON",)),
]


@pytest.mark.parametrize(("case", "make", "words"), BAD_REQUESTS, ids=[c for c, _, _ in BAD_REQUESTS])
def test_bad_requests_are_400_naming_the_problem(
    client: TestClient, case: str, make: Callable[[], Any], words: tuple[str, ...]
) -> None:
    body = make()
    if isinstance(body, bytes):
        r = client.post(INFER.format("ecg"), content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(INFER.format("ecg"), json=body)
    assert_protocol_error(r, 400, *words)


def test_nan_in_a_signal_is_400_naming_the_input_and_lead(client: TestClient, signal: tuple[np.ndarray, float]) -> None:
    sig, fs = signal
    bad = np.stack([sig, sig.copy()])
    bad[1, 2, 10] = np.nan
    text = json.dumps(ecg_request(bad, fs))  # NaN as Python's JSON writes it (a token the protocol's JSON lacks)
    r = client.post(INFER.format("ecg"), content=text, headers={"content-type": "application/json"})
    assert_protocol_error(r, 400, "inputs[0][1]", "NaN", "III")
    x = bad.astype("<f4").tobytes()
    request = ecg_request(bad, fs)
    request["inputs"][0].pop("data")
    request["inputs"][0].update(datatype="FP32", parameters={"binary_data_size": len(x)})
    content, headers = binary_body(request, x)
    r = client.post(INFER.format("ecg"), content=content, headers=headers)
    assert_protocol_error(r, 400, "inputs[0][1]", "NaN")


def test_binary_sizes_must_match_shape_and_datatype(client: TestClient) -> None:
    request = _ecg(datatype="FP32")
    request["inputs"][0].pop("data")
    x = np.zeros((12, 1000), dtype="<f4").tobytes()
    request["inputs"][0]["parameters"] = {"binary_data_size": len(x) - 4}
    content, headers = binary_body(request, x[:-4])
    assert_protocol_error(client.post(INFER.format("ecg"), content=content, headers=headers), 400, "48000 bytes")
    request["inputs"][0]["parameters"] = {"binary_data_size": len(x)}
    content, headers = binary_body(request, x[:-4])
    assert_protocol_error(client.post(INFER.format("ecg"), content=content, headers=headers), 400, "sent")
    content, headers = binary_body(request, x + b"\0")
    assert_protocol_error(client.post(INFER.format("ecg"), content=content, headers=headers), 400, "belong to no input")
    headers[HEADER] = str(len(content) + 1)
    assert_protocol_error(client.post(INFER.format("ecg"), content=content, headers=headers), 400, HEADER)


def test_more_inputs_than_a_request_may_hold_is_413(client: TestClient) -> None:
    batch = np.zeros((MAX_ITEMS + 1, 12, 1000))
    assert_protocol_error(client.post(INFER.format("ecg"), json=ecg_request(batch, 100.0)), 413, "limit is 4")


def test_a_full_queue_is_503_with_retry_after(client: TestClient, signal: tuple[np.ndarray, float]) -> None:
    sig, fs = signal
    ledger = client.app.state.service.runtimes["ecg"].ledger  # type: ignore[attr-defined]
    held = ledger.claim(ledger.max_items, 0)
    try:
        r = client.post(INFER.format("ecg"), json=ecg_request(sig, fs))
        assert_protocol_error(r, 503, "too much work")
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        held.let_go()
    assert client.post(INFER.format("ecg"), json=ecg_request(sig, fs)).status_code == 200


def test_api_keys_guard_all_but_health(
    settings: Settings, start_client: Callable[..., TestClient], signal: tuple[np.ndarray, float]
) -> None:
    key = "k" * 24
    c = start_client(settings.model_copy(update={"api_keys": key}), headers={})
    assert c.get("/v2/health/live").status_code == 200
    assert c.get("/v2/health/ready").status_code == 200
    assert c.get("/v2/models/addone/ready").status_code == 200
    for r in (c.get("/v2"), c.get("/v2/models/addone"), c.post(INFER.format("addone"), json={"inputs": []})):
        assert_protocol_error(r, 401, "API key")
        assert r.headers["WWW-Authenticate"] == "Bearer"
    auth = {"Authorization": f"Bearer {key}"}
    assert c.get("/v2", headers=auth).status_code == 200
    r = c.post(INFER.format("addone"), json={"inputs": []}, headers=auth)
    assert_protocol_error(r, 400, "takes files")


def test_refusals_before_any_route_are_in_the_protocol_shape(client: TestClient) -> None:
    """The body limit (on Content-Length), an unknown /v2 path and the Host check answer before any /v2 route: their
    errors are still the protocol's ``{"error": message}``; the file routes keep the service's shape."""
    too_big = str(17 * 1024 * 1024)  # max_upload_mb is 16
    r = client.post(INFER.format("ecg"), content=b"{}", headers={"content-length": too_big})
    assert r.status_code == 413
    assert isinstance(r.json()["error"], str)
    r = client.get("/v2/no/such/route")
    assert r.status_code == 404
    assert isinstance(r.json()["error"], str)
    r = client.get("/v2/health/ready", headers={"host": "evil.example"})
    assert r.status_code == 403
    assert isinstance(r.json()["error"], str)
    r = client.get("/api/v1/no/such/route")
    assert r.json()["error"]["code"] == "not_found"
