"""Uploaded files: written to a private folder, archives extracted safely, paths hidden from users."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from app.errors import ServiceError
from app.security import is_zip, safe_extract_zip, safe_name
from app.settings import Settings

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


def private_dir(parent: Path, prefix: str) -> Path:
    """A new folder readable by this user only."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))  # mkdtemp creates it with mode 0700


def _unique(folder: Path, name: str) -> Path:
    candidate = folder / name
    n = 1
    while candidate.exists():
        stem, dot, rest = name.partition(".")
        candidate = folder / f"{stem}_{n}{dot}{rest}"
        n += 1
    return candidate


def _write_one(upload: Any, target: Path) -> int:
    upload.seek(0)
    written = 0
    with target.open("wb") as out:
        while chunk := upload.read(CHUNK):
            written += len(chunk)
            out.write(chunk)
    return written


def store_uploads_sync(files: list[tuple[str, Any]], dest: Path, settings: Settings) -> list[Path]:
    """Write uploaded file objects into ``dest``; extract zips into sub-folders.

    Args:
        files: ``(client file name, binary file object)`` pairs.
        dest: a private, empty folder.
        settings: upload and archive limits.

    Returns:
        The paths to hand to the task's ``collect_inputs`` (files, and one folder per archive).

    Raises:
        ServiceError: 400 for an unsafe or corrupt archive, 413 beyond the limits.
    """
    max_unpacked = int(settings.max_unpacked_mb * 1024 * 1024)
    inputs: list[Path] = []
    unpacked = 0
    for client_name, fileobj in files:
        name = safe_name(client_name or "")
        target = _unique(dest, name)
        _write_one(fileobj, target)
        if is_zip(target):
            stem = name[: -len(".zip")] if name.lower().endswith(".zip") else name
            folder = _unique(dest, safe_name(stem, "archive"))
            folder.mkdir()
            safe_extract_zip(
                target,
                folder,
                max_total_bytes=max_unpacked - unpacked,
                max_members=settings.max_archive_members,
                label=name,
            )
            unpacked += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            target.unlink()
            inputs.append(folder)
        else:
            inputs.append(target)
    return inputs


async def store_uploads(files: Iterable[UploadFile], dest: Path, settings: Settings) -> list[Path]:
    """Async wrapper of :func:`store_uploads_sync` (disk work off the event loop)."""
    pairs = [(f.filename or "", f.file) for f in files]
    if not pairs:
        raise ServiceError(422, "files: at least one file is required", "validation_error")
    return await run_in_threadpool(store_uploads_sync, pairs, dest, settings)


def remove_tree(path: Path) -> None:
    """Remove a folder, logging (not raising) when it cannot be removed."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove a temporary folder: %s", exc.strerror)


def scrub(text: str, *folders: Path) -> str:
    """Hide server folders in a message: ``/data/tmp/upload-x/case/t1.nii`` → ``case/t1.nii``."""
    for folder in folders:
        for form in {str(folder), str(folder.resolve())}:
            text = text.replace(form + "/", "").replace(form, ".")
    return text
