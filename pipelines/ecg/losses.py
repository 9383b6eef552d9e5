"""ProtoECGNet losses (Sethi et al. 2025): weighted BCE, cluster, separation, diversity, contrastive, L1 terms.

Notation: ``s`` (B, P) similarities, ``y`` (B, C) multi-hot labels, ``I`` (P, C) prototype-class identity,
``M[b, p, c] = I[p, c]·y[b, c]``, ``P̂`` the L2-normalised flattened prototypes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PrototypeLossWeights",
    "cluster_loss",
    "contrastive_loss",
    "diversity_loss",
    "jaccard_cooccurrence",
    "offclass_l1",
    "pos_weight",
    "prototype_loss",
    "separation_loss",
    "sparsity_loss",
]


def pos_weight(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """BCE ``pos_weight_c = (Σ_k n_k − n_c) / n_c`` with ``n_c`` the positive training labels of class c.

    Classes without positives get ``n_c = 1`` (no division by zero; they contribute no positive terms anyway).

    Args:
        labels: (N, C) multi-hot training labels of one branch (or of all labels, for fusion).
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    n = y.sum(dim=0).clamp_min(1.0)
    return (y.sum() - n).clamp_min(0.0) / n


def jaccard_cooccurrence(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Label co-occurrence ``Lco[a, b] = |A ∩ B| / |A ∪ B|`` over samples (diagonal 1; 0 when A ∪ B is empty).

    Args:
        labels: (N, C) multi-hot training labels.

    Returns:
        (C, C) float tensor.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    inter = y.t() @ y
    counts = y.sum(dim=0)
    union = counts[:, None] + counts[None, :] - inter
    co = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))
    co.fill_diagonal_(1.0)
    return co


def _mask(identity: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return identity[None, :, :] * y[:, None, :]  # (B, P, C)


def cluster_loss(sims: torch.Tensor, y: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """``L_clst = −mean_{b,c} max_p s[b,p]·M[b,p,c]`` (pull each positive class's best prototype close)."""
    return -(sims[:, :, None] * _mask(identity, y)).amax(dim=1).mean()


def separation_loss(sims: torch.Tensor, y: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """``L_sep = mean_{b,c} max_p s[b,p]·(1 − M[b,p,c])`` (push away prototypes of absent classes)."""
    return (sims[:, :, None] * (1 - _mask(identity, y))).amax(dim=1).mean()


def sparsity_loss(sims: torch.Tensor) -> torch.Tensor:
    """``L_spars = mean_b Σ_p max(s, 0)`` (weight 0 in the paper)."""
    return sims.clamp_min(0).sum(dim=1).mean()


def _normalised(prototypes: torch.Tensor) -> torch.Tensor:
    return F.normalize(prototypes.flatten(1), dim=1)


def diversity_loss(prototypes: torch.Tensor) -> torch.Tensor:
    """``L_div = ||P̂P̂ᵀ − I||_F² / P²`` over the flattened, L2-normalised prototypes (P, ...)."""
    p = _normalised(prototypes)
    gram = p @ p.t()
    eye = torch.eye(p.shape[0], device=p.device, dtype=p.dtype)
    return ((gram - eye) ** 2).sum() / p.shape[0] ** 2


def contrastive_loss(prototypes: torch.Tensor, identity: torch.Tensor, cooccurrence: torch.Tensor) -> torch.Tensor:
    """ProtoECGNet's contrastive term.

    ``S = P̂P̂ᵀ`` (clamped to ±(1 − 1e−6)), ``pos = I·Lco·Iᵀ``, ``neg = 1 − pos``, each normalised to sum 1:
    ``L = −(Σ S⊙pos_n − Σ S⊙neg_n) / sqrt(P)``. Pulls prototypes of co-occurring classes together and pushes
    the others apart.

    Args:
        prototypes: (P, ...) prototype tensor.
        identity: (P, C) prototype-class identity.
        cooccurrence: (C, C) Jaccard co-occurrence of the branch's training labels.
    """
    p = _normalised(prototypes)
    sim = (p @ p.t()).clamp(-1 + 1e-6, 1 - 1e-6)
    pos = identity @ cooccurrence.to(identity) @ identity.t()
    neg = 1 - pos
    pos_n = pos / pos.sum().clamp_min(1e-12)
    neg_n = neg / neg.sum().clamp_min(1e-12)
    return -((sim * pos_n).sum() - (sim * neg_n).sum()) / math.sqrt(p.shape[0])


def offclass_l1(weight: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """``||W ⊙ (1 − Iᵀ)||₁`` for a branch classifier ``W`` (C, P): only connections to other classes' prototypes."""
    return (weight * (1 - identity.t())).abs().sum()


@dataclass(frozen=True)
class PrototypeLossWeights:
    """Weights of the joint-stage loss terms (paper defaults, main.py)."""

    clst: float = 0.004
    sep: float = 0.0004
    spars: float = 0.0
    div: float = 250.0
    cnrst: float = 300.0


def prototype_loss(
    logits: torch.Tensor,
    sims: torch.Tensor,
    y: torch.Tensor,
    prototypes: torch.Tensor,
    identity: torch.Tensor,
    pos_w: torch.Tensor,
    cooccurrence: torch.Tensor,
    weights: PrototypeLossWeights = PrototypeLossWeights(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """The joint-stage loss ``BCE(pos_weight) + λ_clst·L_clst + λ_sep·L_sep + λ_spars·L_spars + λ_div·L_div
    + λ_cnrst·L_cnrst`` of one branch.

    Returns:
        The total loss and each term's value (for logging).
    """
    terms = {
        "bce": F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_w),
        "clst": cluster_loss(sims, y, identity),
        "sep": separation_loss(sims, y, identity),
        "div": diversity_loss(prototypes),
        "cnrst": contrastive_loss(prototypes, identity, cooccurrence),
    }
    total = (
        terms["bce"]
        + weights.clst * terms["clst"]
        + weights.sep * terms["sep"]
        + weights.div * terms["div"]
        + weights.cnrst * terms["cnrst"]
    )
    if weights.spars:
        terms["spars"] = sparsity_loss(sims)
        total = total + weights.spars * terms["spars"]
    return total, {k: float(v.detach()) for k, v in terms.items()}
