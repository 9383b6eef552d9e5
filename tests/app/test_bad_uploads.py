"""A corpus of bad uploads: each gets a 4xx with a clear message, and the server stays healthy after."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from medinfer_testlib import zip_bytes
from serve_testkit import npy_bytes, wait_until

RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()
Files = list[tuple[str, tuple[str, bytes]]]


@dataclass
class Bad:
    """One bad upload: files (or a raw body), form data, the expected status and words the message must hold."""

    id: str
    files: Callable[[], Files] | None
    status: int
    says: tuple[str, ...] = ()
    data: dict[str, str] = field(default_factory=dict)
    raw: tuple[bytes, str] | None = None  # (body, content type) instead of files


def options(**values: Any) -> dict[str, str]:
    """The ``options`` form field (the task's options as a JSON object)."""
    return {"options": json.dumps(values)}


RATE_100 = options(sampling_rate=100)


def one(name: str, data: bytes) -> Callable[[], Files]:
    return lambda: [("files", (name, data))]


def many(*pairs: tuple[str, bytes]) -> Callable[[], Files]:
    return lambda: [("files", p) for p in pairs]


def bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.npy", b"\0" * (8 << 20))  # 8 MiB of zeros deflate to a few KiB; the limit is 4 MiB
    return buf.getvalue()


def lying_bomb() -> bytes:
    """A bomb whose central directory claims a tiny size: the bound must hold while writing."""
    data = bytearray(bomb())
    # patch file_size (uncompressed) in the local header and the central directory to 10 bytes
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = data.find(sig)
        data[pos + off : pos + off + 4] = struct.pack("<I", 10)
    return bytes(data)


GENERIC: list[Bad] = [
    Bad("empty-file", one("a.npy", b""), 400, ("files[0]", "empty")),
    Bad("random-bytes-npy", one("a.npy", NOISE), 400, ("files[0]",)),
    Bad("npy-with-nan", one("nan.npy", npy_bytes([1.0, float("nan")])), 400, ("files[0]", "finite")),
    Bad(
        "pickled-npy",
        one(
            "obj.npy",
            b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
            + b" " * 40
            + b"\n"
            + NOISE[:64],
        ),
        400,
        ("files[0]",),
    ),
    Bad("unsupported-extension", one("virus.exe", NOISE), 400, ("files[0]", "unsupported format")),
    Bad("traversal-filename", one("../../etc/passwd.npy", NOISE), 400, ("files[0]",)),
    Bad("zip-dotdot-member", one("x.zip", zip_bytes({"../../evil.npy": npy_bytes([1])})), 400, ("unsafe path",)),
    Bad("zip-absolute-member", one("x.zip", zip_bytes({"/etc/evil.npy": npy_bytes([1])})), 400, ("unsafe path",)),
    Bad("zip-symlink-member", one("x.zip", zip_bytes({"a.npy": npy_bytes([1])}, link="link.npy")), 400, ("link",)),
    Bad("zip-bomb", one("bomb.zip", bomb()), 413, ("files[0]", "limit")),
    Bad("zip-bomb-lying-sizes", one("liar.zip", lying_bomb()), 400, ("files[0]", "cannot be read")),
    Bad("zip-too-many-members", one("many.zip", zip_bytes({f"m{i}.npy": b"" for i in range(60)})), 413, ("members",)),
    Bad("zip-corrupt", one("c.zip", b"PK\x03\x04" + NOISE), 400, ("files[0]", "zip")),
    Bad("zip-empty", one("e.zip", zip_bytes({})), 400, ("files[0]",)),
    Bad("zip-nothing-usable", one("docs.zip", zip_bytes({"readme.txt": b"hi", "x/md": b"#"})), 415, ("no usable",)),
    Bad("too-large-body", one("big.npy", b"\0" * (3 << 20)), 413, ("upload limit",)),
    Bad("not-multipart", None, 415, ("multipart",), raw=(b'{"x": [1, 2]}', "application/json")),
    Bad("no-content-type", None, 415, ("multipart",), raw=(NOISE, "")),
    Bad("no-files-field", None, 422, ("files",), data={"options": RATE_100["options"]}),
    Bad("negative-rate", one("s.csv", b"1,2\n"), 422, ("sampling_rate",), data=options(sampling_rate=-5)),
    Bad("non-numeric-rate", one("s.csv", b"1,2\n"), 422, ("sampling_rate",), data=options(sampling_rate="fast")),
    Bad("unknown-option", one("s.csv", b"1,2\n"), 422, ("unknown option", "speed"), data=options(speed=3)),
    Bad("options-not-json", one("s.csv", b"1,2\n"), 422, ("options", "JSON"), data={"options": "{rate: 5"}),
    Bad("options-not-object", one("s.csv", b"1,2\n"), 422, ("options", "object"), data={"options": "[100]"}),
    Bad("option-as-form-field", one("s.csv", b"1,2\n"), 422, ("sampling_rate", "options"), {"sampling_rate": "9"}),
    Bad("csv-without-rate", one("s.csv", b"1,2\n"), 400, ("files[0]", "sampling_rate")),
]


def post(client: TestClient, task: str, bad: Bad) -> Any:
    url = f"/api/v1/models/{task}/predict"
    if bad.raw is not None:
        body, ctype = bad.raw
        return client.post(url, content=body, headers={"content-type": ctype} if ctype else {})
    if bad.files is None:
        # multipart, but without the ``files`` field
        return client.post(url, data=bad.data, files={"attachment": ("note.txt", b"x")})
    return client.post(url, files=bad.files(), data=bad.data)


def check(r: Any, bad: Bad) -> None:
    assert r.status_code == bad.status, (bad.id, r.text)
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    message = body["error"]["message"]
    assert message
    assert len(message) < 2000
    for word in bad.says:
        assert word.lower() in message.lower(), (bad.id, message)
    assert "/tmp/" not in message
    assert "upload-" not in message


@pytest.mark.parametrize("bad", GENERIC, ids=[b.id for b in GENERIC])
def test_generic_bad_upload(client: TestClient, bad: Bad) -> None:
    check(post(client, "addone", bad), bad)
    assert client.get("/healthz").status_code == 200


def test_server_healthy_after_the_whole_corpus(client: TestClient, settings: Any) -> None:
    for bad in GENERIC:
        post(client, "addone", bad)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    r = client.post("/api/v1/models/addone/predict", files={"files": ("ok.npy", npy_bytes([1]))})
    assert r.status_code == 200
    assert r.json()["results"][0]["outputs"]["values"] == [2.0]
    metrics = client.get("/metrics").text
    assert 'medinfer_request_failures_total{code="400",task="addone"}' in metrics
    # nothing escaped the private upload folder, and no upload is left behind
    tmp = Path(settings.data_dir) / "tmp"
    wait_until(lambda: list(tmp.iterdir()) == [])
    assert not (Path(settings.data_dir).parent / "evil.npy").exists()


# -- real tasks ------------------------------------------------------------------------------------------


def nifti_bytes(shape: tuple[int, ...] = (8, 8, 8), huge: bool = False, fill: float = 0.0) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.full(shape, fill, dtype=np.float32), np.eye(4))
    raw = bytearray(img.to_bytes())
    if huge:  # header claims 30000^3 voxels; the data is tiny
        raw[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)
    return gzip.compress(bytes(raw))


def brats_case(make: Callable[[str], bytes], roles: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")) -> Files:
    return [("files", (f"case_{r}.nii.gz", make(r))) for r in roles]


def dicom_no_pixels() -> bytes:
    import pydicom
    from pydicom.dataset import FileMetaDataset

    members = {}
    for role in ("t1", "t1ce", "t2", "flair"):
        for z in range(3):
            ds = pydicom.Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.{z}"
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            ds.SOPInstanceUID = f"1.2.3.{len(role)}.{z}"
            ds.SeriesInstanceUID = f"1.2.3.{len(role)}"
            ds.Modality = "MR"
            ds.InstanceNumber = z + 1
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            members[f"study/{role}/IM{z}.dcm"] = buf.getvalue()
    return zip_bytes(members)


BRATS: list[Bad] = [
    Bad("brats-empty-files", lambda: brats_case(lambda r: b""), 400, ("empty",)),
    Bad("brats-random-bytes-nifti", lambda: brats_case(lambda r: NOISE), 400, ("files[",)),
    Bad("brats-truncated-gzip", lambda: brats_case(lambda r: nifti_bytes()[:60]), 400, ("files[",)),
    Bad("brats-huge-header", lambda: brats_case(lambda r: nifti_bytes(huge=True)), 400, ("files[",)),
    Bad("brats-2d-nifti", lambda: brats_case(lambda r: nifti_bytes((8, 8))), 400, ("files[",)),
    Bad("brats-three-modalities", lambda: brats_case(lambda r: nifti_bytes(), ("t1", "t1ce", "t2")), 400, ()),
    Bad(
        "brats-random-dicom-series",
        one("s.zip", zip_bytes({f"st/{r}/IM1.dcm": NOISE for r in ("t1", "t1ce", "t2", "flair")})),
        400,
        (),
    ),
    Bad("brats-dicom-without-pixel-data", one("nopix.zip", dicom_no_pixels()), 400, ()),
    Bad("brats-unnamed-nifti", one("scan.nii.gz", nifti_bytes()), 400, ("files[0]",)),
    Bad(
        "brats-mismatched-shapes",
        lambda: brats_case(lambda r: nifti_bytes((8, 8, 8) if r != "t2" else (9, 8, 8))),
        400,
        (),
    ),
    Bad("brats-one-voxel", lambda: brats_case(lambda r: nifti_bytes((1, 1, 1))), 400, ()),
    Bad("brats-nifti-with-nan", lambda: brats_case(lambda r: nifti_bytes(fill=float("nan"))), 400, ()),
]


@pytest.mark.slow
@pytest.mark.parametrize("bad", BRATS, ids=[b.id for b in BRATS])
def test_brats_bad_upload(brats_client: TestClient, bad: Bad) -> None:
    check(post(brats_client, "brats", bad), bad)
    assert brats_client.get("/readyz").status_code == 200


def csv_leads(n_leads: int, seconds: float = 10, fs: int = 100, scale: float = 1.0) -> bytes:
    t = np.arange(int(seconds * fs)) / fs
    sig = scale * np.stack([np.sin(2 * np.pi * (1 + i / 10) * t) for i in range(n_leads)], axis=1)
    out = io.StringIO()
    np.savetxt(out, sig, delimiter=",", fmt="%.4f")
    return out.getvalue().encode()


def ecg_dicom_without_waveform() -> bytes:
    import pydicom
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "ECG"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


ECG: list[Bad] = [
    Bad("ecg-random-wfdb", many(("r.hea", NOISE), ("r.dat", NOISE)), 400, ("files[",)),
    Bad("ecg-empty-csv", one("e.csv", b""), 400, ("files[0]",), data=RATE_100),
    Bad("ecg-csv-without-rate", one("x.csv", csv_leads(12)), 400, ("files[0]", "sampling rate")),
    Bad("ecg-three-leads", one("three.csv", csv_leads(3)), 400, ("files[0]", "12 leads"), RATE_100),
    Bad("ecg-too-short", one("short.csv", csv_leads(12, seconds=1)), 400, ("files[0]",), RATE_100),
    Bad("ecg-random-dicom", one("w.dcm", NOISE), 400, ("files[0]",)),
    Bad("ecg-dicom-without-waveform", one("nw.dcm", ecg_dicom_without_waveform()), 400, ("files[0]", "waveform")),
    Bad("ecg-npy-nan", one("n.npy", npy_bytes([float("nan")] * 12000)), 400, ("files[0]",), RATE_100),
    Bad("ecg-json-not-a-record", one("x.json", json.dumps({"a": 1}).encode()), 400, ("files[0]",)),
    Bad("ecg-rate-below-range", one("x.csv", csv_leads(12)), 422, ("sampling_rate",), options(sampling_rate=10)),
    Bad("ecg-rate-above-range", one("x.csv", csv_leads(12)), 422, ("sampling_rate",), options(sampling_rate=1e6)),
    Bad(
        "ecg-rate-approximate",
        one("x.csv", csv_leads(12)),
        422,
        ("sampling_rate", "360.0001"),
        options(sampling_rate=360.0001),
    ),
    Bad("ecg-microvolts-as-mv", one("uv.csv", csv_leads(12, scale=1000.0)), 400, ("files[0]", "µV"), RATE_100),
]


@pytest.mark.slow
@pytest.mark.parametrize("bad", ECG, ids=[b.id for b in ECG])
def test_ecg_bad_upload(ecg_client: TestClient, bad: Bad) -> None:
    check(post(ecg_client, "ecg", bad), bad)
    assert ecg_client.get("/readyz").status_code == 200


def test_the_corpus_is_large_enough() -> None:
    assert len(GENERIC) + len(BRATS) + len(ECG) >= 25
