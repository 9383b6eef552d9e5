"""Explanations for image classifiers: Grad-CAM on MONAI's implementation, without its side effects.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, https://arxiv.org/abs/1610.02391) weights a layer's activations by the spatial mean
of the class score's gradient and keeps the positive part. ``monai.visualize.GradCAM`` computes it; around it,
:func:`grad_cam` undoes what MONAI leaves behind on the model (1.6: hooks registered without handles, the
target layer's ``inplace`` switched off, every module's train/eval flag reset together, parameter gradients
overwritten) and scores each input by its own class (MONAI's ``class_score`` indexes every input with every
selected class, which mixes classes within a batch).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: the hook tables of ``nn.Module`` that a wrapper may add to; anything added during a call is removed after it
_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _per_sample_hooks() -> type:
    """MONAI's ``ModelWithHooks`` scoring input ``i`` by its own class ``class_idx[i]`` (imported lazily)."""
    from monai.visualize.class_activation_maps import ModelWithHooks

    class _PerSampleHooks(ModelWithHooks):
        def class_score(self, logits: torch.Tensor, class_idx: Any) -> torch.Tensor:
            if logits.ndim != 2:
                raise ValueError(f"the model must return logits of shape (B, K); got shape {tuple(logits.shape)}")
            batch, n_classes = logits.shape
            index = torch.as_tensor(class_idx, device=logits.device).long().reshape(-1)
            if index.numel() == 1:
                index = index.expand(batch)
            if index.numel() != batch:
                raise ValueError(f"class_index has {index.numel()} entries for a batch of {batch}")
            if bool(((index < 0) | (index >= n_classes)).any()):
                raise ValueError(f"class_index {index.tolist()} out of range for {n_classes} classes")
            return logits.gather(1, index[:, None])[:, 0]

    return _PerSampleHooks


def _hook_state(model: nn.Module) -> list[tuple[nn.Module, str, set[int]]]:
    return [
        (module, table, set(getattr(module, table)))
        for module in model.modules()
        for table in _HOOK_TABLES
        if hasattr(module, table)
    ]


def _remove_new_hooks(state: list[tuple[nn.Module, str, set[int]]]) -> None:
    for module, table, before in state:
        hooks = getattr(module, table)
        for key in [k for k in hooks if k not in before]:
            del hooks[key]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target_layer: str,
    class_index: int | Sequence[int] | None = None,
) -> np.ndarray:
    """Grad-CAM maps of a classifier for a batch of images, at the images' size.

    The model runs in eval mode (its modules' train/eval flags are restored afterwards, each as it was), with
    gradients enabled whatever the caller's grad mode; hooks, the target layer's ``inplace`` flag and the
    parameters' ``.grad`` are left as they were. Frozen models (no parameter requiring a gradient) work: the
    gradient flows from the input.

    Args:
        model: returns logits of shape ``(B, K)`` for ``x``.
        x: images ``(B, C, H, W)`` (or ``(B, C, H, W, D)`` for volumes) on the model's device.
        target_layer: name of a module in ``model.named_modules()``, usually the last convolutional block.
        class_index: the class explained: one for the whole batch, one per input, or ``None`` for each input's
            arg-max class.

    Returns:
        float32 maps ``(B, H, W)`` (``(B, H, W, D)`` for volumes), each scaled to ``[0, 1]`` by its own
        minimum and maximum (all zeros where no location has positive evidence for the class).

    Raises:
        ValueError: if ``x`` has no spatial axes, ``target_layer`` is not a module of ``model``, the model does
            not return ``(B, K)`` logits, or ``class_index`` has the wrong length or an out-of-range class.
    """
    from monai.visualize import GradCAM

    if x.ndim < 3:
        raise ValueError(f"x must be (B, C, *spatial); got shape {tuple(x.shape)}")
    modules = dict(model.named_modules())
    if not target_layer or target_layer not in modules:
        close = difflib.get_close_matches(str(target_layer), [n for n in modules if n], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"target_layer {target_layer!r} is not a module of {type(model).__name__}{hint}")
    if class_index is not None and not isinstance(class_index, int):
        class_index = [int(c) for c in class_index]
        if len(class_index) != x.shape[0]:
            raise ValueError(f"class_index has {len(class_index)} entries for a batch of {x.shape[0]}")

    layer = modules[target_layer]
    modes = [(m, m.training) for m in model.modules()]
    hooks = _hook_state(model)
    inplace = layer.__dict__.get("inplace")
    grads = [(p, p.grad) for p in model.parameters()]
    full_backward = layer._is_full_backward_hook
    try:
        with torch.enable_grad():
            wrapped = _per_sample_hooks()(model, target_layer, register_forward=True, register_backward=True)
            cam = GradCAM(nn_module=wrapped, target_layers=target_layer, postprocessing=lambda m: m)
            # a leaf that requires grad, so the target layer gets a gradient even when every parameter is frozen
            maps = cam(x.detach().requires_grad_(True), class_idx=class_index)
    finally:
        _remove_new_hooks(hooks)
        layer._is_full_backward_hook = full_backward
        if inplace is not None:
            layer.__dict__["inplace"] = inplace
        for p, g in grads:
            p.grad = g
        for m, training in modes:
            m.training = training

    maps = maps.detach()[:, 0].float()  # (B, 1, *spatial) → (B, *spatial)
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - lo
    flat = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return flat.reshape(maps.shape).cpu().numpy().astype(np.float32, copy=False)
