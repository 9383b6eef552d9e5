"""One battery over every registered model (timm style), plus the registry's own behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import ModelSpec, create_model, get_model_spec, list_models, register_model

ALL_MODELS = list_models()


def _outputs(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple):  # NamedTuple outputs: every tensor field
        return [t for field in out for t in _outputs(field)]
    return []


def _example(spec: ModelSpec, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, len(spec.in_channels), *spec.example_size)


def test_registry_lists_models() -> None:
    assert "brats_nested_unet" in ALL_MODELS
    assert list_models("brats") == ["brats_nested_unet"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_battery_forward_backward(name: str) -> None:
    spec = get_model_spec(name)
    assert name.startswith(spec.task + "_")
    torch.manual_seed(0)
    model = create_model(name, **spec.tiny_kwargs)
    x = _example(spec)
    outs = _outputs(model(x))
    assert outs, "model returned no tensor"
    logits = outs[0]
    assert logits.shape[0] == 2
    if spec.spatial_dims == 3:
        assert logits.shape[2:] == x.shape[2:], "dense 3D models keep the input's spatial size"
    for t in outs:
        assert torch.isfinite(t).all()
    sum(t.float().sum() for t in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_battery_eval_is_deterministic(name: str) -> None:
    spec = get_model_spec(name)
    torch.manual_seed(1)
    model_a = create_model(name, **spec.tiny_kwargs).eval()
    torch.manual_seed(1)
    model_b = create_model(name, **spec.tiny_kwargs).eval()
    x = _example(spec, batch=1)
    with torch.no_grad():
        a, b = _outputs(model_a(x))[0], _outputs(model_b(x))[0]
    assert torch.equal(a, b), "same seed must give the same weights and output"


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="did you mean brats_nested_unet"):
        create_model("brats_nested_unt")


def test_register_rejects_bad_names() -> None:
    spec = get_model_spec("brats_nested_unet")
    with pytest.raises(ValueError, match="must start with its task"):
        register_model("ecg_something", spec)(lambda: nn.Identity())
    with pytest.raises(ValueError, match="already registered"):
        register_model("brats_nested_unet", spec)(lambda: nn.Identity())


def test_spec_validates() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        ModelSpec("x", 4, ("a",), ("b",), "sigmoid", (1,), "c.md", "p")
