"""Residual 3D U-Net of Isensee et al. (BraTS 2017) with three heads, for the ``brats`` task.

References:
    Isensee F. et al., "Brain Tumor Segmentation and Radiomics Survival Prediction: Contribution to the
    BRATS 2017 Challenge", BrainLes 2017 (context aggregation + localisation pathways, deep supervision).
    Hu X. et al., "Hierarchical multi-class segmentation of glioma images using networks with multi-level
    activation function", BrainLes 2018 (the ``multilevel`` head: one output channel per voxel).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from models._checks import check_unet_arguments
from models.registry import ModelSpec, register_model

__all__ = ["BRATS_MODALITIES", "BRATS_REGIONS", "BRATS_SPEC", "HEAD_CHANNELS", "NestedUNet", "SegOutput"]

#: output channels per head: ``multilevel`` (the method), ``regions`` (WT/TC/ET sigmoids), ``softmax``
#: (background, edema, necrosis/non-enhancing, enhancing: the baseline the paper improves on)
HEAD_CHANNELS = {"multilevel": 1, "regions": 3, "softmax": 4}


class SegOutput(NamedTuple):
    """Training-time output: full-resolution logits and the coarser deep-supervision logits.

    Attributes:
        logits: (B, C, H, W, D) at input resolution.
        aux: coarser summed logits, finest first, each (B, C, H/2^k, W/2^k, D/2^k).
    """

    logits: torch.Tensor
    aux: tuple[torch.Tensor, ...]


class ConvNormAct(nn.Sequential):
    """Conv3d → InstanceNorm3d (affine) → LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, slope: float = 1e-2) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.InstanceNorm3d(c_out, affine=True),
            nn.LeakyReLU(slope, inplace=True),
        )


class ContextModule(nn.Sequential):
    """Two 3×3×3 conv blocks with spatial dropout between them (Isensee 2017)."""

    def __init__(self, channels: int, dropout: float, slope: float) -> None:
        super().__init__(
            ConvNormAct(channels, channels, slope=slope),
            nn.Dropout3d(dropout),
            ConvNormAct(channels, channels, slope=slope),
        )


class EncoderLevel(nn.Module):
    """Strided (except at level 0) 3×3×3 conv, then a residual context module: ``y = x + context(x)``."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float, slope: float) -> None:
        super().__init__()
        self.conv = ConvNormAct(c_in, c_out, stride=stride, slope=slope)
        self.context = ContextModule(c_out, dropout, slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.context(x)


class Upsampling(nn.Sequential):
    """Nearest ×2 upsampling then a 3×3×3 conv block to the finer level's filters."""

    def __init__(self, c_in: int, c_out: int, slope: float) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvNormAct(c_in, c_out, slope=slope))


class Localization(nn.Sequential):
    """3×3×3 conv block on the concatenation, then a 1×1×1 conv block."""

    def __init__(self, c_in: int, c_out: int, slope: float) -> None:
        super().__init__(ConvNormAct(c_in, c_out, slope=slope), ConvNormAct(c_out, c_out, kernel=1, slope=slope))


class NestedUNet(nn.Module):
    """Isensee-2017 residual 3D U-Net with summed deep supervision and a choice of head.

    Args:
        in_channels: input modalities (4 for BraTS: T1, T1ce, T2, FLAIR).
        head: ``multilevel`` (1 channel, Hu et al. 2018), ``regions`` (3 sigmoid channels WT/TC/ET) or
            ``softmax`` (4 classes).
        depth: number of resolution levels (5 in the paper).
        base_filters: filters at the finest level, doubled at each level (16 in the paper).
        dropout: spatial dropout in the context modules (0.3 in the paper).
        deep_supervision_levels: how many of the finest decoder levels contribute segmentation maps that are
            upsampled and summed (3 in the paper).
        negative_slope: LeakyReLU slope.

    Input (B, in_channels, H, W, D) with H, W, D divisible by 2^(depth-1). ``forward`` returns logits
    (B, C, H, W, D); :meth:`forward_with_aux` also returns the coarser deep-supervision logits.

    Raises:
        ValueError: for an unknown head or out-of-range sizes.
    """

    def __init__(
        self,
        in_channels: int = 4,
        head: str = "multilevel",
        depth: int = 5,
        base_filters: int = 16,
        dropout: float = 0.3,
        deep_supervision_levels: int = 3,
        negative_slope: float = 1e-2,
    ) -> None:
        super().__init__()
        if head not in HEAD_CHANNELS:
            raise ValueError(f"head must be one of {sorted(HEAD_CHANNELS)}, got {head!r}")
        check_unet_arguments(in_channels, depth, base_filters, dropout)
        if not 1 <= deep_supervision_levels <= depth - 1:
            raise ValueError(
                f"deep_supervision_levels must be in [1, depth-1={depth - 1}], got {deep_supervision_levels}"
            )
        self.head = head
        self.depth = depth
        self.out_channels = HEAD_CHANNELS[head]
        self.ds_levels = deep_supervision_levels
        filters = [base_filters * 2**i for i in range(depth)]
        self.encoder = nn.ModuleList(
            EncoderLevel(
                in_channels if i == 0 else filters[i - 1], filters[i], 1 if i == 0 else 2, dropout, negative_slope
            )
            for i in range(depth)
        )
        # decoder level i (depth-2 ... 0): upsample from level i+1, concatenate the skip, localise
        self.up = nn.ModuleList(Upsampling(filters[i + 1], filters[i], negative_slope) for i in range(depth - 1))
        self.localization = nn.ModuleList(
            Localization(2 * filters[i], filters[i], negative_slope) for i in range(depth - 1)
        )
        self.seg = nn.ModuleList(nn.Conv3d(filters[i], self.out_channels, 1) for i in range(deep_supervision_levels))

    @property
    def size_divisor(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (self.depth - 1)

    def forward_with_aux(self, x: torch.Tensor) -> SegOutput:
        """Logits at full resolution plus summed deep-supervision logits at coarser levels."""
        div = self.size_divisor
        if any(s % div for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {div}")
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        decoded: dict[int, torch.Tensor] = {}
        for i in range(self.depth - 2, -1, -1):
            x = self.up[i](x)
            x = self.localization[i](torch.cat([skips[i], x], dim=1))
            decoded[i] = x
        # summation-style deep supervision: coarsest map, upsampled and added to the next finer, repeatedly
        summed: list[torch.Tensor] = []
        acc: torch.Tensor | None = None
        for i in range(self.ds_levels - 1, -1, -1):
            seg = self.seg[i](decoded[i])
            acc = (
                seg if acc is None else seg + F.interpolate(acc, scale_factor=2, mode="trilinear", align_corners=False)
            )
            summed.append(acc)
        logits = summed[-1]
        aux = tuple(reversed(summed[:-1]))
        return SegOutput(logits, aux)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W, D); activations live in ``pipelines.brats``."""
        return self.forward_with_aux(x).logits


#: the four MRI modalities in model (channel) order
BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: the nested regions in output order: whole tumour ⊃ tumour core ⊃ enhancing tumour
BRATS_REGIONS: tuple[str, ...] = ("WT", "TC", "ET")

BRATS_SPEC = ModelSpec(
    task="brats",
    spatial_dims=3,
    in_channels=BRATS_MODALITIES,
    label_names=BRATS_REGIONS,
    output_activation="multilevel",
    roi_size=(128, 128, 128),
    data_card="brats.md",
    paper="Hu et al. 2018 (BrainLes, arXiv 1810.09488) on Isensee et al. 2017",
    tiny_kwargs={"depth": 3, "base_filters": 4, "deep_supervision_levels": 2},
    example_size=(16, 16, 16),
)


@register_model("brats_nested_unet", BRATS_SPEC)
def brats_nested_unet(**kwargs: Any) -> NestedUNet:
    """Isensee-2017 residual U-Net; ``head`` selects multilevel (default), regions or softmax."""
    return NestedUNet(**kwargs)
