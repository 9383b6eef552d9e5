"""No patient identifiers in logs or responses: a DICOM series carrying PatientName, PatientID, birth date and
accession number goes through predict and a job; logs, responses and result files are searched."""

from __future__ import annotations

import io
import logging
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow

IDENTIFIERS = {
    "PatientName": "DOE^JANE^QUINTESSA",
    "PatientID": "PID99887766",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC55443322",
    "OtherPatientIDs": "OPID12121212",
}


@pytest.fixture(scope="module")
def tagged_series_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A brats case as four DICOM series carrying patient identifiers, zipped."""
    import pydicom

    from pipelines.common.task import get_task

    root = get_task("brats").synth(tmp_path_factory.mktemp("phi"), n=1, seed=3, dicom=True)
    dicom = next(p for p in sorted(root.iterdir()) if p.is_dir()) / "dicom"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(dicom.rglob("*.dcm")):
            ds = pydicom.dcmread(f)
            for tag, value in IDENTIFIERS.items():
                setattr(ds, tag, value)
            out = io.BytesIO()
            ds.save_as(out)
            zf.writestr(f"study/{f.relative_to(dicom)}", out.getvalue())
    return buf.getvalue()


def assert_clean(text: str, where: str) -> None:
    for tag, value in IDENTIFIERS.items():
        for form in {value, value.replace("^", " "), "DOE", "QUINTESSA"}:
            assert form not in text, f"{tag} ({form}) found in {where}"


def test_no_identifiers_in_logs_or_responses(
    brats_client: TestClient, tagged_series_zip: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[tuple[str, str]] = []
    files = {"files": ("series.zip", tagged_series_zip)}
    for endpoint in ("predict", "explain"):
        r = brats_client.post(f"/api/v1/models/brats/{endpoint}", files=files)
        assert r.status_code == 200, r.text
        texts.append((endpoint, r.text))
        for f in r.json()["files"]:
            if f["name"].endswith((".json", ".csv")):
                texts.append((f["name"], brats_client.get(f["url"]).text))
    r = brats_client.post("/api/v1/jobs", files=files, data={"task": "brats"})
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while (job := brats_client.get(f"/api/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["state"] == "succeeded", job
    texts.append(("job", brats_client.get(f"/api/v1/jobs/{job_id}").text))
    result = brats_client.get(f"/api/v1/jobs/{job_id}/result")
    texts.append(("job result", result.text))
    for f in result.json()["files"]:
        if f["name"].endswith((".json", ".csv")):
            texts.append((f["name"], brats_client.get(f["url"]).text))
    # a failing upload of the same tagged files (three series only) must not echo them either
    with zipfile.ZipFile(io.BytesIO(tagged_series_zip)) as zf:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as out:
            for info in zf.infolist():
                if "/flair/" not in info.filename:
                    out.writestr(info, zf.read(info))
    bad = brats_client.post("/api/v1/models/brats/predict", files={"files": ("three.zip", buf.getvalue())})
    assert bad.status_code == 400
    texts.append(("error", bad.text))
    texts.append(("metrics", brats_client.get("/metrics").text))
    for where, text in texts:
        assert_clean(text, where)
    assert_clean(caplog.text, "logs")
    assert_clean("\n".join(str(Path(r.pathname)) + r.getMessage() for r in caplog.records), "log records")
