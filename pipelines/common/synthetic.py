"""Marking datasets written by ``medinfer synth``: one marker file, read by every task's training run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: the file ``medinfer synth`` leaves at a synthetic dataset's root
MARKER = "medinfer_synthetic.json"


def mark_synthetic(root: Path, info: Mapping[str, Any]) -> Path:
    """Leave the marker (with how the data were made) at ``root``."""
    path = Path(root) / MARKER
    path.write_text(json.dumps({"generator": "medinfer synth", **info}, indent=2), encoding="utf-8")
    return path


def is_synthetic(root: Path) -> bool:
    """Whether a dataset was written by ``medinfer synth``."""
    return (Path(root) / MARKER).is_file()
