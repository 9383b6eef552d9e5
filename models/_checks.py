"""Argument checks shared by the U-Nets (a private module: the registry does not import it for models)."""

from __future__ import annotations


def check_unet_arguments(in_channels: int, depth: int, base_filters: int, dropout: float) -> None:
    """Raise ``ValueError`` naming the first out-of-range argument of a U-Net."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if depth < 2:
        raise ValueError(f"depth must be >= 2, got {depth}")
    if base_filters < 1:
        raise ValueError(f"base_filters must be >= 1, got {base_filters}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
