"""Uploaded files: written to a private folder, archives extracted safely, names and paths hidden from users.

Patient names reach file and folder names (PACS exports name folders after patients), so nothing the service
returns, stores in its database or logs names an upload: an upload is referred to by its position
(:class:`UploadRefs`: ``files[0]``, ``files[1]#2``...), and message text passes through a :class:`Redactor`
that hides server folders and every client-supplied name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from app.errors import ServiceError
from app.security import is_zip, safe_extract_zip, safe_name
from app.settings import Settings
from pipelines.common.errors import InputError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
#: the stored uploads' names in upload order, kept beside them (a leading dot: no stored upload can be named so)
MANIFEST = ".uploads.json"
#: what a client-supplied name becomes in a message
REDACTED = "<name>"
#: names whose stem is shorter are too short to identify anyone and too common to cut out of a message
MIN_REDACTED = 3
#: words of upload layouts that are never redacted (beside a task's channel names)
LAYOUT_WORDS = frozenset(
    {"archive", "case", "cases", "data", "dicom", "file", "files", "image", "images", "input", "inputs", "record"}
    | {"records", "series", "study", "upload", "uploads"}
)
_SEPARATORS = re.compile(r"[\\/]+")


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


def _member_names(archive: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as zf:
            return [info.orig_filename for info in zf.infolist()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return []


def store_uploads_sync(
    files: list[tuple[str, Any]], dest: Path, settings: Settings, make_dest: bool = False
) -> list[Path]:
    """Write uploaded file objects into ``dest``; extract zips into sub-folders.

    The stored names (in upload order) are recorded in ``dest/.uploads.json`` so that the inputs can be referred
    to by position later (:func:`stored_uploads`). Archive errors name the archive by position (``files[0]``)
    and hide its member names.

    Args:
        files: ``(client file name, binary file object)`` pairs.
        dest: a private, empty folder.
        settings: upload and archive limits.
        make_dest: create ``dest`` first (readable by this user only; it must not exist).

    Returns:
        The paths to hand to the task's ``collect_inputs`` (files, and one folder per archive), in upload order.

    Raises:
        ServiceError: 400 for an unsafe or corrupt archive, 413 beyond the limits.
    """
    if make_dest:
        dest.mkdir(mode=0o700)
        dest.chmod(0o700)  # whatever the umask
    max_unpacked = int(settings.max_unpacked_mb * 1024 * 1024)
    inputs: list[Path] = []
    unpacked = 0
    for i, (client_name, fileobj) in enumerate(files):
        name = safe_name(client_name or "")
        target = _unique(dest, name)
        _write_one(fileobj, target)
        if is_zip(target):
            stem = name[: -len(".zip")] if name.lower().endswith(".zip") else name
            folder = _unique(dest, safe_name(stem, "archive"))
            folder.mkdir()
            try:
                safe_extract_zip(
                    target,
                    folder,
                    max_total_bytes=max_unpacked - unpacked,
                    max_members=settings.max_archive_members,
                    label=f"files[{i}]",
                )
            except ServiceError as exc:
                redact = Redactor([dest])
                for member in _member_names(target):
                    redact.add(member)
                exc.message = redact(exc.message)
                exc.args = (exc.message,)
                raise
            unpacked += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            target.unlink()
            inputs.append(folder)
        else:
            inputs.append(target)
    (dest / MANIFEST).write_text(json.dumps([p.name for p in inputs]), encoding="utf-8")
    return inputs


async def store_uploads(files: Iterable[UploadFile], dest: Path, settings: Settings) -> list[Path]:
    """Async wrapper of :func:`store_uploads_sync` (disk work in the thread pool, off the event loop).

    Args:
        files: the upload.
        dest: a private, empty folder.
        settings: upload and archive limits.
    """
    return await run_in_threadpool(store_uploads_sync, upload_pairs(files), dest, settings)


def upload_pairs(files: Iterable[UploadFile]) -> list[tuple[str, Any]]:
    """``(client file name, binary file object)`` of each uploaded file, for :func:`store_uploads_sync`.

    Raises:
        ServiceError: 422 when nothing was uploaded.
    """
    pairs = [(f.filename or "", f.file) for f in files]
    if not pairs:
        raise ServiceError(422, "files: at least one file is required", "validation_error")
    return pairs


def stored_uploads(folder: Path) -> list[Path]:
    """The uploads stored in ``folder`` by :func:`store_uploads_sync`, in upload order (without the manifest).

    A folder without a manifest (stored by an older version) gives its entries by name.
    """
    entries = sorted(p for p in folder.iterdir() if p.name != MANIFEST)
    try:
        names = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return entries
    ordered = [folder / n for n in names if isinstance(n, str) and (folder / n).exists()]
    return ordered + [p for p in entries if p not in ordered]


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


def _plain_word(stem: str) -> bool:
    """A short lower-case word (``link``, ``scan``): as a bare stem, far likelier a word of a message than a name."""
    return len(stem) <= 4 and stem.isalpha() and stem.islower()


class Redactor:
    """Hides server folders and client-supplied names in message text.

    A name is added with :meth:`add` (a file name or a path: each component counts, and a file name also
    without its suffixes); it is replaced by ``<name>`` wherever it stands as a whole word (case-sensitive;
    letters and digits on either side make it part of another word). Left alone, because they identify no one
    and messages need them: names whose stem is shorter than three characters; stems that are a layout word
    (``dicom``, ``series``...) or one of ``keep`` (a task's channel names: ``t1``, ``flair``); and the bare stem
    of a file name when it is a lower-case word of at most four letters (``link`` of ``link.npy``: the whole
    name is still hidden). Folder names and the names tasks give their inputs are hidden whole, whatever they are.

    Args:
        folders: server folders, removed from paths in the text (:func:`scrub`).
        keep: more words never redacted.
    """

    def __init__(self, folders: Sequence[Path] = (), keep: Iterable[str] = ()) -> None:
        self.folders = list(folders)
        self.keep = {w.casefold() for w in (*LAYOUT_WORDS, *keep)}
        self._names: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, name: str) -> None:
        """Hide ``name`` (a file name or a path) from now on."""
        for part in _SEPARATORS.split(name):
            for form in {part.strip(), safe_name(part.strip(), "")}:
                stem = form.split(".")[0]
                if len(stem) < MIN_REDACTED or stem.casefold() in self.keep:
                    continue
                candidates = [form]
                if stem != form and not _plain_word(stem):
                    candidates.append(stem)
                for candidate in candidates:
                    if candidate not in self._names:
                        self._names.add(candidate)
                        self._pattern = None

    def __call__(self, text: str) -> str:
        text = scrub(text, *self.folders)
        if not self._names:
            return text
        if self._pattern is None:
            alternatives = "|".join(re.escape(n) for n in sorted(self._names, key=len, reverse=True))
            self._pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")
        return self._pattern.sub(REDACTED, text)


class UploadRefs:
    """References to the inputs of one upload by position, and the redaction of its names.

    - ``files[i]``: the ``i``-th uploaded file (0-based, in the order of the multipart ``files`` fields);
    - ``files[i]#k``: the ``k``-th input found in upload ``i`` (0-based, in the task's order) when the upload is
      an archive or holds several inputs;
    - ``files[i,j]``: an input made of several uploads (a case sent as its separate files).

    Args:
        uploads: the stored uploads in upload order (:func:`stored_uploads`).
        upload_dir: the private folder they are stored in (every name under it is redacted from messages).
        keep: words never redacted (the task's channel names).
        folders: more server folders to hide in messages.
    """

    def __init__(
        self, uploads: Sequence[Path], upload_dir: Path, *, keep: Iterable[str] = (), folders: Sequence[Path] = ()
    ) -> None:
        self._given = [os.path.normpath(p) for p in uploads]
        self._uploads = list(uploads)
        self._resolved: list[Path] | None = None
        self.redact = Redactor([upload_dir, *folders], keep)
        for p in upload_dir.rglob("*"):
            self.redact.add(p.name)

    def upload_of(self, path: str | Path) -> int | None:
        """The position of the upload ``path`` is (or is inside), or ``None``.

        A path under an upload as given (what the task's grouping returns for the paths it was handed) is matched
        by its text; any other is resolved and compared with the resolved uploads.
        """
        given = os.path.normpath(path)
        for i, root in enumerate(self._given):
            if given == root or given.startswith(root + os.sep):
                return i
        try:
            resolved = Path(path).resolve()
        except (OSError, ValueError):
            return None
        if self._resolved is None:
            self._resolved = [p.resolve() for p in self._uploads]
        for i, root_path in enumerate(self._resolved):
            if resolved == root_path or root_path in resolved.parents:
                return i
        return None

    def upload_ref(self, path: str | Path) -> str:
        """``files[i]`` for a path of upload ``i``; otherwise the path, redacted."""
        i = self.upload_of(path)
        return f"files[{i}]" if i is not None else self.redact(str(path))

    def item_refs(self, items: Sequence[Any]) -> list[str | None]:
        """The reference of each grouped input (``None`` for one outside every upload)."""
        sources = [sorted({i for p in it.paths.values() if (i := self.upload_of(p)) is not None}) for it in items]
        counts: dict[int, int] = {}
        for s in sources:
            if len(s) == 1:
                counts[s[0]] = counts.get(s[0], 0) + 1
        seen: dict[int, int] = {}
        refs: list[str | None] = []
        for s in sources:
            if not s:
                refs.append(None)
            elif len(s) > 1:
                refs.append(f"files[{','.join(str(i) for i in s)}]")
            elif self._uploads[s[0]].is_dir() or counts[s[0]] > 1:
                k = seen[s[0]] = seen.get(s[0], -1) + 1
                refs.append(f"files[{s[0]}]#{k}")
            else:
                refs.append(f"files[{s[0]}]")
        return refs

    def error(self, exc: BaseException) -> tuple[str, str]:
        """``(reference, message)`` of an error about the upload: an :class:`InputError` by the upload its path
        belongs to, anything else by its redacted text."""
        if isinstance(exc, InputError):
            ref = self.upload_ref(exc.path)
            return ref, f"{ref}: {self.redact(exc.problem)}"
        text = self.redact(str(exc))
        return "upload", text


# an absolute (or home-relative) POSIX path: not preceded by a word character, a dot or a slash (so relative
# paths, ratios and URLs are left alone); a path component stops at whitespace, quotes and punctuation
_COMPONENT = r"[^\s/'\"`,;:()\[\]{}<>]+"
_ABS_PATH = re.compile(rf"(?<![\w.~/-])~?/(?:{_COMPONENT}/)*({_COMPONENT})/?")


def redact_paths(text: str) -> str:
    """Replace every absolute server path in a message by its last component.

    ``CheckpointError: /srv/ckpt/model.pt: not a readable medinfer checkpoint`` becomes
    ``CheckpointError: model.pt: not a readable medinfer checkpoint``: the file stays recognisable, the
    server's folders do not show. Relative paths (an input's name inside its upload) are left as they are.
    """
    return _ABS_PATH.sub(lambda m: m.group(1), text)
