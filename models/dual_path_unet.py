"""Dual-path multi-task 3D U-Net for PI-RADS v2 prostate zones (the ``prostate`` task).

Two U-Net paths see the same axial T2-weighted input. Path A segments {background, PZ, TZ}, path B
{background, TZ, DPU, AFS}; background and TZ are the classes both paths predict, where co-training holds them
to agree. Each path also regresses the signed distance maps of its zones (the multi-task head).

References:
    Das A., Ghosh S., Stober S., "PI-RADS v2 Compliant Automated Segmentation of Prostate Zones Using
    co-training Motivated Multi-task Dual-Path CNN", arXiv 2309.12970 (2023) — dual branches, two stages,
    cross-branch consistency, multi-task learning.
    The paths follow the UATS prostate U-Net of the same lab (Ghosh et al.): 16 base filters, batch norm,
    dropout, anisotropic pooling (1,2,2) (slices × H × W) in the first two levels, then (2,2,2).

Axes: tensors are (B, C, X, Y, Z) with Z the slice axis (RAS), so the paper's (1,2,2) pooling is (2,2,1) here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from models._checks import check_unet_arguments
from models.registry import ModelSpec, register_model

__all__ = [
    "PATH_A_CLASSES",
    "PATH_B_CLASSES",
    "PROSTATE_SPEC",
    "ZONES",
    "DualPathOutput",
    "DualPathUNet",
    "UNetPath",
    "pooling_schedule",
]

#: the four PI-RADS v2 zones in label order (label value = index + 1)
ZONES: tuple[str, ...] = ("PZ", "TZ", "DPU", "AFS")
#: classes of each path, in channel order
PATH_A_CLASSES: tuple[str, ...] = ("background", "PZ", "TZ")
PATH_B_CLASSES: tuple[str, ...] = ("background", "TZ", "DPU", "AFS")


class DualPathOutput(NamedTuple):
    """Training-time output of both paths.

    Attributes:
        logits_a: (B, 3, X, Y, Z) path A class logits (background, PZ, TZ).
        logits_b: (B, 4, X, Y, Z) path B class logits (background, TZ, DPU, AFS).
        sdm_a: (B, 2, X, Y, Z) path A signed distance maps of PZ, TZ, in [-1, 1] (tanh).
        sdm_b: (B, 3, X, Y, Z) path B signed distance maps of TZ, DPU, AFS, in [-1, 1] (tanh).
    """

    logits_a: torch.Tensor
    logits_b: torch.Tensor
    sdm_a: torch.Tensor
    sdm_b: torch.Tensor


def pooling_schedule(depth: int, anisotropic_levels: int = 2) -> list[tuple[int, int, int]]:
    """Down-sampling factors between levels: (2, 2, 1) for the first ``anisotropic_levels``, then (2, 2, 2)."""
    return [(2, 2, 1) if i < anisotropic_levels else (2, 2, 2) for i in range(depth - 1)]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"norm must be 'batch' or 'instance', got {kind!r}")


class DoubleConv(nn.Sequential):
    """Two 3×3×3 conv → norm → ReLU blocks, with dropout between them."""

    def __init__(self, c_in: int, c_out: int, norm: str, dropout: float) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Dropout3d(dropout),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
        )


class UNetPath(nn.Module):
    """One U-Net path with a segmentation head and a signed-distance head.

    Args:
        in_channels: input channels (1: T2W).
        num_classes: softmax classes of the segmentation head (background included).
        num_sdm: zones whose signed distance maps the auxiliary head regresses.
        depth: resolution levels.
        base_filters: filters at the finest level, doubled per level.
        norm: ``batch`` (UATS) or ``instance``.
        dropout: dropout inside each double convolution.
        anisotropic_levels: how many of the first poolings keep the slice axis.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_sdm: int,
        depth: int,
        base_filters: int,
        norm: str,
        dropout: float,
        anisotropic_levels: int,
    ) -> None:
        super().__init__()
        filters = [base_filters * 2**i for i in range(depth)]
        self.pools = pooling_schedule(depth, anisotropic_levels)
        self.encoder = nn.ModuleList(
            DoubleConv(in_channels if i == 0 else filters[i - 1], filters[i], norm, dropout) for i in range(depth)
        )
        self.down = nn.ModuleList(nn.MaxPool3d(p, stride=p) for p in self.pools)
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(filters[i + 1], filters[i], self.pools[i], stride=self.pools[i])
            for i in range(depth - 1)
        )
        self.decoder = nn.ModuleList(DoubleConv(2 * filters[i], filters[i], norm, dropout) for i in range(depth - 1))
        self.seg = nn.Conv3d(filters[0], num_classes, 1)
        self.sdm = nn.Conv3d(filters[0], num_sdm, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x)
            if i < len(self.down):
                skips.append(x)
                x = self.down[i](x)
        for i in range(len(self.up) - 1, -1, -1):
            x = self.decoder[i](torch.cat([skips[i], self.up[i](x)], dim=1))
        return self.seg(x), torch.tanh(self.sdm(x))


class DualPathUNet(nn.Module):
    """Two U-Net paths on one input: A → {bg, PZ, TZ}, B → {bg, TZ, DPU, AFS}, each with a distance head.

    Args:
        in_channels: input channels (1).
        depth: resolution levels per path (4 for the 32×168×168 ROI).
        base_filters: filters at the finest level (16 in UATS).
        norm: ``batch`` or ``instance``.
        dropout: dropout inside each double convolution.
        anisotropic_levels: poolings that keep the slice axis (2 in UATS).

    ``forward`` returns the class logits of both paths concatenated on the channel axis, (B, 7, X, Y, Z):
    path A's three then path B's four (what a sliding-window inferer needs); :meth:`forward_with_aux` returns
    both paths' logits and distance maps. X and Y must be divisible by 2^(depth-1), Z by the product of the
    slice-axis factors.

    Raises:
        ValueError: out-of-range sizes.
    """

    def __init__(
        self,
        in_channels: int = 1,
        depth: int = 4,
        base_filters: int = 16,
        norm: str = "batch",
        dropout: float = 0.1,
        anisotropic_levels: int = 2,
    ) -> None:
        super().__init__()
        check_unet_arguments(in_channels, depth, base_filters, dropout)
        if anisotropic_levels < 0:
            raise ValueError(f"anisotropic_levels must be >= 0, got {anisotropic_levels}")
        _norm(norm, 1)  # validates the name
        self.path_a, self.path_b = (
            UNetPath(
                in_channels, len(classes), len(classes) - 1, depth, base_filters, norm, dropout, anisotropic_levels
            )
            for classes in (PATH_A_CLASSES, PATH_B_CLASSES)
        )
        pools = pooling_schedule(depth, anisotropic_levels)
        self.divisor = tuple(int(torch.tensor([p[k] for p in pools]).prod()) for k in range(3))

    def check_size(self, x: torch.Tensor) -> None:
        if any(s % d for s, d in zip(x.shape[2:], self.divisor, strict=True)):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {self.divisor}")

    def forward_with_aux(self, x: torch.Tensor) -> DualPathOutput:
        """Both paths' logits and signed distance maps."""
        self.check_size(x)
        logits_a, sdm_a = self.path_a(x)
        logits_b, sdm_b = self.path_b(x)
        return DualPathOutput(logits_a, logits_b, sdm_a, sdm_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of both paths, (B, 3 + 4, X, Y, Z); activations live in ``pipelines.prostate``."""
        out = self.forward_with_aux(x)
        return torch.cat([out.logits_a, out.logits_b], dim=1)


PROSTATE_SPEC = ModelSpec(
    task="prostate",
    spatial_dims=3,
    in_channels=("t2",),
    label_names=ZONES,
    output_activation="softmax (two paths, fused)",
    roi_size=(168, 168, 32),
    data_card="prostate.md",
    paper="Das, Ghosh, Stober 2023 (arXiv 2309.12970); paths after the UATS prostate U-Net",
    tiny_kwargs={"depth": 3, "base_filters": 4},
    example_size=(16, 16, 8),
)


@register_model("prostate_dual_path_unet", PROSTATE_SPEC)
def prostate_dual_path_unet(**kwargs: Any) -> DualPathUNet:
    """Dual-path multi-task U-Net (Das et al. 2023)."""
    return DualPathUNet(**kwargs)
