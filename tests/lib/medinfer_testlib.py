"""Helpers shared by test modules (``tests/conftest.py`` puts ``tests/lib`` on ``sys.path``)."""

from __future__ import annotations

import struct
import zlib

import torch


def torchvision_resnet18_state(prefix: str = "", seed: int = 0, batches: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors in torchvision's ``resnet18().state_dict()`` layout (built by hand: no torchvision here)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.rand(c, generator=gen) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=gen)
        state[f"{name}.running_mean"] = torch.randn(c, generator=gen)
        state[f"{name}.running_var"] = torch.rand(c, generator=gen) + 0.5
        if batches:
            state[f"{name}.num_batches_tracked"] = torch.randint(1, 10_000, (), generator=gen)

    state["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=gen)
    bn("bn1", 64)
    prev = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            name, cin = f"layer{stage}.{block}", prev if block == 0 else width
            state[f"{name}.conv1.weight"] = torch.randn(width, cin, 3, 3, generator=gen)
            bn(f"{name}.bn1", width)
            state[f"{name}.conv2.weight"] = torch.randn(width, width, 3, 3, generator=gen)
            bn(f"{name}.bn2", width)
            if block == 0 and stage > 1:
                state[f"{name}.downsample.0.weight"] = torch.randn(width, cin, 1, 1, generator=gen)
                bn(f"{name}.downsample.1", width)
        prev = width
    state["fc.weight"] = torch.randn(1000, 512, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return {prefix + k: v for k, v in state.items()}


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR width and height replaced (and the chunk's CRC recomputed); pixel data unchanged."""
    assert png[12:16] == b"IHDR"
    data = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png[8:12] + b"IHDR" + data + struct.pack(">I", zlib.crc32(b"IHDR" + data)) + png[33:]
