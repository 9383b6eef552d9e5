"""Zip members with odd names: every one is an ``ArchiveError`` (HTTP 400) naming the archive, never an OSError."""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from pipelines.common import archives
from pipelines.common.archives import ArchiveError, safe_extract_zip


def _zip(members: list[tuple[str, bytes]], *, modes: dict[str, int] | None = None) -> bytes:
    """An in-memory archive with these members in this order (names exactly as given, ``/`` ending a folder)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point of some archives here
        for name, data in members:
            info = zipfile.ZipInfo(name)
            if name in (modes or {}):
                info.external_attr = (modes or {})[name] << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _with_nul() -> bytes:
    """An archive whose member name holds a NUL byte (zipfile cannot write one: patch the name in the bytes)."""
    raw = _zip([("okQQname.npy", b"x")])
    assert raw.count(b"QQ") == 2  # the local header and the central directory
    return raw.replace(b"QQ", b"\x00\x00")


ODD = [
    ("file-then-folder", _zip([("a", b"x"), ("a/b.npy", b"y")]), "inside 'a', which is also a file"),
    ("folder-then-file", _zip([("a/b.npy", b"y"), ("a", b"x")]), "both a file and a folder"),
    ("folder-entry-and-file", _zip([("a/", b""), ("a", b"x")]), "both a file and a folder"),
    ("file-and-folder-entry", _zip([("a", b"x"), ("a/", b"")]), "both a file and a folder"),
    ("nul", _with_nul(), "NUL character"),
    ("newline", _zip([("a\nb.npy", b"x")]), "control characters"),
    ("long-component", _zip([("d/" + "n" * 256 + ".npy", b"x")]), "name part over 255 bytes"),
    ("long-multibyte-component", _zip([("é" * 128 + ".npy", b"x")]), "name part over 255 bytes"),
    ("long-name", _zip([("/".join(["d" * 200] * 6) + "/x.npy", b"x")]), "name over 1024 bytes"),
    ("deep", _zip([("d/" * 40 + "x.npy", b"x")]), "41 path parts; the limit is 32"),
    ("absolute", _zip([("/etc/x.npy", b"x")]), "unsafe path"),
    ("dotdot", _zip([("a/../../x.npy", b"x")]), "unsafe path"),
    ("backslash-dotdot", _zip([("..\\..\\x.npy", b"x")]), "unsafe path"),
    ("drive", _zip([("C:/x.npy", b"x")]), "unsafe path"),
    ("duplicate", _zip([("a.npy", b"x"), ("a.npy", b"y")]), "appears twice"),
    ("duplicate-after-backslash", _zip([("d/a.npy", b"x"), ("d\\a.npy", b"y")]), "appears twice"),
    ("duplicate-after-dot", _zip([("d/a.npy", b"x"), ("d/./a.npy", b"y")]), "appears twice"),
    ("empty-name", _zip([("./", b"")]), "empty name"),
    ("symlink", _zip([("l.npy", b"/etc/passwd")], modes={"l.npy": stat.S_IFLNK | 0o777}), "link or special file"),
    ("fifo", _zip([("f.npy", b"")], modes={"f.npy": stat.S_IFIFO | 0o644}), "link or special file"),
]


@pytest.mark.parametrize(("data", "words"), [(d, w) for _, d, w in ODD], ids=[k for k, _, _ in ODD])
def test_odd_member_names_are_archive_errors(data: bytes, words: str, tmp_path: Path) -> None:
    archive = tmp_path / "odd.zip"
    archive.write_bytes(data)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError) as err:
        safe_extract_zip(archive, dest, max_total_bytes=1 << 20, max_members=100, label="upload.zip")
    assert err.value.status == 400
    assert str(err.value).startswith("upload.zip: ")
    assert words in err.value.problem
    assert list(dest.iterdir()) == [], "names are checked before anything is written"
    assert {p.name for p in tmp_path.iterdir()} == {"odd.zip", "out"}, "nothing escaped"


def test_a_very_long_name_is_shown_cut(tmp_path: Path) -> None:
    archive = tmp_path / "long.zip"
    archive.write_bytes(_zip([("n" * 5000, b"x")]))
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match=r"5000 characters\) has a name over") as err:
        safe_extract_zip(archive, tmp_path / "out", max_total_bytes=1 << 20, max_members=10)
    assert len(str(err.value)) < 400


def test_ordinary_names_extract(tmp_path: Path) -> None:
    """Folders given or implied, ``./`` prefixes, backslash separators and non-ASCII names all land in place."""
    archive = tmp_path / "ok.zip"
    members = [
        ("series/", b""),
        ("series/IM1.dcm", b"1"),
        ("./series/sub/IM2.dcm", b"2"),
        ("win\\IM3.dcm", b"3"),
        ("ünïcode/" + "n" * 200 + ".npy", b"4"),
        ("d/" * 30 + "deep.npy", b"5"),
    ]
    archive.write_bytes(_zip(members))
    dest = tmp_path / "out"
    dest.mkdir()
    assert safe_extract_zip(archive, dest, max_total_bytes=1 << 20, max_members=10) == dest
    assert (dest / "series" / "IM1.dcm").read_bytes() == b"1"
    assert (dest / "series" / "sub" / "IM2.dcm").read_bytes() == b"2"
    assert (dest / "win" / "IM3.dcm").read_bytes() == b"3"
    assert (dest / "ünïcode" / ("n" * 200 + ".npy")).read_bytes() == b"4"
    assert dest.joinpath(*["d"] * 30, "deep.npy").read_bytes() == b"5"


def test_bounds_are_module_constants() -> None:
    """The name bounds the docs quote."""
    assert (archives.MAX_COMPONENT_BYTES, archives.MAX_NAME_BYTES, archives.MAX_DEPTH) == (255, 1024, 32)
