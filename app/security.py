"""API keys, request size limits and safe archive extraction."""

from __future__ import annotations

import hmac
import logging
import re
from pathlib import Path, PurePosixPath

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ServiceError, error_json
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
                    await error_json(413, "too_large", BodyTooLarge(self.limit).message)(scope, receive, send)
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
