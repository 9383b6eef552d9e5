"""Exceptions the faces (CLI, service) translate into user-facing errors."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A user-supplied input cannot be used; the message names the file and the problem.

    Args:
        path: the offending file or folder (or a display name for uploads).
        problem: what is wrong with it, in plain words.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or belongs to another task."""
