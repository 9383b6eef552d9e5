"""ProtoECGNet's training stages and which parameters each one trains (ProtoPNet-style ``set_trainable``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from torch import nn

from models.protoecgnet import BRANCH_NAMES, PTBXL_LABELS, ProtoECGNet

__all__ = ["STAGE_ORDER", "Stage", "project_prototypes", "set_trainable", "trainable_names", "window_to_samples"]


class Stage(StrEnum):
    """Stages in the order ``medinfer train ecg`` runs them."""

    FEATURE_EXTRACTOR = "feature_extractor"
    JOINT = "joint"
    PROJECTION = "projection"
    CLASSIFIER = "classifier"
    FUSION = "fusion"

    @classmethod
    def parse(cls, value: str) -> Stage:
        """A stage from its name.

        Raises:
            ValueError: unknown stage (lists the valid ones).
        """
        try:
            return cls(value.lower().replace("-", "_"))
        except ValueError:
            raise ValueError(f"unknown stage {value!r}; stages: {', '.join(s.value for s in cls)}") from None


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)


def set_trainable(model: ProtoECGNet, stage: Stage, branches: Iterable[str] = BRANCH_NAMES) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze what ``stage`` trains in ``branches``; return those parameters.

    - feature_extractor: backbone + plain FC head;
    - joint: backbone + add-on layers + prototypes (the branch classifier stays at its +1/−0.5 init);
    - projection: nothing (prototypes are replaced, not trained);
    - classifier: the branch classifier only;
    - fusion: the fusion layer only (``branches`` ignored).
    """
    stage = Stage(stage)
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    if stage is Stage.FUSION:
        params = list(model.fusion.parameters())
    elif stage is not Stage.PROJECTION:
        for name in branches:
            b = model.branch(name)
            if stage is Stage.FEATURE_EXTRACTOR:
                params += [*b.backbone.parameters(), *b.fc.parameters()]
            elif stage is Stage.JOINT:
                params += [*b.backbone.parameters(), *b.add_on.parameters(), b.prototypes]
            elif stage is Stage.CLASSIFIER:
                params += list(b.classifier.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def trainable_names(model: nn.Module) -> set[str]:
    """Names of the parameters that currently require gradients."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def window_to_samples(window: int, time_len: int, columns: int, num_samples: int) -> tuple[int, int]:
    """Input samples ``[start, end)`` covered by feature columns ``[window, window + time_len)`` of ``columns``."""
    start = int(window * num_samples / columns)
    end = min(num_samples, int((window + time_len) * num_samples / columns))
    return start, end


@torch.no_grad()
def project_prototypes(
    model: ProtoECGNet,
    x: torch.Tensor,
    y: np.ndarray,
    record_ids: list[str],
    *,
    branches: Iterable[str] = BRANCH_NAMES,
    batch_size: int = 64,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Projection ("push"): replace each prototype by the best-matching training latent of its class.

    For prototype ``p`` of class ``c``, over training records that carry ``c`` (and, for 2D branches, every
    window), the latent with the highest similarity replaces ``p``. Prototypes of classes without training
    positives are left as they are (source ``None``).

    Args:
        model: the network (put in eval mode here).
        x: (N, 12, L) training inputs (on any device; batches move to the model's device).
        y: (N, num_labels) training labels.
        record_ids: N record identifiers.
        branches: branches to project.
        batch_size: records per forward pass.

    Returns:
        ``sources``: one dict per prototype (branch, prototype, label, record_id, record_index, window, start,
        end, score); ``segments``: per branch (P, 12, S) float16 input segments the prototypes came from.
    """
    model.eval()
    device = next(model.parameters()).device
    sources: list[dict[str, Any]] = []
    segments: dict[str, torch.Tensor] = {}
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.bool)
    for name in branches:
        b = model.branch(name)
        label_idx = model.branch_index(name).cpu()
        proto_class = b.prototype_classes()
        allowed = y_t[:, label_idx[proto_class]]  # (N, P): record carries the prototype's class
        best = torch.full((b.num_prototypes,), -math.inf)
        best_rec = torch.full((b.num_prototypes,), -1, dtype=torch.long)
        best_win = torch.zeros(b.num_prototypes, dtype=torch.long)
        new = b.prototypes.detach().clone()
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(device)
            z = b.latent(xb)
            ws = b.window_similarities(z).cpu()  # (B, P, nW)
            ws = ws.masked_fill(~allowed[i : i + xb.shape[0], :, None], -math.inf)
            score, win = ws.max(dim=2)  # (B, P)
            top, rec = score.max(dim=0)  # (P,)
            better = top > best
            for p in torch.nonzero(better).flatten().tolist():
                r, w = int(rec[p]), int(win[rec[p], p])
                best[p], best_rec[p], best_win[p] = top[p], i + r, w
                new[p] = z[r] if b.kind == "1d" else z[r, :, :, w : w + b.proto_time_len]
        b.prototypes.data.copy_(new)
        num_samples = x.shape[-1]
        t = b.proto_time_len
        seg_len = num_samples if b.kind == "1d" else window_to_samples(0, t, model.feature_columns, num_samples)[1] + 1
        seg = torch.zeros(b.num_prototypes, x.shape[1], seg_len, dtype=torch.float16)
        for p in range(b.num_prototypes):
            entry: dict[str, Any] = {
                "branch": name,
                "prototype": p,
                "label": PTBXL_LABELS[int(label_idx[proto_class[p]])]
                if model.num_labels == len(PTBXL_LABELS)
                else int(label_idx[proto_class[p]]),
                "record_id": None,
                "record_index": None,
                "window": None,
                "start": None,
                "end": None,
                "score": None,
            }
            if best_rec[p] >= 0:
                r = int(best_rec[p])
                if b.kind == "1d":
                    start, end, w = 0, num_samples, 0
                else:
                    w = int(best_win[p])
                    start, end = window_to_samples(w, t, model.feature_columns, num_samples)
                entry.update(
                    record_id=str(record_ids[r]), record_index=r, window=w, start=start, end=end, score=float(best[p])
                )
                seg[p, :, : end - start] = x[r, :, start:end].to(torch.float16).cpu()
            sources.append(entry)
        segments[name] = seg
    return sources, segments
