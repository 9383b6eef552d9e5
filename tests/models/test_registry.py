"""One battery over every registered model (timm style), plus the registry's own behaviour."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from models import ModelSpec, create_model, get_model_spec, list_models, register_model
from models import registry as registry_module

ROOT = Path(__file__).resolve().parents[2]

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
    # training-time outputs: models with auxiliary heads (deep supervision, distance maps) expose them here
    forward = getattr(model, "forward_with_aux", model)
    outs = _outputs(forward(x))
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


def test_spec_legacy_kwargs_are_frozen() -> None:
    assert dict(get_model_spec("ecg_protoecgnet").legacy_kwargs) == {"fc_head": "pool"}
    spec = ModelSpec("x", 1, ("a",), ("b",), "sigmoid", (1,), "c.md", "p", legacy_kwargs={"k": 1})
    with pytest.raises(TypeError):
        spec.legacy_kwargs["k"] = 2  # type: ignore[index]
    assert dict(get_model_spec("brats_nested_unet").legacy_kwargs) == {}


_DROPIN = """
from torch import nn

from models.registry import ModelSpec, register_model

SPEC = ModelSpec("dropin", 1, ("a",), ("b",), "sigmoid", (4,), "none.md", "none")


@register_model("dropin_{name}", SPEC)
def factory() -> nn.Module:
    return nn.Identity()
"""


def test_dropped_in_module_is_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dropin_models.py").write_text(textwrap.dedent(_DROPIN.format(name="identity")))
    (tmp_path / "_dropin_private.py").write_text(textwrap.dedent(_DROPIN.format(name="private")))
    importlib.invalidate_caches()
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path)])
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    monkeypatch.setattr(registry_module, "_loaded", False)
    try:
        assert list_models("dropin") == ["dropin_identity"], "public modules are found, private ones skipped"
        assert isinstance(create_model("dropin_identity"), nn.Identity)
        assert "ecg_protoecgnet" in list_models()
    finally:
        for name in ("dropin_models", "_dropin_private"):
            sys.modules.pop(f"models.{name}", None)
            if hasattr(models, name):
                delattr(models, name)


def test_import_models_imports_no_model_module() -> None:
    code = "import models, sys; print('models.nested_unet' in sys.modules, 'models.protoecgnet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
