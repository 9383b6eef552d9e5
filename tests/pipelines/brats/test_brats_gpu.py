"""CUDA path: the same prediction on GPU (with and without AMP) as on CPU. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.brats.infer import BratsPredictor
from pipelines.common.checkpoint import load_checkpoint
from pipelines.common.task import PredictOptions

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("amp", [False, True])
def test_cuda_matches_cpu(brats_random_checkpoint: Path, amp: bool) -> None:
    ckpt = load_checkpoint(brats_random_checkpoint)
    torch.manual_seed(0)
    x = torch.randn(4, 48, 40, 36)
    cpu = BratsPredictor(ckpt, PredictOptions(device="cpu")).infer_maps(x)
    gpu = BratsPredictor(ckpt, PredictOptions(device="cuda", amp=amp)).infer_maps(x)
    assert gpu.device.type == "cpu"
    assert gpu.shape == cpu.shape
    assert torch.allclose(gpu, cpu, atol=5e-2 if amp else 1e-4)
