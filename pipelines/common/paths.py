"""Where medinfer keeps things on disk: one home for each folder, read by the CLI and the service alike."""

from __future__ import annotations

import os
from pathlib import Path

#: environment variable naming the installed-checkpoints folder
CHECKPOINTS_ENV = "MEDINFER_CHECKPOINTS"


def checkpoints_dir() -> Path:
    """Where installed checkpoints live: ``$MEDINFER_CHECKPOINTS`` or ``~/.cache/medinfer/checkpoints``."""
    env = os.environ.get(CHECKPOINTS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medinfer" / "checkpoints"
