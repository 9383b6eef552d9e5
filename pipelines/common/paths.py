"""Where medinfer keeps things on disk: one home for each folder, read by the CLI and the service alike."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

#: environment variable naming the installed-checkpoints folder
CHECKPOINTS_ENV = "MEDINFER_CHECKPOINTS"


def checkpoints_dir() -> Path:
    """Where installed checkpoints live: ``$MEDINFER_CHECKPOINTS`` or ``~/.cache/medinfer/checkpoints``."""
    env = os.environ.get(CHECKPOINTS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medinfer" / "checkpoints"


def file_safe_names(names: Sequence[str]) -> list[str]:
    """Names usable in a file name on every system, one per name, in order.

    Characters other than ASCII letters, digits, ``-``, ``_`` and ``.`` become ``_``, dots and underscores at
    either end are dropped (no hidden files, no ``..``), and at most 64 characters are kept; a name left empty
    becomes ``map<i>`` (its position). Names that then collide, letter case aside (macOS and Windows file
    systems ignore it), get ``_2``, ``_3``... appended.
    """
    out: list[str] = []
    taken: set[str] = set()
    for i, name in enumerate(names):
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:64] or f"map{i}"
        safe, k = base, 1
        while safe.lower() in taken:
            k += 1
            safe = f"{base}_{k}"
        taken.add(safe.lower())
        out.append(safe)
    return out
