"""The load benchmark's own pieces, in process (no server): request encoders, the response parser, the tally."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import h11
import numpy as np
import pytest
from starlette.datastructures import UploadFile
from starlette.requests import Request

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> tuple[ModuleType, ModuleType]:
    """``benchmarks/_http.py`` and ``benchmarks/serve_load.py`` (a folder of scripts, not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _http
        import serve_load
    finally:
        sys.path.remove(str(BENCHMARKS))
    return _http, serve_load


def parse_form(body: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    """What Starlette (python-multipart) makes of a multipart body: (field, filename, content) per file."""

    async def go() -> list[tuple[str, str, bytes]]:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/",
            "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
        }
        form = await Request(scope, receive).form()
        out = []
        for key, value in form.multi_items():
            assert isinstance(value, UploadFile)
            out.append((key, str(value.filename), await value.read()))
        await form.close()
        return out

    return asyncio.run(go())


def test_multipart_body_parses_into_the_same_files(bench: tuple[ModuleType, ModuleType]) -> None:
    _http, _ = bench
    rng = np.random.default_rng(0)
    parts = [
        ("files", "00001_hr.hea", b"00001_hr 12 500 5000\r\n--not-the-boundary\n"),
        ("files", "00001_hr.dat", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() + b"\r\n--\r\n"),
        ("files", "empty.txt", b""),
    ]
    body, content_type = _http.multipart_body(parts)
    assert content_type == f"multipart/form-data; boundary={_http.BOUNDARY}"
    assert parse_form(body, content_type) == parts


def test_multipart_body_refuses_a_part_holding_the_boundary(bench: tuple[ModuleType, ModuleType]) -> None:
    _http, _ = bench
    with pytest.raises(ValueError, match=r"a\.dat: holds the multipart boundary"):
        _http.multipart_body([("files", "a.dat", b"x--" + _http.BOUNDARY.encode() + b"y")])
    with pytest.raises(ValueError, match="quote or a line break"):
        _http.multipart_body([("files", 'a".dat', b"x")])


def test_request_bytes_is_one_well_formed_keep_alive_request(bench: tuple[ModuleType, ModuleType]) -> None:
    _http, _ = bench
    message = _http.request_bytes("POST", "/v2/models/ecg/infer", "127.0.0.1:8000", b'{"a":1}', {"X-Test": "yes"})
    server = h11.Connection(h11.SERVER)
    server.receive_data(message)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert request.method == b"POST"
    assert request.target == b"/v2/models/ecg/infer"
    headers = dict(request.headers)
    assert headers[b"content-length"] == b"7"
    assert headers[b"x-test"] == b"yes"
    data = server.next_event()
    assert isinstance(data, h11.Data)
    assert data.data == b'{"a":1}'
    assert isinstance(server.next_event(), h11.EndOfMessage)


def read_all(module: ModuleType, stream: bytes, eof: bool = True) -> list[Any]:
    """Every response on ``stream``, read one after the other as a keep-alive client does."""

    async def go() -> list[Any]:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        if eof:
            reader.feed_eof()
        out = []
        while not reader.at_eof():
            out.append(await module.read_response(reader))
            if out[-1].close:
                break
        return out

    return asyncio.run(go())


def test_read_response_handles_length_chunked_and_close_delimited_bodies(
    bench: tuple[ModuleType, ModuleType],
) -> None:
    _http, _ = bench
    stream = (
        b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\ncontent-type: application/json\r\n\r\n{"ok":true}'
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
        b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: 1\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    )
    first, second, third, fourth = read_all(_http, stream)
    assert (first.status, first.body, first.close) == (200, b'{"ok":true}', False)
    assert first.json() == {"ok": True}
    assert (second.status, second.body, second.headers["retry-after"]) == (503, b"abcdefg", "3")
    assert (third.status, third.body) == (204, b"")
    assert (fourth.status, fourth.body, fourth.close) == (200, b"until the end", True)


def test_read_response_marks_connection_close(bench: tuple[ModuleType, ModuleType]) -> None:
    _http, _ = bench
    (r,) = read_all(_http, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno", eof=False)
    assert (r.status, r.body, r.close) == (400, b"no", True)


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "malformed Content-Length"),
    ],
)
def test_read_response_refuses_malformed_responses(
    bench: tuple[ModuleType, ModuleType], stream: bytes, error: str
) -> None:
    _http, _ = bench
    with pytest.raises(_http.ProtocolError, match=error):
        read_all(_http, stream)


def test_read_response_raises_on_a_truncated_body(bench: tuple[ModuleType, ModuleType]) -> None:
    _http, _ = bench
    with pytest.raises(asyncio.IncompleteReadError):
        read_all(_http, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")


def test_oip_bodies_carry_the_signal_row_major(bench: tuple[ModuleType, ModuleType]) -> None:
    _http, _ = bench
    signal = np.arange(24, dtype=np.float64).reshape(12, 2) / 1000 - 0.005
    doc = json.loads(_http.oip_json_body("r1", signal, {"sampling_rate": 500}))
    assert doc["id"] == "r1"
    assert doc["parameters"] == {"sampling_rate": 500}
    (tensor,) = doc["inputs"]
    assert (tensor["name"], tensor["shape"], tensor["datatype"]) == ("signal", [12, 2], "FP32")
    np.testing.assert_array_equal(np.asarray(tensor["data"]).reshape(12, 2), signal)

    body, head_len = _http.oip_binary_body("r1", signal, {"sampling_rate": 500})
    header = json.loads(body[:head_len])
    (tensor,) = header["inputs"]
    assert tensor["parameters"] == {"binary_data_size": 12 * 2 * 4}
    assert "data" not in tensor
    assert len(body) == head_len + 12 * 2 * 4
    np.testing.assert_array_equal(np.frombuffer(body[head_len:], dtype="<f4").reshape(12, 2), signal.astype("<f4"))


def test_tally_counts_only_checked_good_responses(bench: tuple[ModuleType, ModuleType]) -> None:
    _http, serve_load = bench
    tally = serve_load.Tally(serve_load.check_predict, b'"status":"ok"')
    good = json.dumps({"results": [{"status": "ok"}]}, separators=(",", ":")).encode()
    bad = json.dumps({"results": [{"status": "error"}]}).encode()
    assert tally.response(_http.HTTPResponse(200, {}, good), 0.01, full=True) == 0.0
    assert tally.response(_http.HTTPResponse(200, {}, good), 0.02, full=False) == 0.0
    tally.response(_http.HTTPResponse(200, {}, bad), 0.03, full=False)  # no marker: parsed, and refused
    tally.response(_http.HTTPResponse(200, {}, b"<html>"), 0.04, full=False)
    assert tally.response(_http.HTTPResponse(503, {"retry-after": "2"}, b"{}"), 0.05, full=False) == pytest.approx(0.2)
    tally.response(_http.HTTPResponse(500, {}, b"{}"), 0.06, full=True)
    assert tally.latencies == [0.01, 0.02]
    assert tally.checked == 1
    assert tally.errors == {"200 but result status error": 1, "200 but body is not JSON": 1, "503": 1, "500": 1}


def test_summary_states_the_ratios_per_mode(bench: tuple[ModuleType, ModuleType]) -> None:
    _, serve_load = bench

    def run(clients: int, rps: float, p50: float, p99: float) -> dict[str, Any]:
        return {
            "clients": clients,
            "throughput_rps": rps,
            "p99_over_p50": round(p99 / p50, 2),
            "throughput_over_floor": rps / 100,
            "throughput_over_tensor_floor": rps / 200,
        }

    service = {
        "batching": {
            "modes": {
                "multipart": {"available": True, "runs": [run(16, 40, 100, 300), run(64, 60, 200, 500)]},
                "oip": {"available": True, "runs": [run(16, 20, 100, 150), run(64, 30, 200, 300)]},
                "oip-binary": {"available": False, "reason": "POST /v2/models/ecg/infer answered 404: Not Found"},
            }
        },
        "no_batching": {
            "modes": {
                "multipart": {"available": True, "runs": [run(16, 20, 1, 2), run(64, 15, 1, 2)]},
                "oip": {"available": True, "runs": [run(16, 10, 1, 2), run(64, 10, 1, 2)]},
                "oip-binary": {"available": False, "reason": "POST /v2/models/ecg/infer answered 404: Not Found"},
            }
        },
    }
    summary = serve_load.summarize(service, ["multipart", "oip", "oip-binary"], [16, 64])
    assert summary["multipart"] == {
        "throughput_over_floor": {"16": 0.4, "64": 0.6},
        "p99_over_p50": {"16": 3.0, "64": 2.5},
        "batching_over_none": {"64": 4.0},
    }
    assert summary["oip"]["throughput_over_tensor_floor"] == {"16": 0.1, "64": 0.15}
    assert summary["oip"]["batching_over_none"] == {"64": 3.0}
    assert summary["oip-binary"] == {"available": False, "reason": "POST /v2/models/ecg/infer answered 404: Not Found"}
    assert serve_load.batching_ratios(service, "multipart") == {"16": 2.0, "64": 4.0}
    assert serve_load.batching_ratios(service, "oip-binary") == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error":{"code":"not_found","message":"no task \'x\'"}}', "no task 'x'"),
        (b'{"error":"unknown input \'sig\'"}', "unknown input 'sig'"),
        (b'{"detail":"Not Found"}', "Not Found"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
    ],
)
def test_error_message_reads_each_error_shape(bench: tuple[ModuleType, ModuleType], body: bytes, message: str) -> None:
    _http, serve_load = bench
    assert serve_load.error_message(_http.HTTPResponse(404, {}, body)) == message
