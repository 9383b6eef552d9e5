"""The faces know no task: nothing in ``app/`` names a task or a task's option, and each model loads once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from serve_testkit import npy_bytes, started_client

from app.settings import Settings
from pipelines.common.checkpoint import Checkpoint

APP = Path(__file__).resolve().parents[2] / "app"


def test_app_names_no_task_and_no_task_option() -> None:
    pattern = re.compile(r"sampling_rate|sw_batch|brats|ecg")
    hits = [
        f"{path.relative_to(APP.parent)}:{n}: {line.strip()}"
        for path in sorted(APP.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == [], "\n".join(hits)


def test_weights_load_once_whatever_the_requests_options(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[str] = []
    original = Checkpoint.build_model

    def counting(self: Checkpoint, device: object = "cpu") -> object:
        builds.append(self.task)
        return original(self, device)  # type: ignore[arg-type]

    monkeypatch.setattr(Checkpoint, "build_model", counting)
    client = started_client(settings)
    try:
        assert builds == ["addone"]
        for rate in (50, 250):
            data = {"options": json.dumps({"sampling_rate": rate})}
            r = client.post("/api/v1/models/addone/predict", files={"files": ("s.csv", b"1,2\n")}, data=data)
            assert r.status_code == 200
            assert r.json()["results"][0]["outputs"]["sampling_rate"] == rate
        plain = client.post("/api/v1/models/addone/predict", files={"files": ("a.npy", npy_bytes([1]))})
        assert plain.status_code == 200
        assert builds == ["addone"]
    finally:
        client.__exit__(None, None, None)
