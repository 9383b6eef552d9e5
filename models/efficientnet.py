"""EfficientNet classifier for breast histopathology (Behzadpour et al. 2024, arXiv 2411.17870).

The trunk is MONAI's :class:`~monai.networks.nets.EfficientNetBN` (B0 by default, the variant configurable)
without its classification layer; global average pooling and dropout feed one linear head: 2 classes
(benign, malignant) for the binary model, 8 subtypes (A, F, PT, TA, DC, LC, MC, PC) for the subtype model,
which starts from the binary model's trunk (the paper's transfer). Nothing is downloaded: the trunk starts
from random weights unless :func:`load_trunk_weights` is given a local state dict (ImageNet weights a user
brings). The network returns logits; softmax lives in ``pipelines``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import EfficientNetBN
from torch import nn

from models.registry import ModelSpec, register_model

__all__ = [
    "BINARY_LABELS",
    "BREAKHIS_SPEC",
    "SUBTYPES",
    "VARIANTS",
    "BreakHisNet",
    "breakhis_efficientnet",
    "load_trunk_weights",
]

#: the binary head's classes
BINARY_LABELS: tuple[str, ...] = ("benign", "malignant")
#: the subtype head's classes: benign adenosis, fibroadenoma, phyllodes tumour, tubular adenoma; malignant
#: ductal, lobular, mucinous and papillary carcinoma
SUBTYPES: tuple[str, ...] = ("A", "F", "PT", "TA", "DC", "LC", "MC", "PC")
VARIANTS: tuple[str, ...] = tuple(f"efficientnet-b{i}" for i in range(8))
#: the module Grad-CAM looks at: the trunk's last convolution (1×1 head conv before pooling)
CAM_LAYER = "trunk._conv_head"


class BreakHisNet(nn.Module):
    """EfficientNet trunk + pooled features + one linear head.

    Args:
        variant: ``efficientnet-b0`` … ``efficientnet-b7``.
        num_classes: 2 (binary) or 8 (subtypes); any positive number works.
        in_channels: 3 (RGB).
        dropout: dropout before the head.
        bn_momentum: batch-norm momentum (PyTorch convention); 0.01 is EfficientNet's (Keras 0.99). Short runs
            on small data want 0.1, so that the running statistics used at inference catch up.

    Input (B, 3, H, W) ImageNet-normalised RGB; output logits (B, num_classes).
    """

    def __init__(
        self,
        variant: str = "efficientnet-b0",
        num_classes: int = 2,
        in_channels: int = 3,
        dropout: float = 0.2,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        self.variant = variant
        self.num_classes = num_classes
        self.trunk = EfficientNetBN(
            variant,
            pretrained=False,
            progress=False,
            spatial_dims=2,
            in_channels=in_channels,
            num_classes=1,
            norm=("batch", {"eps": 1e-3, "momentum": bn_momentum}),
        )
        features = self.trunk._fc.in_features
        self.trunk._fc = nn.Identity()  # type: ignore[assignment]  # the trunk ends with pooled features
        self.trunk._dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, num_classes)
        self.num_features = features

    def reset_head(self, num_classes: int) -> None:
        """A fresh head of ``num_classes`` (the transfer from the binary model keeps the trunk)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)

    def set_trunk_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the trunk (the head always trains)."""
        for p in self.trunk.parameters():
            p.requires_grad_(trainable)

    def train(self, mode: bool = True) -> BreakHisNet:
        """Train mode, except that a frozen trunk stays in eval mode (batch-norm statistics and dropout fixed)."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.trunk.parameters()):
            self.trunk.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of a batch (B, 3, H, W)."""
        return self.head(self.trunk(x))


def load_trunk_weights(model: BreakHisNet, state_dict: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy a local EfficientNet state dict into the trunk; its classifier (``_fc``) is skipped.

    Accepts MONAI/lukemelas EfficientNet keys (``_conv_stem.weight``, ``_blocks.0...``), the same prefixed by
    ``trunk.`` (a medinfer state dict) or by ``module.`` (a DataParallel save). All-or-nothing: nothing is
    copied unless every trunk tensor is found with the right shape.

    Returns:
        ``{"loaded": model keys, "skipped": source keys not used}``.

    Raises:
        ValueError: a missing trunk tensor or a shape mismatch, naming the key (another variant, say).
    """
    target = {k: v for k, v in model.state_dict().items() if k.startswith("trunk.")}
    source: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        name = key.removeprefix("module.").removeprefix("trunk.")
        if name.startswith("_fc.") or f"trunk.{name}" not in target:
            skipped.append(key)
            continue
        source[f"trunk.{name}"] = value
    missing = [k for k in target if k not in source and not k.endswith("num_batches_tracked")]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(f"state dict is not an EfficientNet trunk of {model.variant}: missing {missing[0]!r}{more}")
    for key, value in source.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(
                f"state dict {key.removeprefix('trunk.')!r} has shape {tuple(value.shape)} but the model's has "
                f"{tuple(target[key].shape)} (is it {model.variant}?)"
            )
    model.load_state_dict(source, strict=False)
    return {"loaded": sorted(source), "skipped": skipped}


BREAKHIS_SPEC = ModelSpec(
    task="breakhis",
    spatial_dims=2,
    in_channels=("R", "G", "B"),
    label_names=SUBTYPES,
    output_activation="softmax",
    roi_size=(224, 224),
    data_card="breakhis.md",
    paper="Behzadpour, Ortiz, Azizi, Wu: Breast Tumor Classification Using EfficientNet Deep Learning Model, "
    "2024 (arXiv 2411.17870)",
    tiny_kwargs={"variant": "efficientnet-b0", "num_classes": 8},
    example_size=(64, 64),
)


@register_model("breakhis_efficientnet", BREAKHIS_SPEC)
def breakhis_efficientnet(**kwargs: Any) -> BreakHisNet:
    """EfficientNet-B0 classifier (variant and classes as keyword arguments, see :class:`BreakHisNet`)."""
    return BreakHisNet(**kwargs)
