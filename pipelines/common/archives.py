"""Safe extraction of zip archives, shared by the readers (a zipped DICOM series) and the service's uploads.

An archive is untrusted input: a member path may try to escape the destination (absolute paths, ``..``,
drive letters), a member may be a symbolic link or a device, a name may be one the file system cannot hold
(NUL or control characters, a component over 255 bytes, a path too long or too deep, a file and a folder of the
same name, the same name twice), and a small file may unpack to gigabytes (a zip bomb, or headers that lie about
sizes). :func:`safe_extract_zip` checks every name before writing anything, refuses all of these, and counts the
unpacked bytes while writing, so the bound holds whatever the headers claim.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from pipelines.common.errors import InputError

__all__ = [
    "MAX_COMPONENT_BYTES",
    "MAX_DEPTH",
    "MAX_MEMBERS",
    "MAX_NAME_BYTES",
    "MAX_UNPACKED_BYTES",
    "ArchiveError",
    "safe_extract_zip",
]

#: bounds for archives read from the command line (the service has its own, from its settings)
MAX_MEMBERS = 4096
MAX_UNPACKED_BYTES = 2 * 1024**3
#: bounds on member names: a component as long as common file systems allow, a whole name and a depth well
#: within PATH_MAX once under the destination folder
MAX_COMPONENT_BYTES = 255
MAX_NAME_BYTES = 1024
MAX_DEPTH = 32
_DRIVE = re.compile(r"[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ArchiveError(InputError):
    """An archive that is unsafe, corrupt or too large.

    Args:
        path: the archive (or the name it is shown by).
        problem: what is wrong with it.
        status: 413 when a size or count bound is exceeded, else 400 (the HTTP status the service answers).
    """

    def __init__(self, path: str | Path, problem: str, status: int = 400) -> None:
        super().__init__(path, problem)
        self.status = status


def _shown(name: str) -> str:
    """A member name for a message: quoted with escapes (control characters stay visible), long ones cut."""
    return repr(name) if len(name) <= 80 else repr(name[:60]) + f"... ({len(name)} characters)"


def _member_parts(member: zipfile.ZipInfo, label: str | Path) -> tuple[str, ...]:
    """The path components a member lands at; refuses every name that is unsafe or that a file system rejects.

    Backslashes count as separators (older Windows archivers write them), so ``..\\x`` is caught like ``../x``.
    """
    raw = member.orig_filename  # zipfile cuts ``filename`` at the first NUL; the original keeps it
    shown = _shown(raw)
    if "\x00" in raw:
        raise ArchiveError(label, f"archive member {shown} has a NUL character in its name")
    if _CONTROL.search(raw):
        raise ArchiveError(label, f"archive member {shown} has control characters in its name")
    name = raw.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and _DRIVE.fullmatch(parts[0])) or ".." in parts:
        raise ArchiveError(label, f"archive member {shown} has an unsafe path")
    if not parts:
        raise ArchiveError(label, f"archive member {shown} has an empty name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ArchiveError(label, f"archive member {shown} has a name over {MAX_NAME_BYTES} bytes")
    if len(parts) > MAX_DEPTH:
        raise ArchiveError(label, f"archive member {shown} has {len(parts)} path parts; the limit is {MAX_DEPTH}")
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise ArchiveError(label, f"archive member {shown} has a name part over {MAX_COMPONENT_BYTES} bytes")
    return parts


def _plan(members: list[zipfile.ZipInfo], label: str | Path) -> list[tuple[zipfile.ZipInfo, tuple[str, ...], bool]]:
    """Check every member's name and kind before anything is written.

    Refuses, besides what :func:`_member_parts` refuses: links and special files, the same path twice (after
    ``\\`` → ``/`` and ``.`` components), and a path that is a file in one member and a folder in another.
    """
    plan = []
    files: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()  # named by a member, or above one
    listed: set[tuple[str, ...]] = set()  # folders that are members themselves
    for member in members:
        parts = _member_parts(member, label)
        shown = _shown(member.orig_filename)
        kind = stat.S_IFMT(member.external_attr >> 16)  # 0 when the archiver wrote no Unix mode
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(label, f"archive member {shown} is a link or special file")
        is_dir = member.is_dir() or kind == stat.S_IFDIR
        if (parts in files and is_dir) or (parts in folders and not is_dir):
            raise ArchiveError(label, f"archive member {shown} is both a file and a folder")
        if parts in files or parts in listed:
            raise ArchiveError(label, f"archive member {shown} appears twice in the archive")
        for depth in range(1, len(parts)):
            if parts[:depth] in files:
                above = "/".join(parts[:depth])
                raise ArchiveError(label, f"archive member {shown} is inside {above!r}, which is also a file")
            folders.add(parts[:depth])
        if is_dir:
            folders.add(parts)
            listed.add(parts)
        else:
            files.add(parts)
        plan.append((member, parts, is_dir))
    return plan


def safe_extract_zip(
    archive: Path, dest: Path, *, max_total_bytes: int, max_members: int, label: str | Path | None = None
) -> Path:
    """Extract a zip archive refusing anything that could escape ``dest`` or exhaust the disk.

    Refused before anything is written: absolute member paths, ``..`` components, drive letters, symbolic
    links and other special files, NUL or control characters in a name, a name part over
    ``MAX_COMPONENT_BYTES``, a name over ``MAX_NAME_BYTES`` or deeper than ``MAX_DEPTH``, the same path twice,
    a path that is both a file and a folder, and more than ``max_members`` members. Refused while writing:
    more than ``max_total_bytes`` unpacked (declared, and counted while writing, so a lying header cannot get
    past the bound), and corrupt, encrypted or unsupported-compression members.

    Args:
        archive: the zip file.
        dest: an empty folder to extract into.
        max_total_bytes: bound on the total unpacked size.
        max_members: bound on the number of members.
        label: the name messages show (an uploaded file's name); default: ``archive``.

    Returns:
        ``dest``.

    Raises:
        ArchiveError: ``status`` 400 for an unsafe, empty or corrupt archive, 413 for one too large.
    """
    shown = archive if label is None else label
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(shown, f"not a readable zip archive ({exc})") from exc
    with zf:
        members = zf.infolist()
        if len(members) > max_members:
            raise ArchiveError(shown, f"archive has {len(members)} members; the limit is {max_members}", 413)
        if not members:
            raise ArchiveError(shown, "archive is empty")
        declared = sum(m.file_size for m in members)
        if declared > max_total_bytes:
            raise ArchiveError(shown, f"archive unpacks to {declared} bytes; the limit is {max_total_bytes} bytes", 413)
        plan = _plan(members, shown)
        root = dest.resolve()
        total = 0
        for member, parts, is_dir in plan:
            name = _shown(member.orig_filename)
            target = root.joinpath(*parts)
            if target.resolve() != target or root not in target.parents:  # a last guard: never leave ``dest``
                raise ArchiveError(shown, f"archive member {name} has an unsafe path")
            try:
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ArchiveError(shown, f"archive member {name} cannot be extracted ({exc.strerror})") from exc
            try:
                with zf.open(member) as src, target.open("xb") as out:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > max_total_bytes:
                            raise ArchiveError(
                                shown, f"archive unpacks to more than the limit of {max_total_bytes} bytes", 413
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError) as exc:
                raise ArchiveError(shown, f"archive member {name} cannot be read ({exc})") from exc
            except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encrypted members
                raise ArchiveError(shown, f"archive member {name} cannot be read ({exc})") from exc
            except OSError as exc:  # the names were checked above: what is left is the member's data or the disk
                raise ArchiveError(shown, f"archive member {name} cannot be read ({exc.strerror or exc})") from exc
    return dest
