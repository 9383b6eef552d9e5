"""Helpers shared by test modules (``tests/conftest.py`` puts ``tests/lib`` on ``sys.path``)."""

from __future__ import annotations

import gzip
import io
import json
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def torchvision_resnet18_state(prefix: str = "", seed: int = 0, batches: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors in torchvision's ``resnet18().state_dict()`` layout (built by hand: no torchvision here)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.rand(c, generator=gen) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=gen)
        state[f"{name}.running_mean"] = torch.randn(c, generator=gen)
        state[f"{name}.running_var"] = torch.rand(c, generator=gen) + 0.5
        if batches:
            state[f"{name}.num_batches_tracked"] = torch.randint(1, 10_000, (), generator=gen)

    state["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=gen)
    bn("bn1", 64)
    prev = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            name, cin = f"layer{stage}.{block}", prev if block == 0 else width
            state[f"{name}.conv1.weight"] = torch.randn(width, cin, 3, 3, generator=gen)
            bn(f"{name}.bn1", width)
            state[f"{name}.conv2.weight"] = torch.randn(width, width, 3, 3, generator=gen)
            bn(f"{name}.bn2", width)
            if block == 0 and stage > 1:
                state[f"{name}.downsample.0.weight"] = torch.randn(width, cin, 1, 1, generator=gen)
                bn(f"{name}.downsample.1", width)
        prev = width
    state["fc.weight"] = torch.randn(1000, 512, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return {prefix + k: v for k, v in state.items()}


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR width and height replaced (and the chunk's CRC recomputed); pixel data unchanged."""
    assert png[12:16] == b"IHDR"
    data = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png[8:12] + b"IHDR" + data + struct.pack(">I", zlib.crc32(b"IHDR" + data)) + png[33:]


# -- a corpus of bad inputs (tests/test_bad_input_corpus.py sends it through every task's real readers) --------
NOISE = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
#: every suffix some task accepts; the corpus has an empty and a random-bytes file of each
CORPUS_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".dcm", ".hea", ".csv", ".npy", ".png", ".jpg", ".tif", ".zip")


@dataclass(frozen=True)
class BadInput:
    """One hostile input: its files (name → bytes, written into a folder of their own) and the file given to a task.

    Args:
        id: test id.
        build: the files, by name.
        main: the name of the file passed on (a WFDB record's ``.hea``).
    """

    id: str
    build: Callable[[], dict[str, bytes]]
    main: str

    def write(self, root: Path) -> Path:
        """Write the files into ``root/<id>/``; return the main file's path."""
        folder = root / self.id
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.build().items():
            (folder / name).write_bytes(data)
        return folder / self.main


def zip_bytes(members: dict[str, bytes], *, link: str | None = None, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``members`` (deflated by default), plus a symbolic-link member ``link`` (to /etc/passwd) when given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def nifti_bytes(
    shape: tuple[int, ...] = (16, 16, 16),
    fill: float | None = None,
    *,
    compress: bool = True,
    dims: tuple[int, ...] | None = None,
    pixdim: tuple[float, ...] | None = None,
    dtype: type = np.float32,
) -> bytes:
    """A NIfTI-1 file (random values, or ``fill``), its header's ``dim`` or ``pixdim`` (with qform/sform codes 0)
    overwritten when given."""
    import nibabel as nib

    data: np.ndarray = (
        np.random.default_rng(1).random(shape).astype(dtype) if fill is None else np.full(shape, fill, dtype)
    )
    raw = bytearray(nib.Nifti1Image(data, np.eye(4)).to_bytes())
    if dims is not None:
        raw[40:56] = struct.pack("<8h", *dims)
    if pixdim is not None:
        raw[76:108] = struct.pack("<8f", *pixdim)
        raw[252:256] = struct.pack("<hh", 0, 0)
    return gzip.compress(bytes(raw)) if compress else bytes(raw)


def dicom_bytes(
    *, pixels: bool = True, rows: int = 8, cols: int = 8, z: int = 0, data: bytes | None = None, ecg: bool = False
) -> bytes:
    """One DICOM file of series 1.2.3.9: an MR slice at z (16-bit, 8×8 pixels of data whatever ``rows`` and
    ``cols`` claim, or ``data``), without pixel data, or an ECG object without a waveform."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    sop = "1.2.840.10008.5.1.4.1.1.9.1.1" if ecg else "1.2.840.10008.5.1.4.1.1.4"
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop)
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(f"1.2.3.9.{z}")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = f"1.2.3.9.{z}"
    ds.SeriesInstanceUID = "1.2.3.9"
    ds.StudyInstanceUID = "1.2.3"
    ds.Modality = "ECG" if ecg else "MR"
    if not ecg:
        ds.InstanceNumber = z + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 1.0
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        if pixels:
            ds.PixelData = data if data is not None else np.ones((8, 8), "<u2").tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _image_bytes(fmt: str, width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def patch_jpeg_size(jpg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its baseline frame header (SOF0) claiming ``width × height``; scan data unchanged."""
    pos = jpg.find(b"\xff\xc0")
    assert pos >= 0
    out = bytearray(jpg)
    out[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one strip of 8-bit gray claims ``width × height`` pixels; 16 bytes of data."""
    data_at = 8 + 2 + 12 * 10 + 4
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, data_at),
               (277, 3, 1), (278, 4, height), (279, 4, 16), (284, 3, 1)]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        ifd += struct.pack("<HHII", tag, typ, 1, value) if typ == 4 else struct.pack("<HHIHH", tag, typ, 1, value, 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x80" * 16


def npy_bytes(arr: np.ndarray) -> bytes:
    """An in-memory ``.npy`` file (pickled when ``arr`` holds objects)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype.kind == "O")
    return buf.getvalue()


def npy_claiming(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A ``.npy`` header claiming ``shape`` followed by 64 bytes of data."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64


def wfdb_header(n_sig: int = 12, fs: str = "100", length: str = "100", fmt: str = "16", gain: str = "200",
                file: str = "r.dat") -> str:  # fmt: skip
    """The text of a WFDB header ``r.hea`` (its fields as given, however absurd)."""
    leads = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    lines = [f"r {n_sig} {fs} {length}"]
    lines += [f"{file} {fmt} {gain}/mV 16 0 0 0 0 {leads[i % 12]}" for i in range(min(n_sig, 12))]
    return "\n".join(lines) + "\n"


def _wfdb(header: str, dat: bytes | None = b"\0" * 2400) -> Callable[[], dict[str, bytes]]:
    return lambda: {"r.hea": header.encode(), **({"r.dat": dat} if dat is not None else {})}


def _one(name: str, make: Callable[[], bytes]) -> Callable[[], dict[str, bytes]]:
    return lambda: {name: make()}


def bad_input_corpus() -> list[BadInput]:
    """Hostile and broken files of every accepted format: each must be refused with an error naming it."""
    out: list[BadInput] = []

    def add(id_: str, name: str, make: Callable[[], bytes]) -> None:
        out.append(BadInput(id_, _one(name, make), name))

    for suffix in CORPUS_SUFFIXES:
        tag = suffix.strip(".").replace(".", "-")
        if suffix == ".hea":  # a WFDB record: header and signal file
            out.append(BadInput("empty-hea", _wfdb("", b""), "r.hea"))
            out.append(BadInput("random-hea", lambda: {"r.hea": NOISE, "r.dat": NOISE}, "r.hea"))
            continue
        add(f"empty-{tag}", f"empty{suffix}", lambda: b"")
        add(f"random-{tag}", f"noise{suffix}", lambda: NOISE)
    # volumes
    add("nifti-truncated-gzip", "trunc.nii.gz", lambda: nifti_bytes()[:60])
    add("nifti-truncated-data", "trunc.nii", lambda: nifti_bytes(compress=False)[:1000])
    add("nifti-gzip-cut-in-data", "cut.nii.gz", lambda: nifti_bytes()[:-200])
    add("nifti-nan", "nan.nii.gz", lambda: nifti_bytes(fill=np.nan))
    add("nifti-inf", "inf.nii.gz", lambda: nifti_bytes(fill=np.inf))
    add("nifti-huge-dims", "huge.nii.gz", lambda: nifti_bytes(dims=(3, 30000, 30000, 30000, 1, 1, 1, 1)))
    add("nifti-negative-dims", "neg.nii.gz", lambda: nifti_bytes(dims=(3, -16, 16, 16, 1, 1, 1, 1)))
    add("nifti-2d", "flat.nii.gz", lambda: nifti_bytes((16, 16)))
    add("nifti-5d", "five.nii.gz", lambda: nifti_bytes((8, 8, 8, 2, 2)))
    add("nifti-one-voxel", "dot.nii.gz", lambda: nifti_bytes((1, 1, 1)))
    add("nifti-zero-spacing", "zero.nii.gz", lambda: nifti_bytes(pixdim=(1, 0, 0, 0, 1, 1, 1, 1)))
    add("nifti-nan-spacing", "nansp.nii.gz", lambda: nifti_bytes(pixdim=(1, np.nan, 1, 1, 1, 1, 1, 1)))
    add("nifti-complex", "cplx.nii.gz", lambda: nifti_bytes(dtype=np.complex64))
    mha = "ObjectType = Image\nNDims = 3\nDimSize = {}\nElementType = MET_UCHAR\nElementDataFile = {}\n"
    add("mha-huge-dims", "huge.mha", lambda: mha.format("100000 100000 100000", "LOCAL").encode() + NOISE)
    add("mha-truncated", "trunc.mha", lambda: mha.format("16 16 16", "LOCAL").encode() + NOISE[:10])
    add("mha-data-file-outside", "ext.mha", lambda: mha.format("2 2 2", "/etc/passwd").encode())
    nrrd = "NRRD0004\ntype: uint8\ndimension: 3\nsizes: {}\nencoding: raw\n{}"
    add("nrrd-huge-dims", "huge.nrrd", lambda: nrrd.format("100000 100000 100000", "\n").encode() + NOISE)
    add("nrrd-truncated", "trunc.nrrd", lambda: nrrd.format("16 16 16", "\n").encode() + NOISE[:10])
    add("nrrd-data-file-outside", "ext.nrrd", lambda: nrrd.format("2 2 2", "data file: /etc/passwd\n").encode())
    add("dicom-without-pixel-data", "nopix.dcm", lambda: dicom_bytes(pixels=False))
    add("dicom-truncated-pixel-data", "short.dcm", lambda: dicom_bytes(data=b"\1\0" * 7))
    add("dicom-preamble-then-noise", "fake.dcm", lambda: b"\0" * 128 + b"DICM" + NOISE)
    add("dicom-ecg-without-waveform", "nw.dcm", lambda: dicom_bytes(ecg=True))
    add("dicom-series-without-pixels", "nopix.zip",
        lambda: zip_bytes({f"s/IM{z}.dcm": dicom_bytes(pixels=False, z=z) for z in range(3)}))  # fmt: skip
    add("dicom-series-huge-dims", "big.zip",
        lambda: zip_bytes({f"s/IM{z}.dcm": dicom_bytes(rows=65535, cols=65535, z=z) for z in range(3)}))  # fmt: skip
    add("dicom-series-short-pixel-data", "short.zip",
        lambda: zip_bytes({f"s/IM{z}.dcm": dicom_bytes(rows=64, cols=64, z=z) for z in range(3)}))  # fmt: skip
    # archives
    add("zip-bomb", "bomb.zip", lambda: zip_bytes({"s/zeros.dcm": b"\0" * (64 << 20)}))  # 64 MiB in ~64 KiB
    add("zip-traversal", "trav.zip", lambda: zip_bytes({"../../evil.dcm": dicom_bytes()}))
    add("zip-absolute-member", "abs.zip", lambda: zip_bytes({"/tmp/evil.dcm": dicom_bytes()}))
    add("zip-backslash-traversal", "bs.zip", lambda: zip_bytes({"..\\..\\evil.dcm": dicom_bytes()}))
    add("zip-symlink", "link.zip", lambda: zip_bytes({"s/a.dcm": dicom_bytes()}, link="s/b.dcm"))
    add("zip-corrupt", "bad.zip", lambda: b"PK\x03\x04" + NOISE)
    add("zip-empty-archive", "none.zip", lambda: zip_bytes({}))
    add("zip-many-members", "many.zip", lambda: zip_bytes({f"s/m{i}.dcm": b"" for i in range(5000)}))
    add("zip-no-dicom", "docs.zip", lambda: zip_bytes({"readme.txt": b"hi"}))
    # signals
    out.append(BadInput("wfdb-absurd-length", _wfdb(wfdb_header(length="99999999999")), "r.hea"))
    out.append(BadInput("wfdb-absurd-signal-count", _wfdb(wfdb_header(n_sig=100000)), "r.hea"))
    out.append(BadInput("wfdb-absurd-rate", _wfdb(wfdb_header(fs="1e30")), "r.hea"))
    out.append(BadInput("wfdb-zero-rate", _wfdb(wfdb_header(fs="0")), "r.hea"))
    out.append(BadInput("wfdb-zero-gain", _wfdb(wfdb_header(gain="0")), "r.hea"))
    out.append(BadInput("wfdb-unknown-format", _wfdb(wfdb_header(fmt="999")), "r.hea"))
    out.append(BadInput("wfdb-data-file-outside", _wfdb(wfdb_header(file="../../../../etc/passwd")), "r.hea"))
    out.append(BadInput("wfdb-header-without-dat", _wfdb(wfdb_header(), None), "r.hea"))
    out.append(BadInput("wfdb-short-dat", _wfdb(wfdb_header(length="1000"), b"\0" * 10), "r.hea"))
    add("csv-million-columns", "wide.csv", lambda: b"1," * 1_000_000 + b"1\n")
    add("csv-text", "text.csv", lambda: b"a,b,c\nd,e,f\n")
    add("csv-nan", "nan.csv", lambda: b"\n".join([b",".join([b"nan"] * 12)] * 1000))
    add("csv-formulas", "f.csv", lambda: b"=cmd|' /C calc'!A0,@SUM(1),+1,-1\n")
    add("csv-ragged", "rag.csv", lambda: b"1,2,3\n1,2\n" * 500)
    add("npy-pickled-object", "obj.npy", lambda: npy_bytes(np.array([{"a": 1}], dtype=object)))
    add("npy-header-claims-huge", "huge.npy", lambda: npy_claiming((100000, 100000)))
    add("npy-nan", "nan.npy", lambda: npy_bytes(np.full((12, 1000), np.nan)))
    add("npy-3d", "cube.npy", lambda: npy_bytes(np.zeros((2, 12, 1000))))
    add("npy-strings", "str.npy", lambda: npy_bytes(np.array(["a"] * 12)))
    # images
    add("png-claims-100k-square", "huge.png", lambda: patch_png_size(_image_bytes("PNG", 32, 32), 100_000, 100_000))
    add("png-truncated", "trunc.png", lambda: _image_bytes("PNG", 64, 64)[:100])
    add("png-one-pixel", "dot.png", lambda: _image_bytes("PNG", 1, 1))
    add("jpg-claims-65k-square", "huge.jpg", lambda: patch_jpeg_size(_image_bytes("JPEG", 64, 64), 65500, 65500))
    add("jpg-truncated", "trunc.jpg", lambda: _image_bytes("JPEG", 64, 64)[:300])
    add("tif-claims-100k-square", "huge.tif", lambda: tiff_claiming(100_000, 100_000))
    add("tif-truncated", "short.tif", lambda: tiff_claiming(64, 64))
    add("unsupported-exe", "virus.exe", lambda: NOISE)
    return out


# -- the CLI in a fresh interpreter ---------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]

#: runs the CLI's main as the console script does (after running the files the second argument names, which may
#: register tasks); prints the exit code and which of the modules the third argument names it imported
_CLI_PROBE = """
import importlib.util, json, sys
for i, path in enumerate(json.loads(sys.argv[2])):
    spec = importlib.util.spec_from_file_location(f"plugin{i}", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
heavy = json.loads(sys.argv[3])
sys.argv = ["medinfer", *json.loads(sys.argv[1])]
from app.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "imported": [m for m in heavy if m in sys.modules]}))
"""


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter run in the repository with ``args``; its output decoded as UTF-8 whatever the locale
    (CI's is ASCII)."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        cwd=ROOT,
        timeout=120,
    )


def cli_probe(args: list[str], heavy: tuple[str, ...], plugins: tuple[Path, ...] = ()) -> tuple[dict, str]:
    """``medinfer ARGS`` in a fresh interpreter: ({"code": exit code, "imported": which of ``heavy`` it loaded},
    its standard error). ``plugins`` are Python files run first (they may register tasks)."""
    res = run_python("-c", _CLI_PROBE, json.dumps(args), json.dumps([str(p) for p in plugins]), json.dumps(list(heavy)))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def fenced_blocks(text: str) -> list[list[str]]:
    """The lines of every fenced code block of a Markdown text (fences may be indented)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks
