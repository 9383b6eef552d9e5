"""The CLI's service face: the demo's closing curl examples (without starting the server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import _curl_example, _demo_service
from pipelines.common.task import InputItem


def test_curl_example_sends_every_file_of_the_stem(tmp_path: Path) -> None:
    for name in ("rec.hea", "rec.dat", "other.hea"):
        (tmp_path / name).write_bytes(b"x")
    cmd = _curl_example("ecg", InputItem("rec", {"record": tmp_path / "rec.hea"}), 8123)
    assert f"-F files=@{tmp_path / 'rec.dat'}" in cmd
    assert f"-F files=@{tmp_path / 'rec.hea'}" in cmd
    assert "other.hea" not in cmd
    assert cmd.endswith("http://127.0.0.1:8123/api/v1/models/ecg/predict")


def test_curl_example_zips_a_folder(tmp_path: Path) -> None:
    (tmp_path / "case").mkdir()
    cmd = _curl_example("brats", InputItem("case", {"t1": tmp_path / "case"}), 8000)
    assert "zip -qr - ." in cmd
    assert "filename=case.zip" in cmd


def test_demo_tail_prints_how_to_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "v.npy").write_bytes(b"x")
    _demo_service({"addone": InputItem("v", {"x": tmp_path / "v.npy"})}, 8765, serve=False)
    out = capsys.readouterr().out
    assert "medinfer serve --checkpoints" in out
    assert "--port 8765" in out
    assert "curl -s http://127.0.0.1:8765/readyz" in out
    assert "/api/v1/models/addone/predict" in out
