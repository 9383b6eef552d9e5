"""Safe extraction of zip archives, shared by the readers (a zipped DICOM series) and the service's uploads.

An archive is untrusted input: a member path may try to escape the destination (absolute paths, ``..``,
drive letters), a member may be a symbolic link or a device, and a small file may unpack to gigabytes
(a zip bomb, or headers that lie about sizes). :func:`safe_extract_zip` refuses all of these and counts the
unpacked bytes while writing, so the bound holds whatever the headers claim.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from pipelines.common.errors import InputError

__all__ = ["MAX_MEMBERS", "MAX_UNPACKED_BYTES", "ArchiveError", "safe_extract_zip"]

#: bounds for archives read from the command line (the service has its own, from its settings)
MAX_MEMBERS = 4096
MAX_UNPACKED_BYTES = 2 * 1024**3
_DRIVE = re.compile(r"[A-Za-z]:")


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


def _member_path(root: Path, name: str, label: str | Path) -> Path:
    """Where a member lands under ``root``; refuses paths that are absolute, use ``..`` or escape ``root``."""
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and _DRIVE.fullmatch(parts[0])) or ".." in parts:
        raise ArchiveError(label, f"archive member {name!r} has an unsafe path")
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise ArchiveError(label, f"archive member {name!r} has an unsafe path")
    return target


def safe_extract_zip(
    archive: Path, dest: Path, *, max_total_bytes: int, max_members: int, label: str | Path | None = None
) -> Path:
    """Extract a zip archive refusing anything that could escape ``dest`` or exhaust the disk.

    Refused: absolute member paths, ``..`` components, drive letters, symbolic links and other special
    files, more than ``max_members`` members, more than ``max_total_bytes`` unpacked (declared, and counted
    while writing, so a lying header cannot get past the bound), and corrupt, encrypted or
    unsupported-compression members.

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
        root = dest.resolve()
        total = 0
        for member in members:
            name = member.filename.replace("\\", "/")
            kind = stat.S_IFMT(member.external_attr >> 16)  # 0 when the archiver wrote no Unix mode
            target = _member_path(root, name, shown)
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise ArchiveError(shown, f"archive member {name!r} is a link or special file")
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(member) as src, target.open("wb") as out:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > max_total_bytes:
                            raise ArchiveError(
                                shown, f"archive unpacks to more than the limit of {max_total_bytes} bytes", 413
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError) as exc:
                raise ArchiveError(shown, f"archive member {name!r} cannot be read ({exc})") from exc
            except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encrypted members
                raise ArchiveError(shown, f"archive member {name!r} cannot be read ({exc})") from exc
    return dest
