"""API keys, request size limits and safe archive extraction."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ServiceError, error_json
from app.settings import is_loopback
from pipelines.common import archives

logger = logging.getLogger(__name__)

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._+=-]")


def require_api_key(request: Request) -> None:
    """Dependency: when keys are configured, require ``Authorization: Bearer <key>``.

    Raises:
        ServiceError: 401 for a missing or wrong key.
    """
    keys: frozenset[str] = request.app.state.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not token.strip():
        raise ServiceError(401, "missing API key: send Authorization: Bearer <key>", headers=challenge)
    token = token.strip()
    # compare against every key in constant time so timing does not reveal a prefix
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
        raise ServiceError(401, "wrong API key", headers=challenge)


class BodyTooLarge(StarletteHTTPException):
    """The request body exceeds ``max_upload_mb`` (an HTTP exception, so body parsing passes it through)."""

    def __init__(self, limit: int) -> None:
        self.message = f"request body exceeds the upload limit of {limit} bytes"
        super().__init__(413, self.message)


class BodyLimitMiddleware:
    """Reject bodies over ``limit`` bytes: at once from ``Content-Length``, or while streaming.

    Args:
        app: the wrapped ASGI app.
        limit: most bytes a request body may have.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    refusal = error_json(413, "too_large", BodyTooLarge(self.limit).message, path=scope.get("path", ""))
                    await refusal(scope, receive, send)
                    return
        seen = 0
        limit = self.limit

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def _authority_host(authority: str) -> str | None:
    """The host of a ``Host`` header value or an origin's authority, lower-cased, without port; None if malformed."""
    value = authority.strip().lower()
    if value.startswith("["):  # [IPv6]:port
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    name = name.rstrip(".")
    return name if name and "@" not in name and "/" not in name else None


def _origin_host(origin: str) -> str | None:
    """The host of an ``Origin`` header (``scheme://host[:port]``); None for ``null`` or anything malformed."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return _authority_host(parts.netloc)


def _beyond_loopback(server: object) -> bool:
    """Whether the address a request arrived on (``scope["server"]``) is a network address beyond loopback.

    Servers that listen on sockets (uvicorn, gunicorn's uvicorn workers, hypercorn) give the local address of the
    connection; a Unix socket gives none, and in-process transports (TestClient) give a name, not an address:
    neither is a network bind.
    """
    if not isinstance(server, list | tuple) or not server:
        return False
    host = str(server[0]).strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return not is_loopback(host)


class LocalOnlyMiddleware:
    """The rules of a service without API keys, whatever server runs the app (``medinfer serve``, ``uvicorn
    --factory``, gunicorn).

    - A request that arrived on an address beyond loopback is refused (403) unless ``insecure``: the bind rule
      of :meth:`app.settings.Settings.check_bind`, enforced per connection since the ASGI app cannot see the
      server's bind; the first refusal is logged as an error.
    - A request that arrived on loopback must name a loopback host (or the address it arrived on) in ``Host``:
      a DNS-rebinding page in a browser sends its own host name (403).
    - A request whose ``Origin`` is another site (not loopback, not the ``Host`` it was sent to) is refused: a
      cross-site form post from a browser (403). Clients that are not browsers send no ``Origin``.

    Install it only when no API keys are configured: keys authenticate every request by themselves.

    Args:
        app: the wrapped ASGI app.
        insecure: allow requests that arrive beyond loopback (``MEDINFER_INSECURE``).
    """

    def __init__(self, app: ASGIApp, insecure: bool = False) -> None:
        self.app = app
        self.insecure = insecure
        self._logged = False

    def _refusal(self, scope: Scope) -> str | None:
        server = scope.get("server")
        remote = _beyond_loopback(server)
        if remote and not self.insecure:
            if not self._logged:
                self._logged = True
                logger.error(
                    "refusing requests on %s without API keys: set MEDINFER_API_KEYS (or MEDINFER_API_KEYS_FILE), "
                    "bind 127.0.0.1, or set MEDINFER_INSECURE=true",
                    server[0] if server else "?",
                )
            return (
                "this service has no API keys and serves loopback only: set MEDINFER_API_KEYS (or "
                "MEDINFER_API_KEYS_FILE), bind 127.0.0.1, or set MEDINFER_INSECURE=true"
            )
        headers = {}
        for name, value in scope.get("headers", []):
            if name in (b"host", b"origin"):
                if name in headers:
                    return f"more than one {name.decode()} header"
                headers[name] = value.decode("latin-1")
        host = None
        if b"host" in headers:
            host = _authority_host(headers[b"host"])
            server_name = str(server[0]).strip("[]").lower() if server else None
            if host is None or not (remote or is_loopback(host) or host == server_name):
                return (
                    "the Host header must name a loopback host (127.0.0.1, localhost, [::1]) on a service without "
                    "API keys"
                )
        if b"origin" in headers:
            origin = _origin_host(headers[b"origin"])
            if origin is None or not (is_loopback(origin) or origin == host):
                return "cross-site requests are refused on a service without API keys (Origin is another site)"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self._refusal(scope)
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
        else:
            await error_json(403, "forbidden", problem, path=scope.get("path", ""))(scope, receive, send)


def safe_name(name: str, fallback: str = "upload") -> str:
    """A file name reduced to its last component and safe characters (keeps double suffixes like ``.nii.gz``)."""
    base = PurePosixPath(name.replace("\\", "/")).name
    base = _SAFE_CHARS.sub("_", base).lstrip(".")
    return base[:200] or fallback


def is_zip(path: Path) -> bool:
    """Whether a file starts like a zip archive."""
    try:
        with path.open("rb") as fh:
            return fh.read(4) in ZIP_MAGIC
    except OSError:
        return False


def safe_extract_zip(archive: Path, dest: Path, *, max_total_bytes: int, max_members: int, label: str) -> Path:
    """Extract an uploaded zip archive safely (see :func:`pipelines.common.archives.safe_extract_zip`).

    Args:
        archive: the zip file.
        dest: an empty folder to extract into.
        max_total_bytes: bound on the total unpacked size.
        max_members: bound on the number of members.
        label: the name shown in messages (the uploaded file name).

    Returns:
        ``dest``.

    Raises:
        ServiceError: 400 for an unsafe or corrupt archive, 413 for one too large.
    """
    try:
        return archives.safe_extract_zip(
            archive, dest, max_total_bytes=max_total_bytes, max_members=max_members, label=label
        )
    except archives.ArchiveError as exc:
        raise ServiceError(exc.status, str(exc)) from exc
