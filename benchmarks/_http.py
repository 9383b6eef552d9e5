"""A lean HTTP/1.1 load client for the benchmarks: request bodies encoded once, one keep-alive connection per client.

The load generator shares the machine's cores with the server it measures, so what it spends per request is taken
from the server: bodies are encoded once up front (multipart with a fixed boundary, Open Inference Protocol JSON or
binary tensors), and each client writes a whole pre-built request in one call on a raw asyncio stream and reads the
response with a small parser (``Content-Length`` and chunked bodies). Standard library only.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BOUNDARY",
    "AsyncConnection",
    "HTTPResponse",
    "ProtocolError",
    "ThreadConnection",
    "get",
    "multipart_body",
    "oip_binary_body",
    "oip_json_body",
    "read_response",
    "request_bytes",
]

#: the fixed multipart boundary (checked against every part's bytes)
BOUNDARY = "medinfer-bench-7c1f0e4a9b3d"
#: the largest status line plus headers a response may have
MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """A response that is not well-formed HTTP/1.1."""


@dataclass
class HTTPResponse:
    """A response: status, headers (lower-case names) and the whole body; ``close``: the server ends the
    connection after it (``Connection: close``, or a body delimited by the end of the connection)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    close: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


def multipart_body(parts: Sequence[tuple[str, str, bytes]], boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of file parts ``(field, filename, content)``; returns it and its content type.

    Raises:
        ValueError: a part's content or name holds the boundary, or a name holds a quote or a line break.
    """
    mark = boundary.encode("ascii")
    out = bytearray()
    for name, filename, content in parts:
        if any(c in s for s in (name, filename) for c in '"\r\n'):
            raise ValueError(f"multipart field or file name {filename!r} holds a quote or a line break")
        if mark in content or boundary in filename:
            raise ValueError(f"{filename}: holds the multipart boundary {boundary!r}; choose another")
        out += b"--" + mark + b"\r\n"
        out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n"
        out += content + b"\r\n"
    out += b"--" + mark + b"--\r\n"
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def oip_json_body(
    request_id: str, signal: np.ndarray, parameters: Mapping[str, Any], input_name: str = "signal"
) -> bytes:
    """An Open Inference Protocol (KServe v2) request with ``signal`` as one FP32 tensor, data inline (row-major).

    The values are written with Python's shortest float repr of the array's values (a WFDB record read in mV at
    a gain of 1000 gives ``0.123``), so the body is as small as the JSON encoding allows.
    """
    arr = np.asarray(signal)
    tensor = {"name": input_name, "shape": list(arr.shape), "datatype": "FP32", "data": arr.reshape(-1).tolist()}
    doc = {"id": request_id, "parameters": dict(parameters), "inputs": [tensor]}
    return json.dumps(doc, separators=(",", ":")).encode()


def oip_binary_body(
    request_id: str, signal: np.ndarray, parameters: Mapping[str, Any], input_name: str = "signal"
) -> tuple[bytes, int]:
    """The same request in the binary tensor extension: a JSON header whose input declares ``binary_data_size``,
    then the tensor's raw little-endian FP32 bytes. Returns the body and the header's length (the value of
    ``Inference-Header-Content-Length``)."""
    arr = np.ascontiguousarray(np.asarray(signal), dtype="<f4")
    raw = arr.tobytes()
    tensor = {
        "name": input_name,
        "shape": list(arr.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"id": request_id, "parameters": dict(parameters), "inputs": [tensor]}, separators=(",", ":"))
    head = header.encode()
    return head + raw, len(head)


def request_bytes(
    method: str, path: str, host: str, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> bytes:
    """A whole HTTP/1.1 keep-alive request (request line, headers, body) to write in one call."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(parts[1]), headers


async def read_response(reader: asyncio.StreamReader) -> HTTPResponse:
    """Read one response: status line, headers, and a body by ``Content-Length``, chunks, or up to the end.

    Raises:
        ProtocolError: a malformed status line, header, chunk size or length.
        asyncio.IncompleteReadError: the connection ended inside the response.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"response head longer than the reader's limit ({exc.consumed} bytes)") from exc
    status, headers = _parse_head(head[:-4])
    close = "close" in headers.get("connection", "").lower()
    if status in (204, 304) or 100 <= status < 200:
        return HTTPResponse(status, headers, b"", close)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise ProtocolError(f"malformed chunk size line {line[:40]!r}") from exc
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, up to the blank line
                    pass
                break
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise ProtocolError("a chunk does not end with CRLF")
        return HTTPResponse(status, headers, b"".join(chunks), close)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise ProtocolError(f"malformed Content-Length {headers['content-length']!r}") from exc
        if length < 0:
            raise ProtocolError(f"negative Content-Length {length}")
        return HTTPResponse(status, headers, await reader.readexactly(length), close)
    return HTTPResponse(status, headers, await reader.read(), True)  # delimited by the end of the connection


class AsyncConnection:
    """One keep-alive connection on a raw asyncio stream; reconnects when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, message: bytes) -> HTTPResponse:
        """Send a whole request (:func:`request_bytes`) and read its response."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD)
        assert self._reader is not None
        try:
            self._writer.write(message)
            await self._writer.drain()
            response = await read_response(self._reader)
        except BaseException:
            await self.close()
            raise
        if response.close:
            await self.close()
        return response

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:  # the peer went first
                pass


class ThreadConnection:
    """The same over :mod:`http.client`, for a client per thread (compared with :class:`AsyncConnection`)."""

    def __init__(self, host: str, port: int, timeout: float = 300.0) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> HTTPResponse:
        try:
            self._conn.request(method, path, body=body, headers=dict(headers))
            r = self._conn.getresponse()
            body_read = r.read()
        except BaseException:
            self._conn.close()
            raise
        headers_read = {k.lower(): v for k, v in r.getheaders()}
        return HTTPResponse(r.status, headers_read, body_read, r.will_close)

    def close(self) -> None:
        self._conn.close()


def get(host: str, port: int, path: str, timeout: float = 10.0) -> HTTPResponse:
    """A one-off ``GET`` (readiness, metrics) on a connection of its own."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return HTTPResponse(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read(), True)
    finally:
        conn.close()
