"""Opaque names: uploads whose file and folder names are patient identifiers (as PACS exports name them) leave
no trace of those names in responses, result URLs and files, download headers, logs, the job database or the
data folder; cases of the same name get outputs of their own; results name inputs by upload position."""

from __future__ import annotations

import io
import json
import logging
import re
import sqlite3
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_testkit import npy_bytes, wait_until

from app.settings import Settings

PREDICT = "/api/v1/models/addone/predict"
IDENTIFIERS = ("DOE", "JANE", "19610203", "SMITH", "JOHN", "MRN4455667", "PID998877", "ACC55443322")
REF = re.compile(r"files\[\d+(,\d+)*\](#\d+)?")


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def upload() -> list[tuple[str, tuple[str, bytes]]]:
    """A PACS-like export: folders named after patients, three cases named ``scan``, a bad file, a stray note."""
    export = zipped(
        {
            "DOE_JANE_19610203/scan.npy": npy_bytes([1]),
            "SMITH^JOHN_MRN4455667/scan.npy": npy_bytes([2]),
            "DOE_JANE_19610203/PID998877.npy": npy_bytes([3]),
        }
    )
    return [
        ("files", ("DOE_JANE_19610203.zip", export)),
        ("files", ("scan.npy", npy_bytes([4]))),
        ("files", ("PID998877_t1.npy", b"\x93NUMPY not really")),  # fails in prepare
        ("files", ("ACC55443322_notes.txt", b"referral")),  # not an input of the task
        ("files", ("DOE^JANE.csv", b"5,6\n")),
    ]


RATE = {"options": json.dumps({"sampling_rate": 100})}


def assert_clean(text: str, where: str) -> None:
    for ident in IDENTIFIERS:
        assert ident not in text, f"{ident} found in {where}: {text[:2000]}"


def fetch_all(client: TestClient, body: dict[str, Any], texts: list[tuple[str, str]]) -> None:
    """Every result file behind the links of a response: URL, download headers and (for text) content."""
    links = [f for res in body["results"] for f in res["files"]] + body["files"]
    assert links
    for link in links:
        texts.append(("url", link["url"]))
        got = client.get(link["url"])
        assert got.status_code == 200, link
        texts.append((f"headers of {link['name']}", json.dumps(dict(got.headers))))
        if link["name"].endswith((".json", ".csv")):
            texts.append((link["name"], got.text))


def check_results(client: TestClient, body: dict[str, Any]) -> None:
    results = body["results"]
    by_input = {r["input"]: r for r in results}
    assert len(by_input) == len(results) == 7
    assert all(REF.fullmatch(r["input"]) for r in results), [r["input"] for r in results]
    # the zip is upload 0: its inputs are files[0]#k; each plain file is files[i]
    assert {k: v["outputs"].get("values") for k, v in by_input.items() if v["status"] == "ok"} == {
        "files[0]#0": [4.0],
        "files[0]#1": [2.0],
        "files[0]#2": [3.0],
        "files[1]": [5.0],
        "files[4]": [6.0, 7.0],
    }
    assert by_input["files[2]"]["error"].startswith("files[2]: ")
    assert by_input["files[3]"]["error"] == "files[3]: has an unsupported format; expected .npy or .csv"
    # three inputs named "scan": each has its own files, and each file holds its own values
    masks = [next(f for f in r["files"] if f["role"] == "mask") for r in results if r["status"] == "ok"]
    assert len({m["name"] for m in masks}) == 5
    for r in results:
        for f in r["files"]:
            assert re.fullmatch(r"input-\d{3}_(out\.npy|explanation\.json)", f["name"]), f["name"]
        for m in r["files"]:
            if m["role"] == "mask":
                assert np.load(io.BytesIO(client.get(m["url"]).content)).tolist() == r["outputs"]["values"]


def check_report(client: TestClient, body: dict[str, Any]) -> None:
    report = client.get(next(f["url"] for f in body["files"] if f["name"] == "report.json")).json()
    rows = report["results"]
    names = [r["name"] for r in rows if r["name"]]
    assert len(names) == len(set(names)) == 6  # every grouped input, by its opaque output name
    for r in rows:
        assert REF.fullmatch(r["input"]), r
        assert all(REF.fullmatch(v) for v in r["source"].values()), r  # which upload it came from


def test_planted_identifiers_reach_no_response_file_log_or_row(
    client: TestClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[tuple[str, str]] = []
    for endpoint in ("predict", "explain"):
        r = client.post(f"/api/v1/models/addone/{endpoint}", files=upload(), data=RATE)
        assert r.status_code == 200, r.text
        texts.append((endpoint, r.text))
        body = r.json()
        check_results(client, body)
        check_report(client, body)
        fetch_all(client, body, texts)
    # the same upload as a job
    r = client.post("/api/v1/jobs", files=upload(), data={"task": "addone", **RATE})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 30
    while (job := client.get(f"/api/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    assert job["state"] == "succeeded", job
    texts.append(("job", json.dumps(job)))
    result = client.get(f"/api/v1/jobs/{job_id}/result")
    texts.append(("job result", result.text))
    check_results(client, result.json())
    fetch_all(client, result.json(), texts)
    # failures: every input bad, and an archive whose member path is unsafe
    bad = client.post(PREDICT, files={"files": ("PID998877_JANE_DOE.npy", b"garbage")})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "files[0]: is not a readable array (ValueError)"
    texts.append(("all failed", bad.text))
    unsafe = client.post(PREDICT, files={"files": ("x.zip", zipped({"../DOE_JANE_19610203/x.npy": b"x"}))})
    assert unsafe.status_code == 400
    assert "unsafe path" in unsafe.json()["error"]["message"]
    texts.append(("unsafe archive", unsafe.text))
    bad_job = client.post("/api/v1/jobs", files={"files": ("MRN4455667.npy", b"garbage")}, data={"task": "addone"})
    bad_id = bad_job.json()["id"]
    while client.get(f"/api/v1/jobs/{bad_id}").json()["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    texts.append(("failed job", client.get(f"/api/v1/jobs/{bad_id}").text))
    texts.append(("metrics", client.get("/metrics").text))
    for where, text in texts:
        assert_clean(text, where)
    # the job database, every row and column
    data = Path(settings.data_dir)
    with sqlite3.connect(data / "jobs.sqlite3") as conn:
        rows = conn.execute("SELECT * FROM jobs").fetchall()
    assert len(rows) >= 4
    assert_clean(repr(rows), "the job database")
    # the data folder: no stored file or folder is named after an input; no upload is left behind
    assert_clean("\n".join(str(p.relative_to(data)) for p in data.rglob("*")), "the data folder")
    wait_until(lambda: not any((data / "tmp").iterdir()))
    # the logs: messages and every record's fields
    assert_clean(caplog.text, "logs")
    assert_clean("\n".join(f"{r.pathname} {r.getMessage()} {r.args!r}" for r in caplog.records), "log records")


def test_redaction_hides_names_but_keeps_the_words_messages_need() -> None:
    from app.uploads import Redactor

    redact = Redactor([Path("/srv/data/tmp/upload-x")], keep=["t1", "flair"])
    for name in ("DOE_JANE_19610203/t1.nii.gz", "SMITH^JOHN/flair/IM0001.dcm", "link.npy", "case/dicom/series"):
        redact.add(name)
    text = (
        "/srv/data/tmp/upload-x/DOE_JANE_19610203/t1.nii.gz: missing flair beside DOE_JANE_19610203 "
        "(SMITH_JOHN, SMITH^JOHN, IM0001.dcm, IM0001); member 'link.npy' is a link; no dicom series in case"
    )
    assert redact(text) == (
        "<name>/t1.nii.gz: missing flair beside <name> (<name>, <name>, <name>, <name>); member '<name>' is a "
        "link; no dicom series in case"
    )
    assert redact("DOE_JANE_19610203_seg and XDOE_JANE_19610203") == "<name>_seg and XDOE_JANE_19610203"


NIFTI_FIELDS = {"descrip": "DOE^JANE PID998877", "aux_file": "MRN4455667", "intent_name": "SMITH", "db_name": "JOHN"}


@pytest.mark.slow
def test_a_volume_export_named_and_tagged_after_patients(
    brats_client: TestClient, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Two cases of the same name in patient-named folders, with identifiers in the NIfTI header fields the
    reader reads: distinct outputs, and no identifier in the response, the result files or their headers."""
    import gzip

    import nibabel as nib

    from pipelines.common.task import get_task

    caplog.set_level(logging.DEBUG)
    root = get_task("brats").synth(tmp_path_factory.mktemp("named"), n=1, seed=5)
    case = next(p for p in sorted(root.iterdir()) if p.is_dir())
    members: dict[str, bytes] = {}
    for src in sorted(case.glob("*.nii.gz")):
        if src.name.endswith("_seg.nii.gz"):
            continue
        img = nib.Nifti1Image.from_bytes(gzip.decompress(src.read_bytes()))
        for field, value in NIFTI_FIELDS.items():
            img.header[field] = value.encode()
        modality = src.name.split("_")[-1]
        for folder in ("DOE_JANE_19610203", "SMITH^JOHN"):
            members[f"{folder}/PID998877_{modality}"] = gzip.compress(img.to_bytes())
    r = brats_client.post("/api/v1/models/brats/predict", files={"files": ("ACC55443322.zip", zipped(members))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [res["input"] for res in body["results"]] == ["files[0]#0", "files[0]#1"]
    texts = [("response", r.text)]
    segs = []
    for res in body["results"]:
        assert res["status"] == "ok", res
        seg = next(f for f in res["files"] if f["role"] == "segmentation")
        segs.append(seg["name"])
        got = brats_client.get(seg["url"])
        header = nib.Nifti1Image.from_bytes(gzip.decompress(got.content)).header
        texts.append(("segmentation header", repr({f: header[f] for f in NIFTI_FIELDS}) + repr(header.extensions)))
    assert len(set(segs)) == 2  # same case name twice: two outputs
    fetch_all(brats_client, body, texts)
    for where, text in texts:
        assert_clean(text, where)
    assert_clean(caplog.text, "logs")
