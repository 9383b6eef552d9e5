"""API keys, request size limits and safe archive extraction."""

from __future__ import annotations

import hmac
import logging
import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ServiceError, error_json

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
    """Extract a zip archive refusing anything that could escape ``dest`` or exhaust the disk.

    Refused: absolute member paths, ``..`` components, drive letters, symbolic links and other special
    files, more than ``max_members`` members, and more than ``max_total_bytes`` unpacked (counted while
    writing, so a lying header cannot get past the bound).

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
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ServiceError(400, f"{label}: not a readable zip archive ({exc})") from exc
    with zf:
        members = zf.infolist()
        if len(members) > max_members:
            raise ServiceError(413, f"{label}: archive has {len(members)} members; the limit is {max_members}")
        if not members:
            raise ServiceError(400, f"{label}: archive is empty")
        declared = sum(m.file_size for m in members)
        if declared > max_total_bytes:
            raise ServiceError(
                413, f"{label}: archive unpacks to {declared} bytes; the limit is {max_total_bytes} bytes"
            )
        root = dest.resolve()
        total = 0
        for member in members:
            name = member.filename.replace("\\", "/")
            parts = PurePosixPath(name).parts
            if name.startswith("/") or (parts and re.fullmatch(r"[A-Za-z]:", parts[0])) or ".." in parts:
                raise ServiceError(400, f"{label}: archive member {name!r} has an unsafe path")
            kind = stat.S_IFMT(member.external_attr >> 16)  # 0 when the archiver wrote no Unix mode
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise ServiceError(400, f"{label}: archive member {name!r} is a link or special file")
            target = (root / name).resolve()
            if target != root and root not in target.parents:
                raise ServiceError(400, f"{label}: archive member {name!r} has an unsafe path")
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(member) as src, target.open("wb") as out:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > max_total_bytes:
                            raise ServiceError(
                                413, f"{label}: archive unpacks to more than the limit of {max_total_bytes} bytes"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError) as exc:
                raise ServiceError(400, f"{label}: archive member {name!r} cannot be read ({exc})") from exc
            except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encrypted members
                raise ServiceError(400, f"{label}: archive member {name!r} cannot be read ({exc})") from exc
    return dest
