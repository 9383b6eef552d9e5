"""Model registry in the spirit of timm: ``@register_model`` factories named ``<task>_<arch>``.

Each factory carries a frozen :class:`ModelSpec` describing what the network consumes and produces, so the
test battery, the CLI and the service can reason about every model without special cases.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

__all__ = ["ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]

# The package whose modules define registered models. They are discovered (every module but this one and private
# ``_`` ones) and imported on the first registry lookup, not at ``import models``: nothing heavy happens there.
_PACKAGE = __name__.rpartition(".")[0]


@dataclass(frozen=True)
class ModelSpec:
    """What a registered network consumes and produces.

    Args:
        task: task name the model belongs to (``brats``, ``ecg``...).
        spatial_dims: 1, 2 or 3; the number of spatial axes after batch and channel.
        in_channels: names of the input channels, in order (modalities or leads).
        label_names: names of the output labels or regions, in order.
        output_activation: how logits become probabilities (``sigmoid``, ``softmax``, ``multilevel``...).
        roi_size: the patch or input size the published recipe uses.
        data_card: data card file name under ``data_cards/``.
        paper: the reference the architecture follows.
        tiny_kwargs: keyword arguments that build a small instance, for tests and the demo.
        example_size: spatial size of a test input for the tiny instance.
        legacy_kwargs: keyword arguments assumed for checkpoints whose model_kwargs predate an option (the value
            that reproduces the network those checkpoints were saved from, where the default has changed since).
    """

    task: str
    spatial_dims: int
    in_channels: tuple[str, ...]
    label_names: tuple[str, ...]
    output_activation: str
    roi_size: tuple[int, ...]
    data_card: str
    paper: str
    tiny_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    example_size: tuple[int, ...] = ()
    legacy_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {self.spatial_dims}")
        if not self.in_channels:
            raise ValueError("in_channels must name at least one channel")
        object.__setattr__(self, "tiny_kwargs", MappingProxyType(dict(self.tiny_kwargs)))
        object.__setattr__(self, "legacy_kwargs", MappingProxyType(dict(self.legacy_kwargs)))


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelSpec]] = {}
_loaded = False


def register_model(name: str, spec: ModelSpec) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` (``<task>_<arch>``).

    Raises:
        ValueError: if the name is taken or does not start with the spec's task.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name][0] is not factory:
            raise ValueError(f"model {name!r} is already registered")
        if not name.startswith(spec.task + "_"):
            raise ValueError(f"model name {name!r} must start with its task {spec.task!r} and an underscore")
        _REGISTRY[name] = (factory, spec)
        return factory

    return decorator


def _model_modules() -> list[str]:
    """Every public module of the models package except this one (each registers its models on import)."""
    package = importlib.import_module(_PACKAGE)
    own = __name__.rpartition(".")[2]
    return [
        f"{_PACKAGE}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if info.name != own and not info.name.startswith("_")
    ]


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for module in _model_modules():
            importlib.import_module(module)
        _loaded = True


def _lookup(name: str) -> tuple[Callable[..., nn.Module], ModelSpec]:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(sorted(_REGISTRY))}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Raises:
        ValueError: for an unknown name (with close suggestions) or invalid keyword arguments.
    """
    factory, _ = _lookup(name)
    return factory(**kwargs)


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered model."""
    return _lookup(name)[1]


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally only those of one task."""
    _ensure_loaded()
    return sorted(n for n, (_, s) in _REGISTRY.items() if task is None or s.task == task)
