"""The dual-path method's losses, consistency, fusion and disagreement (shared by training and inference).

Targets per path: zones the path does not predict count as its background, so path A's background is
{bg, DPU, AFS} and path B's is {bg, PZ}. TZ is the same voxel set in both paths; background means "outside the
gland" in both only where neither path sees one of its own zones. The consistency term therefore compares TZ
everywhere and background where ``w = (1 − p_A(PZ)) · (1 − p_B(DPU) − p_B(AFS))`` (not differentiated) is
high, which is zero exactly where one path's background legitimately holds the other path's zone.
"""

from __future__ import annotations

import math

import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.nn import functional as F

from models.dual_path_unet import PATH_A_CLASSES, DualPathOutput

__all__ = [
    "FUSED_CLASSES",
    "DualPathLoss",
    "consistency",
    "disagreement",
    "fuse",
    "path_targets",
    "rampup",
    "split_logits",
]

#: zone label (0 bg, 1 PZ, 2 TZ, 3 DPU, 4 AFS) → class index of each path
_TO_A = torch.tensor([0, 1, 2, 0, 0])
_TO_B = torch.tensor([0, 0, 1, 2, 3])
#: the fused map's classes, in label order
FUSED_CLASSES = ("background", "PZ", "TZ", "DPU", "AFS")
#: which signed-distance channels (of PZ, TZ, DPU, AFS) each path's distance head regresses
SDM_A = [0, 1]
SDM_B = [1, 2, 3]


def path_targets(zones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zone labels (B, 1, X, Y, Z) → class indices of path A and path B (same shape, long)."""
    z = zones.long().clamp(0, 4)
    return _TO_A.to(z.device)[z], _TO_B.to(z.device)[z]


def split_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's concatenated logits (B, 7, ...) → path A's (B, 3, ...) and path B's (B, 4, ...)."""
    n = len(PATH_A_CLASSES)
    return logits[:, :n], logits[:, n:]


def _shared_gap(pa: torch.Tensor, pb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per voxel: TZ difference and background difference weighted by where background means the same."""
    weight = ((1.0 - pa[:, 1]) * (1.0 - pb[:, 2] - pb[:, 3]).clamp(min=0.0)).detach()
    return pa[:, 2] - pb[:, 1], weight * (pa[:, 0] - pb[:, 0])


def consistency(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """λ-free consistency: mean squared difference of the paths' probabilities of the shared classes.

    ``((p_A(TZ) − p_B(TZ))² + (w · (p_A(bg) − p_B(bg)))²) / 2`` averaged over voxels; zero when the paths agree
    on TZ everywhere and on background wherever ``w > 0``.
    """
    gap_tz, gap_bg = _shared_gap(torch.softmax(logits_a, 1), torch.softmax(logits_b, 1))
    return (gap_tz.square() + gap_bg.square()).mean() / 2


def disagreement(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """Per-voxel disagreement map in [0, 1], (B, X, Y, Z): ``(|Δ TZ| + |w · Δ bg|) / 2``."""
    gap_tz, gap_bg = _shared_gap(probs_a, probs_b)
    return (gap_tz.abs() + gap_bg.abs()) / 2


def fuse(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """One distribution over (bg, PZ, TZ, DPU, AFS), (B, 5, ...): shared classes averaged, then normalised."""
    fused = torch.stack(
        [
            (probs_a[:, 0] + probs_b[:, 0]) / 2,
            probs_a[:, 1],
            (probs_a[:, 2] + probs_b[:, 1]) / 2,
            probs_b[:, 2],
            probs_b[:, 3],
        ],
        dim=1,
    )
    return fused / fused.sum(dim=1, keepdim=True).clamp(min=1e-6)


def rampup(epoch: int, length: int) -> float:
    """Sigmoid-shaped ramp exp(−5(1−t)²), t = epoch / length in [0, 1] (Laine & Aila 2017); 1 when length is 0."""
    if length <= 0:
        return 1.0
    t = min(max(epoch / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class DualPathLoss(nn.Module):
    """Supervised loss of both paths: Σ_paths (soft Dice over the zones + cross-entropy) + λ_aux · L1(SDM).

    Args:
        aux_weight: λ_aux.
    """

    def __init__(self, aux_weight: float) -> None:
        super().__init__()
        self.aux_weight = aux_weight
        # batch Dice: a zone absent from one case of the batch does not make that case's Dice undefined
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)

    def forward(self, out: DualPathOutput, zones: torch.Tensor, sdm: torch.Tensor | None) -> torch.Tensor:
        target_a, target_b = path_targets(zones)
        loss = self.dice_ce(out.logits_a, target_a) + self.dice_ce(out.logits_b, target_b)
        if sdm is not None and self.aux_weight > 0:
            aux = F.l1_loss(out.sdm_a, sdm[:, SDM_A]) + F.l1_loss(out.sdm_b, sdm[:, SDM_B])
            loss = loss + self.aux_weight * aux
        return loss
