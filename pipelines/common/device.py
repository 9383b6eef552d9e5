"""Devices and mixed precision, decided in one place for training, the CLI and the service."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; anything else is checked and returned.

    Raises:
        ValueError: CUDA requested but absent, or not ``auto``, ``cpu`` or ``cuda[:N]``.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def amp_enabled(device: Any, requested: bool) -> bool:
    """Mixed precision is used only when asked for and only on CUDA (CPU float16 autocast is slow and lossy)."""
    kind = device.type if hasattr(device, "type") else str(device).split(":")[0]
    return bool(requested) and kind == "cuda"


def autocast(device: Any, requested: bool) -> AbstractContextManager[Any]:
    """float16 autocast on CUDA when ``requested``; a no-op context everywhere else."""
    if not amp_enabled(device, requested):
        return nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.float16)
