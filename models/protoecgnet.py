"""ProtoECGNet: case-based interpretable multi-label ECG classification (Sethi et al. 2025, arXiv 2504.08713).

Three prototype branches over one 12-lead, 10 s, 100 Hz ECG and a fusion layer:

- **rhythm** (16 PTB-XL statements): 1D ResNet-18 over time, global prototypes compared with the pooled feature;
- **morphology** (52): 2D ResNet-18 whose first convolution spans all 12 leads (kernel 12×7), prototypes
  ``proto_time_len[0]`` = 3 feature columns wide, slid over the 32 columns (time-localised, ~0.94 s);
- **diffuse** (3): the same 2D backbone, prototypes spanning all 32 columns (global).

Each branch: backbone → add-on layers (sigmoid) → cosine similarity to its prototypes (2D: scaled per window and
averaged over windows) → a branch classifier ``Linear(P, C, bias=False)`` initialised +1 / −0.5. The fusion layer
maps all similarities to the 71 logits (with bias). Residual blocks are MONAI's :class:`ResNetBlock`. The network
returns logits only; sigmoid and thresholds live in ``pipelines.ecg``.

Each branch also has a plain FC head, used only in the feature-extractor stage. As in the authors' code
(``src/backbones.py``), the 1D head sits on the pooled feature and the 2D heads, by default
(``fc_head="flatten"``), on the flattened (B, 512, 1, 32) map: ``Linear(512 * 32, C)``. ``fc_head="pool"``
averages the 2D map first (``Linear(512, C)``), as medinfer 0.1 did; its checkpoints load with that head.

The 2D backbones start from random weights. :func:`load_resnet18_2d` copies a torchvision ImageNet ResNet-18
state dict a user brings into them, every layer but the replaced first convolution and the head, as the
authors initialise them; medinfer itself downloads nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNetBlock
from torch import nn

from models.registry import ModelSpec, register_model

__all__ = [
    "BRANCH_LABELS",
    "BRANCH_NAMES",
    "FC_HEADS",
    "LEADS",
    "PTBXL_LABELS",
    "ProtoBranch",
    "ProtoECGNet",
    "ProtoOutput",
    "ecg_protoecgnet",
    "load_resnet18_2d",
]

#: the 12 leads in model order
LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

#: the 71 PTB-XL SCP statements in the row order of ``scp_statements.csv`` (the model's output order)
PTBXL_LABELS: tuple[str, ...] = (
    "NDT", "NST_", "DIG", "LNGQT", "NORM", "IMI", "ASMI", "LVH", "LAFB", "ISC_", "IRBBB", "1AVB", "IVCD", "ISCAL",
    "CRBBB", "CLBBB", "ILMI", "LAO/LAE", "AMI", "ALMI", "ISCIN", "INJAS", "LMI", "ISCIL", "LPFB", "ISCAS", "INJAL",
    "ISCLA", "RVH", "ANEUR", "RAO/RAE", "EL", "WPW", "ILBBB", "IPLMI", "ISCAN", "IPMI", "SEHYP", "INJIN", "INJLA",
    "PMI", "3AVB", "INJIL", "2AVB", "ABQRS", "PVC", "STD_", "VCLVH", "QWAVE", "LOWT", "NT_", "PAC", "LPR", "INVT",
    "LVOLT", "HVOLT", "TAB_", "STE_", "PRC(S)", "SR", "AFIB", "STACH", "SARRH", "SBRAD", "PACE", "SVARR", "BIGU",
    "AFLT", "SVTAC", "PSVT", "TRIGU",
)  # fmt: skip

BRANCH_NAMES: tuple[str, ...] = ("rhythm", "morphology", "diffuse")

#: FC heads of the 2D branches (feature-extractor stage): on the flattened map (authors' code) or the pooled one
FC_HEADS: tuple[str, ...] = ("flatten", "pool")

_RHYTHM = {"SR", "AFIB", "STACH", "SARRH", "SBRAD", "PACE", "SVARR", "BIGU", "AFLT", "SVTAC", "PSVT", "TRIGU"}
_RHYTHM |= {"1AVB", "2AVB", "3AVB", "IVCD"}
_DIFFUSE = {"NORM", "DIG", "EL"}

#: ProtoECGNet's label partition (``prototype_category`` 1 / 3 / 4), each in the canonical order
BRANCH_LABELS: dict[str, tuple[str, ...]] = {
    "rhythm": tuple(c for c in PTBXL_LABELS if c in _RHYTHM),
    "morphology": tuple(c for c in PTBXL_LABELS if c not in _RHYTHM and c not in _DIFFUSE),
    "diffuse": tuple(c for c in PTBXL_LABELS if c in _DIFFUSE),
}

_DEFAULT_INDICES: tuple[tuple[int, ...], ...] = tuple(
    tuple(PTBXL_LABELS.index(c) for c in BRANCH_LABELS[b]) for b in BRANCH_NAMES
)


class ProtoOutput(NamedTuple):
    """Everything one forward pass returns (fixed fields, fixed shapes).

    Attributes:
        logits: (B, L) fusion logits in label order.
        branch_logits: (B, L) each label's own-branch classifier logit, scattered into label order.
        similarities: (B, P) similarities of all prototypes (rhythm, morphology, diffuse concatenated).
        feature_logits: (B, L) the plain FC heads of the feature-extractor stage, scattered into label order.
    """

    logits: torch.Tensor
    branch_logits: torch.Tensor
    similarities: torch.Tensor
    feature_logits: torch.Tensor


def _make_layer(in_planes: int, planes: int, blocks: int, stride: int, spatial_dims: int) -> nn.Sequential:
    downsample: nn.Module | None = None
    conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
    norm = nn.BatchNorm1d if spatial_dims == 1 else nn.BatchNorm2d
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(conv(in_planes, planes, kernel_size=1, stride=stride, bias=False), norm(planes))
    layers = [ResNetBlock(in_planes, planes, spatial_dims=spatial_dims, stride=stride, downsample=downsample)]
    layers += [ResNetBlock(planes, planes, spatial_dims=spatial_dims) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet1dBackbone(nn.Module):
    """ResNet-18 over time (helme/ecg_ptbxl_benchmarking's resnet1d18 layout, MONAI blocks).

    Args:
        in_leads: input channels (leads).
        widths: channels of the four stages.
        layers: residual blocks per stage.

    Input (B, 12, 1000) → feature (B, widths[-1]) after global average pooling (time 1000→500→250→…→32→1).
    """

    def __init__(self, in_leads: int = 12, widths: Sequence[int] = (64, 128, 256, 512), layers=(2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(in_leads, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(kernel_size=3, stride=2, padding=1),
        )
        stages, prev = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, layers, strict=True)):
            stages.append(_make_layer(prev, w, n, 1 if i == 0 else 2, spatial_dims=1))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=-1)


class ResNet2dBackbone(nn.Module):
    """ResNet-18 over a (12 leads × time) image whose first conv spans all leads (kernel 12×7, stride (1, 2)).

    Randomly initialised; :func:`load_resnet18_2d` copies ImageNet ResNet-18 weights a user brings into every
    layer but the replaced first conv (as the paper's init does not reach it either). Dropout after the third
    stage, no average pooling.

    Args:
        in_leads: number of leads (the first kernel's height).
        widths: channels of the four stages.
        layers: residual blocks per stage.
        dropout: dropout probability after stage 3.

    Input (B, 1, 12, 1000) → feature map (B, widths[-1], 1, 32).
    """

    def __init__(
        self, in_leads: int = 12, widths: Sequence[int] = (64, 128, 256, 512), layers=(2, 2, 2, 2), dropout=0.0
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], kernel_size=(in_leads, 7), stride=(1, 2), padding=(0, 3), bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages, prev = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, layers, strict=True)):
            stages.append(_make_layer(prev, w, n, 1 if i == 0 else 2, spatial_dims=2))
            prev = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.dropout = nn.Dropout(dropout)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.layer4(self.dropout(x))


class ProtoBranch(nn.Module):
    """One ProtoECGNet branch: backbone, add-on layers, prototypes, branch classifier and a plain FC head.

    Args:
        kind: ``1d`` (global prototypes on the pooled feature) or ``2d`` (prototypes ``proto_time_len`` columns
            wide slid over the feature map).
        num_classes: C, the branch's labels.
        prototypes_per_class: prototypes per label; prototype ``j`` belongs to class ``j // prototypes_per_class``.
        proto_dim: add-on / prototype channels D.
        proto_time_len: T, prototype width in feature columns (``2d`` only).
        widths, layers, in_leads, dropout: backbone settings.
        fc_head: the plain FC head of a ``2d`` branch: ``pool`` (``Linear(F, C)`` on the map averaged over
            (1, W)) or ``flatten`` (``Linear(F * W, C)`` on the flattened (B, F, 1, W) map, the authors' head).
            A ``1d`` branch always pools.
        feature_columns: W, the columns of the 2D feature map (32 for 1000 samples); used by ``flatten``.

    The FC head (``fc``) is the plain classifier of the ``feature_extractor`` stage; it takes no part in the
    prototype path.
    """

    def __init__(
        self,
        kind: str,
        num_classes: int,
        prototypes_per_class: int,
        proto_dim: int,
        proto_time_len: int = 1,
        widths: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (2, 2, 2, 2),
        in_leads: int = 12,
        dropout: float = 0.0,
        fc_head: str = "pool",
        feature_columns: int = 32,
    ) -> None:
        super().__init__()
        if kind not in ("1d", "2d"):
            raise ValueError(f"kind must be '1d' or '2d', got {kind!r}")
        if fc_head not in FC_HEADS:
            raise ValueError(f"fc_head must be one of {FC_HEADS}, got {fc_head!r}")
        if kind == "1d" and fc_head != "pool":
            raise ValueError(f"fc_head must be 'pool' for a 1d branch (its feature is pooled), got {fc_head!r}")
        if feature_columns < 1:
            raise ValueError(f"feature_columns must be >= 1, got {feature_columns}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if prototypes_per_class < 1:
            raise ValueError(f"prototypes_per_class must be >= 1, got {prototypes_per_class}")
        if proto_dim < 1:
            raise ValueError(f"proto_dim must be >= 1, got {proto_dim}")
        self.kind = kind
        self.num_classes = num_classes
        self.prototypes_per_class = prototypes_per_class
        self.num_prototypes = num_classes * prototypes_per_class
        self.proto_time_len = proto_time_len if kind == "2d" else 1
        self.fc_head = fc_head
        self.feature_columns = feature_columns
        feat = widths[-1]
        if kind == "1d":
            self.backbone: nn.Module = ResNet1dBackbone(in_leads, widths, layers)
            self.add_on = nn.Sequential(
                nn.Linear(feat, proto_dim), nn.ReLU(), nn.Linear(proto_dim, proto_dim), nn.Sigmoid()
            )
            self.prototypes = nn.Parameter(torch.randn(self.num_prototypes, proto_dim))
        else:
            self.backbone = ResNet2dBackbone(in_leads, widths, layers, dropout)
            self.add_on = nn.Sequential(
                nn.Conv2d(feat, proto_dim, 1), nn.ReLU(), nn.Conv2d(proto_dim, proto_dim, 1), nn.Sigmoid()
            )
            for m in self.add_on:
                if isinstance(m, nn.Conv2d) and m.bias is not None:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            self.prototypes = nn.Parameter(torch.randn(self.num_prototypes, proto_dim, 1, self.proto_time_len))
        self.fc = nn.Linear(feat * feature_columns if fc_head == "flatten" else feat, num_classes)
        self.classifier = nn.Linear(self.num_prototypes, num_classes, bias=False)
        self.prototype_class_identity: torch.Tensor
        self.register_buffer("prototype_class_identity", self._identity(), persistent=False)
        self.reset_classifier()

    def prototype_classes(self) -> torch.Tensor:
        """(P,) the branch class each prototype belongs to: prototype ``j`` is class ``j // prototypes_per_class``'s."""
        return torch.arange(self.num_prototypes) // self.prototypes_per_class

    def _identity(self) -> torch.Tensor:
        ident = torch.zeros(self.num_prototypes, self.num_classes)
        ident[torch.arange(self.num_prototypes), self.prototype_classes()] = 1
        return ident

    def reset_classifier(self, correct: float = 1.0, incorrect: float = -0.5) -> None:
        """Classifier weights: ``correct`` for own-class prototypes, ``incorrect`` for the others."""
        ident = self.prototype_class_identity.t()
        with torch.no_grad():
            self.classifier.weight.copy_(correct * ident + incorrect * (1 - ident))

    @property
    def window_scale(self) -> float:
        """Per-window similarity scale ``int(sqrt(D·T)) / T`` (13 for D=512, T=3; 4 for T=32); 1 for 1D."""
        if self.kind == "1d":
            return 1.0
        d, t = self.prototypes.shape[1], self.proto_time_len
        return math.isqrt(d * t) / t

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output: (B, F) for 1D, (B, F, 1, W) for 2D. ``x`` is (B, 12, N)."""
        return self.backbone(x if self.kind == "1d" else x.unsqueeze(1))

    def feature_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of the plain FC head (feature-extractor stage)."""
        return self._fc(self.backbone_features(x))

    def _fc(self, f: torch.Tensor) -> torch.Tensor:
        if self.kind == "1d":
            return self.fc(f)
        if self.fc_head == "pool":
            return self.fc(f.mean(dim=(-2, -1)))
        if f.shape[-1] != self.feature_columns:
            raise ValueError(
                f"fc_head='flatten' needs {self.feature_columns} feature columns, got {f.shape[-1]} "
                "(the input length differs from the model's num_samples)"
            )
        return self.fc(f.flatten(1))  # (B, F·1·W), F-major like torch.flatten in the authors' head

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Add-on output in prototype space: (B, D) for 1D, (B, D, 1, W) for 2D."""
        return self.add_on(self.backbone_features(x))

    def window_similarities(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity of every prototype to every window of a latent.

        Args:
            z: latent (B, D) or (B, D, 1, W).

        Returns:
            (B, P, nW): nW = 1 for 1D, W − T + 1 for 2D.
        """
        if self.kind == "1d":
            return (F.normalize(z, dim=1) @ F.normalize(self.prototypes, dim=1).t()).unsqueeze(-1)
        t = self.proto_time_len
        segments = z.squeeze(2).unfold(-1, t, 1)  # (B, D, nW, T)
        segments = segments.permute(0, 2, 1, 3).flatten(2)  # (B, nW, D·T), flattened like the prototypes
        protos = self.prototypes.squeeze(2).flatten(1)  # (P, D·T)
        cos = F.normalize(segments, dim=-1) @ F.normalize(protos, dim=-1).t()  # (B, nW, P)
        return self.window_scale * cos.transpose(1, 2)

    def similarities(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype similarities (B, P): cosine (1D) or the mean over windows of the scaled cosine (2D)."""
        return self.window_similarities(self.latent(x)).mean(dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch logits (B, C) and similarities (B, P)."""
        sims = self.similarities(x)
        return self.classifier(sims), sims

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Branch logits (B, C), similarities (B, P) and FC-head logits (B, C) from one backbone pass."""
        logits, sims, fc, _ = self.forward_windows(x)
        return logits, sims, fc

    def forward_windows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward_all` and the per-window similarities (B, P, nW) they average, from one backbone pass."""
        f = self.backbone_features(x)
        windows = self.window_similarities(self.add_on(f))
        sims = windows.mean(dim=-1)
        return self.classifier(sims), sims, self._fc(f), windows


class ProtoECGNet(nn.Module):
    """ProtoECGNet (Sethi et al., MLHC 2025): three prototype branches and a fusion layer.

    Args:
        num_labels: L, outputs of the fusion layer (71 for PTB-XL "all").
        branch_indices: for rhythm, morphology and diffuse, the label indices (into the L outputs) of the branch's
            classes, in branch order. Defaults to the paper's 16 / 52 / 3 partition.
        prototypes_per_class: per branch (5, 18, 7).
        proto_time_len: prototype width in feature columns for the two 2D branches (3, 32).
        proto_dim: add-on / prototype channels (512).
        widths: backbone stage widths (64, 128, 256, 512).
        layers: residual blocks per stage ((2, 2, 2, 2) = ResNet-18).
        in_leads: 12.
        num_samples: samples per input (1000 = 10 s at 100 Hz); fixes the number of feature columns.
        dropout: dropout after stage 3 of the 2D backbones.
        fc_head: the plain FC head of the two 2D branches (feature-extractor stage only): ``flatten``
            (``Linear(F * W, C)`` on the flattened (B, F, 1, W) map, W = ``feature_columns``, 32 for 1000 samples;
            the authors' code) or ``pool`` (``Linear(F, C)`` on the averaged map; medinfer 0.1). The rhythm branch
            always pools. The prototype path, and so the fusion logits and similarities, do not depend on it.

    Input (B, 12, num_samples) in mV; output :class:`ProtoOutput`.

    Raises:
        ValueError: for inconsistent arguments (the message names the argument).
    """

    def __init__(
        self,
        num_labels: int = len(PTBXL_LABELS),
        branch_indices: Sequence[Sequence[int]] = _DEFAULT_INDICES,
        prototypes_per_class: Sequence[int] = (5, 18, 7),
        proto_time_len: Sequence[int] = (3, 32),
        proto_dim: int = 512,
        widths: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (2, 2, 2, 2),
        in_leads: int = 12,
        num_samples: int = 1000,
        dropout: float = 0.35,
        fc_head: str = "flatten",
    ) -> None:
        super().__init__()
        if fc_head not in FC_HEADS:
            raise ValueError(f"fc_head must be one of {FC_HEADS}, got {fc_head!r}")
        if len(branch_indices) != 3:
            raise ValueError(f"branch_indices must give 3 branches, got {len(branch_indices)}")
        if len(prototypes_per_class) != 3:
            raise ValueError(f"prototypes_per_class must give 3 values, got {prototypes_per_class}")
        if len(proto_time_len) != 2:
            raise ValueError(f"proto_time_len must give 2 values (morphology, diffuse), got {proto_time_len}")
        if len(widths) != 4 or len(layers) != 4:
            raise ValueError(f"widths and layers must have 4 stages, got {widths} and {layers}")
        flat = [int(i) for idx in branch_indices for i in idx]
        if any(i < 0 or i >= num_labels for i in flat) or len(set(flat)) != len(flat):
            raise ValueError("branch_indices must be distinct label indices in [0, num_labels)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_labels = num_labels
        self.num_samples = num_samples
        self.fc_head = fc_head
        self.feature_columns = self._columns(num_samples)
        for t in proto_time_len:
            if not 1 <= t <= self.feature_columns:
                raise ValueError(f"proto_time_len values must be in [1, {self.feature_columns}], got {proto_time_len}")
        self.branch_names = BRANCH_NAMES
        kinds = ("1d", "2d", "2d")
        times = (1, *proto_time_len)
        self.branches = nn.ModuleDict(
            {
                name: ProtoBranch(
                    kind,
                    len(idx),
                    ppc,
                    proto_dim,
                    t,
                    widths=widths,
                    layers=layers,
                    in_leads=in_leads,
                    dropout=dropout,
                    fc_head=fc_head if kind == "2d" else "pool",
                    feature_columns=self.feature_columns,
                )
                for name, kind, idx, ppc, t in zip(
                    BRANCH_NAMES, kinds, branch_indices, prototypes_per_class, times, strict=True
                )
            }
        )
        for name, idx in zip(BRANCH_NAMES, branch_indices, strict=True):
            self.register_buffer(f"{name}_index", torch.tensor([int(i) for i in idx], dtype=torch.long), False)
        self.num_prototypes = sum(self.branch(name).num_prototypes for name in BRANCH_NAMES)
        self.fusion = nn.Linear(self.num_prototypes, num_labels, bias=True)

    @staticmethod
    def _columns(n: int) -> int:
        n = (n + 2 * 3 - 7) // 2 + 1  # stem conv, stride 2
        n = (n + 2 - 3) // 2 + 1  # max pool
        for _ in range(3):  # stages 2-4, stride 2
            n = (n + 2 - 3) // 2 + 1
        return n

    def branch(self, name: str) -> ProtoBranch:
        """The branch called ``name`` (rhythm, morphology, diffuse)."""
        return self.branches[name]  # type: ignore[return-value]

    def branch_index(self, name: str) -> torch.Tensor:
        """Label indices (C,) of a branch's classes."""
        return getattr(self, f"{name}_index")

    def prototype_slices(self) -> dict[str, slice]:
        """Where each branch's prototypes sit in the concatenated similarity vector."""
        out, start = {}, 0
        for name in BRANCH_NAMES:
            n = self.branch(name).num_prototypes
            out[name] = slice(start, start + n)
            start += n
        return out

    def train(self, mode: bool = True) -> ProtoECGNet:
        """Train mode, except that fully frozen backbones and add-ons stay in eval mode.

        Staged training freezes parts of the network; keeping their batch norm statistics and dropout fixed is
        what keeps projected prototypes equal to the latents they were copied from.
        """
        super().train(mode)
        if mode:
            for name in BRANCH_NAMES:
                branch = self.branch(name)
                for part in (branch.backbone, branch.add_on):
                    if not any(p.requires_grad for p in part.parameters()):
                        part.eval()
        return self

    def forward(self, x: torch.Tensor) -> ProtoOutput:
        """Fusion logits, branch logits and similarities of a batch ``x`` (B, 12, N)."""
        return self.forward_windows(x)[0]

    def forward_windows(self, x: torch.Tensor) -> tuple[ProtoOutput, dict[str, torch.Tensor]]:
        """:meth:`forward` and, per branch, the similarity of every prototype to every window (B, P_branch, nW),
        whose mean over windows the similarities are (nW = 1 for the global prototypes), from the same pass."""
        if x.ndim != 3:
            raise ValueError(f"expected input (B, leads, samples), got shape {tuple(x.shape)}")
        sims, branch_logits = [], x.new_zeros(x.shape[0], self.num_labels)
        feature_logits = x.new_zeros(x.shape[0], self.num_labels)
        windows = {}
        for name in BRANCH_NAMES:
            logits, s, fe, windows[name] = self.branch(name).forward_windows(x)
            index = self.branch_index(name)
            branch_logits = branch_logits.index_copy(1, index, logits.to(branch_logits.dtype))
            feature_logits = feature_logits.index_copy(1, index, fe.to(feature_logits.dtype))
            sims.append(s)
        similarities = torch.cat(sims, dim=1)
        return ProtoOutput(self.fusion(similarities), branch_logits, similarities, feature_logits), windows


#: the torchvision key every ResNet-18 state dict has; where it sits tells the prefix (``module.``, ``resnet.``)
_RESNET_ANCHOR = "layer1.0.conv1.weight"
#: torchvision layers the authors do not carry over: the replaced first conv (3×7×7 → 1×12×7) and the head
_RESNET_SKIPPED = re.compile(r"(conv1|fc)\.")


def _resnet18_key(ours: str) -> str:
    """The torchvision ResNet-18 key of a :class:`ResNet2dBackbone` state-dict key.

    Our stem is Sequential(conv, BatchNorm2d, ReLU, MaxPool), so ``stem.1.*`` is torchvision's ``bn1.*``; MONAI's
    ResNetBlock names its parts like torchvision's BasicBlock (conv1, bn1, conv2, bn2, downsample.0/.1), so
    ``layerN.i.*`` keeps its name.
    """
    return "bn1." + ours.removeprefix("stem.1.") if ours.startswith("stem.1.") else ours


def load_resnet18_2d(
    model: ProtoECGNet, state_dict: Mapping[str, torch.Tensor], branches: Sequence[str] = ("morphology", "diffuse")
) -> dict[str, list[str]]:
    """Copy a torchvision ImageNet ResNet-18 state dict into the 2D branches' backbones, in place.

    Every layer is copied except ``conv1.*`` (ours spans the 12 leads with a 12×7 kernel on one channel) and
    ``fc.*`` (the head), which keep their initialisation, as in the authors' code. Batch norm statistics are
    copied too, ``num_batches_tracked`` when the state dict has it. Nothing is copied unless everything fits.

    Args:
        model: the network to initialise (its 2D widths must be (64, 128, 256, 512), layers (2, 2, 2, 2)).
        state_dict: a torchvision ``resnet18`` state dict (``bn1.weight``, ``layer1.0.conv1.weight``,
            ``layer2.0.downsample.0.weight``...); a common key prefix such as ``module.`` or ``resnet.`` is
            stripped and keys outside it are skipped.
        branches: the 2D branches to initialise.

    Returns:
        ``{"loaded": [model state-dict keys written], "skipped": [state-dict keys not used]}``, for the model card.

    Raises:
        ValueError: for a branch that is not 2D, a state dict that is not a ResNet-18 layout (a missing or an
            unexpected key) or a tensor whose shape differs from the model's (the key and both shapes).
    """
    names = list(branches)
    for name in names:
        if name not in BRANCH_NAMES or model.branch(name).kind != "2d":
            two_d = [b for b in BRANCH_NAMES if model.branch(b).kind == "2d"]
            raise ValueError(f"branches: {name!r} is not a 2D branch; choose from {two_d}")
    if not names:
        raise ValueError("branches: name at least one 2D branch")
    prefixes = {k[: -len(_RESNET_ANCHOR)] for k in state_dict if k.endswith(_RESNET_ANCHOR)}
    prefixes = {p for p in prefixes if p == "" or p.endswith(".")}
    if len(prefixes) != 1:
        found = "no" if not prefixes else f"several ({sorted(prefixes)})"
        raise ValueError(f"state_dict is not a torchvision ResNet-18 state dict: {found} {_RESNET_ANCHOR!r} key")
    prefix = prefixes.pop()
    source = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    skipped = [k for k in state_dict if not k.startswith(prefix) or _RESNET_SKIPPED.match(k[len(prefix) :])]
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict[{prefix + key!r}] is a {type(value).__name__}, not a tensor")

    # every branch has the same backbone layout; check it once against the source, then copy into each
    targets = {
        k: v
        for k, v in model.branch(names[0]).backbone.state_dict().items()
        if not k.startswith("stem.0.")  # the replaced first conv
    }
    wanted = {_resnet18_key(k): k for k in targets}
    missing = [s for s in wanted if s not in source and not s.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"state_dict is not a ResNet-18 layout for this model: missing {prefix + missing[0]!r}"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}"
        )
    unexpected = [k for k in source if k not in wanted and not _RESNET_SKIPPED.match(k)]
    if unexpected:
        raise ValueError(
            f"state_dict is not a ResNet-18 layout for this model: unexpected {prefix + unexpected[0]!r}"
            f"{f' and {len(unexpected) - 1} more' if len(unexpected) > 1 else ''} "
            "(the model's layers must be (2, 2, 2, 2))"
        )
    pairs = [(ours, src) for src, ours in wanted.items() if src in source]
    for ours, src in pairs:
        if source[src].shape != targets[ours].shape:
            raise ValueError(
                f"state_dict[{prefix + src!r}] has shape {tuple(source[src].shape)} but the model's {ours!r} has "
                f"{tuple(targets[ours].shape)} (widths must be (64, 128, 256, 512), layers (2, 2, 2, 2))"
            )

    loaded = []
    with torch.no_grad():
        for name in names:
            backbone_state = model.branch(name).backbone.state_dict()  # shares storage with the module
            for ours, src in pairs:
                backbone_state[ours].copy_(source[src])
                loaded.append(f"branches.{name}.backbone.{ours}")
    return {"loaded": loaded, "skipped": skipped}


_SPEC = ModelSpec(
    task="ecg",
    spatial_dims=1,
    in_channels=LEADS,
    label_names=PTBXL_LABELS,
    output_activation="sigmoid",
    roi_size=(1000,),
    data_card="ptbxl.md",
    paper="Sethi et al., ProtoECGNet, MLHC 2025 (arXiv 2504.08713)",
    tiny_kwargs={
        "prototypes_per_class": (2, 2, 2),
        "proto_dim": 32,
        "widths": (8, 16, 32, 64),
        "layers": (1, 1, 1, 1),
        "dropout": 0.0,
    },
    example_size=(1000,),
    # medinfer 0.1 checkpoints predate fc_head; their 2D FC heads pool the feature map
    legacy_kwargs={"fc_head": "pool"},
)


@register_model("ecg_protoecgnet", _SPEC)
def ecg_protoecgnet(**kwargs) -> ProtoECGNet:
    """ProtoECGNet with the paper's settings; keyword arguments override them (see :class:`ProtoECGNet`)."""
    return ProtoECGNet(**kwargs)
