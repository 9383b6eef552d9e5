"""Activations, decoding and losses of the three brats heads; shared by training, validation and serving.

Nesting levels: every voxel has an ordinal level 0 background, 1 edema (WT∖TC), 2 necrosis/non-enhancing
core (TC∖ET), 3 enhancing tumour (ET). Regions are cumulative: WT = level ≥ 1, TC = level ≥ 2, ET = level 3.

Multi-level activation (medinfer's reading of Hu et al. 2018 / Piraud et al. 2018, marked [INF]): one
logit z per voxel and ``y = (1/3) Σ_k σ(β (z − t_k))`` with t = (−2, 0, 2); WT = y > 1/6, TC = y > 1/2,
ET = y > 5/6, so ET ⊆ TC ⊆ WT for any z. The loss is Σ_k [soft Dice + BCE] between σ(β (z − t_k)) and the
cumulative masks WT, TC, ET.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn
from torch.nn import functional as F

#: decoding thresholds on y for WT, TC, ET
LEVEL_THRESHOLDS = (1.0 / 6.0, 1.0 / 2.0, 5.0 / 6.0)


def level_logits(z: torch.Tensor, beta: float, thresholds: Sequence[float]) -> torch.Tensor:
    """β (z − t_k) for each threshold: (B, 1, ...) → (B, 3, ...)."""
    t = torch.as_tensor(thresholds, dtype=z.dtype, device=z.device).view(1, -1, *([1] * (z.ndim - 2)))
    return beta * (z - t)


def multilevel_activation(z: torch.Tensor, beta: float, thresholds: Sequence[float]) -> torch.Tensor:
    """y = mean_k σ(β (z − t_k)), in [0, 1]: (B, 1, ...) → (B, 1, ...)."""
    return torch.sigmoid(level_logits(z, beta, thresholds)).mean(dim=1, keepdim=True)


def decode_multilevel(y: torch.Tensor) -> torch.Tensor:
    """Levels 0..3 from y (any shape): the number of thresholds 1/6, 1/2, 5/6 that y exceeds."""
    return sum((y > t).long() for t in LEVEL_THRESHOLDS)  # type: ignore[return-value]


def regions_to_levels(regions: torch.Tensor) -> torch.Tensor:
    """(B, 3, ...) WT/TC/ET masks → (B, ...) levels, enforcing nesting (ET needs TC needs WT)."""
    wt = regions[:, 0] > 0.5
    tc = wt & (regions[:, 1] > 0.5)
    et = tc & (regions[:, 2] > 0.5)
    return wt.long() + tc.long() + et.long()


def levels_to_regions(levels: torch.Tensor) -> torch.Tensor:
    """(B, ...) levels → (B, 3, ...) cumulative masks WT, TC, ET as float."""
    return torch.stack([levels >= 1, levels >= 2, levels >= 3], dim=1).float()


def mask_outside_brain(levels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Zero the levels where every input channel is 0 (outside the skull-stripped brain).

    BraTS images are skull-stripped with an exact-zero background; no tumour can lie there, and a network with
    instance normalisation is unreliable on windows that are nearly all background.

    Args:
        levels: (B, ...) levels.
        image: (B, C, ...) input intensities on the same grid.
    """
    return torch.where((image != 0).any(dim=1), levels, torch.zeros_like(levels))


def ideal_logit(levels: torch.Tensor, beta: float, thresholds: Sequence[float]) -> torch.Tensor:
    """A logit z that decodes to ``levels``: the midpoints between thresholds (and beyond the ends)."""
    t = list(thresholds)
    gap = max(t[1] - t[0], t[2] - t[1])
    centres = torch.tensor([t[0] - gap, (t[0] + t[1]) / 2, (t[1] + t[2]) / 2, t[2] + gap], dtype=torch.float32)
    return centres.to(levels.device)[levels]


class Head:
    """One head: how logits become maps, maps become levels, and how the loss is computed.

    Maps are what is interpolated back to the input grid: channel 0.. are head-specific.
    """

    def __init__(self, kind: str, beta: float = 2.0, thresholds: Sequence[float] = (-2.0, 0.0, 2.0)) -> None:
        if kind not in ("multilevel", "regions", "softmax"):
            raise ValueError(f"unknown head {kind!r}")
        self.kind = kind
        self.beta = float(beta)
        self.thresholds = tuple(float(t) for t in thresholds)
        self._dice_bce = DiceLoss(sigmoid=True, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)
        self._dice_ce = DiceCELoss(softmax=True, to_onehot_y=True, smooth_nr=1e-5, smooth_dr=1e-5)

    # -- maps and decoding ---------------------------------------------------------------------------------
    def maps(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, ...) → maps: multilevel [y, σ_1, σ_2, σ_3]; regions σ (3); softmax p (4)."""
        if self.kind == "multilevel":
            sig = torch.sigmoid(level_logits(logits, self.beta, self.thresholds))
            return torch.cat([sig.mean(dim=1, keepdim=True), sig], dim=1)
        if self.kind == "regions":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)

    def decode(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps (B, M, ...) → levels (B, ...) in 0..3, nested by construction."""
        if self.kind == "multilevel":
            return decode_multilevel(maps[:, 0])
        if self.kind == "regions":
            return regions_to_levels(maps)
        # softmax classes are ordered background, edema, necrosis/NET, enhancing = levels 0..3
        return maps.argmax(dim=1)

    def region_probabilities(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 3, ...) probabilities of WT, TC, ET (for explanation maps)."""
        if self.kind == "multilevel":
            return maps[:, 1:4]
        if self.kind == "regions":
            return maps
        return torch.stack([maps[:, 1:].sum(1), maps[:, 2:].sum(1), maps[:, 3]], dim=1)

    # -- loss ----------------------------------------------------------------------------------------------
    def region_loss(self, logits3: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Σ_k [soft Dice + BCE] over the three cumulative regions (logits3 and regions (B, 3, ...))."""
        dice = self._dice_bce(logits3, regions)  # (B, 3, 1, 1, 1)
        dice_k = dice.reshape(dice.shape[0], 3).mean(dim=0)
        bce_k = F.binary_cross_entropy_with_logits(logits3, regions, reduction="none").transpose(0, 1)
        bce_k = bce_k.reshape(3, -1).mean(dim=1)
        return (dice_k + bce_k).sum()

    def loss(self, logits: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Loss of one output against (B, 3, ...) cumulative WT/TC/ET masks."""
        if self.kind == "multilevel":
            return self.region_loss(level_logits(logits, self.beta, self.thresholds), regions)
        if self.kind == "regions":
            return self.region_loss(logits, regions)
        levels = regions.sum(dim=1, keepdim=True).round()
        return self._dice_ce(logits, levels)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of the head loss at full resolution and at each deep-supervision level.

    Targets for coarser outputs are nearest-neighbour downsampled masks. Weights are normalised to sum to 1.
    """

    def __init__(self, head: Head, weights: Sequence[float]) -> None:
        super().__init__()
        if not weights:
            raise ValueError("weights must not be empty")
        total = float(sum(weights))
        self.head = head
        self.weights = [w / total for w in weights]

    def forward(self, logits: torch.Tensor, aux: Sequence[torch.Tensor], regions: torch.Tensor) -> torch.Tensor:
        outputs = [logits, *aux][: len(self.weights)]
        loss = logits.new_zeros(())
        for w, out in zip(self.weights, outputs, strict=False):
            target = regions if out.shape[2:] == regions.shape[2:] else F.interpolate(regions, size=out.shape[2:])
            loss = loss + w * self.head.loss(out, target)
        return loss
