"""``medinfer train ecg`` on the shared runner: ProtoECGNet's stages feature_extractor → joint → projection →
classifier → fusion.

What is the ecg task's own: the PTB-XL folds, the per-stage trainable parameters, losses and learning rates,
the projection stage (no gradients), per-class thresholds and the model card. Every branch stage trains the
selected branches together (their parameters and losses are independent, so this equals training them one
after another with the same batches). Each stage keeps its best epoch by validation macro AUROC (fold 9).
Per-class thresholds (max F1 on validation) go into the checkpoint with the label partition, the prototype
sources and the stages run. Under torchrun (``--distributed``) the projection is sharded across the ranks and
gathered (:func:`project_sharded`), so it equals a single process's.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models import create_model
from models.protoecgnet import BRANCH_NAMES, LEADS, PTBXL_LABELS, ProtoECGNet, load_resnet18_2d
from pipelines.common import distributed
from pipelines.common.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint, read_state_dict
from pipelines.common.classification import activate, multilabel_summary
from pipelines.common.metrics import best_thresholds, macro_auroc
from pipelines.common.trainer import CardText, Stage, TrainingRun
from pipelines.ecg.config import MODEL_NAME, TRAIN_FOLDS, VAL_FOLDS, EcgConfig, EcgTrainOptions
from pipelines.ecg.datasets import EcgArrays, load_split
from pipelines.ecg.losses import PrototypeLossWeights, jaccard_cooccurrence, offclass_l1, pos_weight, prototype_loss
from pipelines.ecg.stages import STAGE_ORDER, project_prototypes, set_trainable
from pipelines.ecg.stages import Stage as EcgStage

__all__ = [
    "EcgRun",
    "apply_projection",
    "merge_projections",
    "predict_logits",
    "project_sharded",
    "projection_candidates",
]

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(model: ProtoECGNet, x: torch.Tensor, batch_size: int, which: str = "fusion") -> np.ndarray:
    """Logits (N, L) of ``fusion``, ``branch`` or ``feature`` (the plain FC heads, scattered to label order)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(device)
        if which == "feature":
            logits = xb.new_zeros(xb.shape[0], model.num_labels)
            for name in BRANCH_NAMES:
                logits[:, model.branch_index(name)] = model.branch(name).feature_logits(xb)
        else:
            o = model(xb)
            logits = o.logits if which == "fusion" else o.branch_logits
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.num_labels), np.float32)


#: per branch, one candidate per prototype: ``source`` (as :func:`project_prototypes` reports it, ``record_index``
#: into the whole training set), ``prototype`` (the latent it would become) and ``segment`` (its input segment)
Candidates = dict[str, list[dict[str, Any]]]


def _beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether candidate ``a`` replaces ``b``: a higher score, or the same score from an earlier record (a single
    process keeps the first best record it meets, in record order)."""
    sa, sb = a["source"]["score"], b["source"]["score"]
    if sa is None or math.isnan(sa):
        return False
    if sb is None or math.isnan(sb) or sa > sb:
        return True
    return bool(sa == sb and a["source"]["record_index"] < b["source"]["record_index"])


def merge_projections(parts: Sequence[Candidates]) -> Candidates:
    """The best candidate of each prototype over ``parts`` (shards of the training records); see :func:`_beats`."""
    if not parts:
        raise ValueError("no projection candidates to merge")
    out = {name: list(cands) for name, cands in parts[0].items()}
    for part in parts[1:]:
        for name, cands in part.items():
            out[name] = [c if _beats(c, o) else o for c, o in zip(cands, out[name], strict=True)]
    return out


@torch.no_grad()
def projection_candidates(
    model: ProtoECGNet,
    x: torch.Tensor,
    y: np.ndarray,
    record_ids: Sequence[str],
    *,
    branches: Iterable[str],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> Candidates:
    """This rank's projection candidates: the best of batches ``rank``, ``rank + world_size``, ... of ``x``.

    The batches are the ones a single process forms (records ``[i, i + batch_size)``), each projected by
    :func:`project_prototypes` against the unprojected prototypes, so every similarity is computed exactly as a
    single process computes it. The model's prototypes are left as they were.

    Args:
        model: the network.
        x: (N, 12, L) all training inputs; y: (N, num_labels) their labels; record_ids: their N identifiers.
        branches: branches to project.
        batch_size: records per forward pass.
        rank, world_size: this process's share.
    """
    names = list(branches)
    original = {name: model.branch(name).prototypes.detach().clone() for name in names}
    y = np.asarray(y)

    def project(start: int, stop: int) -> Candidates:
        sources, segments = project_prototypes(
            model, x[start:stop], y[start:stop], list(record_ids[start:stop]), branches=names, batch_size=batch_size
        )
        out: Candidates = {}
        for name in names:
            b = model.branch(name)
            protos = b.prototypes.detach().cpu().clone()
            b.prototypes.data.copy_(original[name])  # the next batch compares with the unprojected prototypes
            out[name] = []
            for src in (s for s in sources if s["branch"] == name):  # in prototype order
                if src["record_index"] is not None:
                    src = {**src, "record_index": start + src["record_index"]}
                p = src["prototype"]
                out[name].append({"source": src, "prototype": protos[p], "segment": segments[name][p]})
        return out

    parts = [project(0, 0)]  # no records: every prototype as it is, without a source
    for k, start in enumerate(range(0, x.shape[0], batch_size)):
        if k % world_size == rank:
            parts.append(project(start, start + batch_size))
    return merge_projections(parts)


def apply_projection(model: ProtoECGNet, merged: Candidates) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Set each prototype to its winning candidate; return the sources and segments as :func:`project_prototypes`."""
    sources: list[dict[str, Any]] = []
    segments: dict[str, torch.Tensor] = {}
    for name, cands in merged.items():
        b = model.branch(name)
        b.prototypes.data.copy_(torch.stack([c["prototype"] for c in cands]).to(b.prototypes.device))
        sources += [dict(c["source"]) for c in cands]
        segments[name] = torch.stack([c["segment"] for c in cands])
    return sources, segments


@torch.no_grad()
def project_sharded(
    model: ProtoECGNet,
    x: torch.Tensor,
    y: np.ndarray,
    record_ids: Sequence[str],
    *,
    branches: Iterable[str],
    batch_size: int,
    rank: int,
    world_size: int,
    gather: Callable[[Candidates], list[Candidates]] = distributed.gather_objects,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Projection with the training batches split across ranks: equal to :func:`project_prototypes` over all.

    Each rank finds its candidates (:func:`projection_candidates`), ``gather`` brings every rank's (in rank
    order) to every rank, and each prototype takes the best: the highest similarity, ties to the lowest record
    index (as a single process). Every rank ends with the same prototypes.

    Returns:
        ``sources`` and ``segments`` as :func:`project_prototypes` returns them.
    """
    local = projection_candidates(
        model, x, y, record_ids, branches=branches, batch_size=batch_size, rank=rank, world_size=world_size
    )
    return apply_projection(model, merge_projections(gather(local)))


class EcgRun(TrainingRun[EcgConfig]):
    """A ProtoECGNet run: the method's stages on the shared epoch loop; projection runs without gradients."""

    model: ProtoECGNet

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.config.model_kwargs)

    @property
    def train_options(self) -> EcgTrainOptions:
        opts = self.task_options
        return opts if isinstance(opts, EcgTrainOptions) else EcgTrainOptions()

    # -- data and model ------------------------------------------------------------------------------------------
    def load_data(self) -> None:
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.train_data: EcgArrays = load_split(self.data_dir, TRAIN_FOLDS, highpass_hz=cfg.highpass_hz)
        self.val_data: EcgArrays = load_split(self.data_dir, VAL_FOLDS, highpass_hz=cfg.highpass_hz)
        if len(self.train_data) == 0 or len(self.val_data) == 0:
            raise ValueError(f"{self.data_dir}: needs records in strat_folds 1-8 (train) and 9 (validation)")
        self.x_train = torch.from_numpy(self.train_data.x)
        self.x_val = torch.from_numpy(self.val_data.x)
        g = torch.Generator().manual_seed(self.options.seed)
        dataset = torch.utils.data.TensorDataset(self.x_train, torch.from_numpy(self.train_data.y))
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=g)

    def build_model(self) -> ProtoECGNet:
        single = self.train_options.stage is not None
        last = self.out_dir / LAST_NAME
        init = self.config.init_checkpoint or (str(last) if single and last.is_file() else None)
        self.extra: dict[str, Any] = {}
        if init:
            ckpt = load_checkpoint(init, task="ecg")
            logger.info("starting from %s", ckpt.path)
            self.extra = dict(ckpt.extra)
            return ckpt.build_model("cpu")  # type: ignore[return-value]
        model: ProtoECGNet = create_model(MODEL_NAME, **self.config.model_kwargs)  # type: ignore[assignment]
        if self.train_options.init_weights is not None:
            path = self.train_options.init_weights.expanduser()
            state = read_state_dict(path)
            try:
                report = load_resnet18_2d(model, state)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
            self.extra["init_weights"] = {"file": path.name, "tensors_loaded": len(report["loaded"])}
        return model

    def stages(self) -> list[Stage]:
        names = [EcgStage.parse(self.train_options.stage)] if self.train_options.stage else list(STAGE_ORDER)
        return [
            Stage(s.value, self.config.epochs.get(s.value, 1), gradient=s is not EcgStage.PROJECTION) for s in names
        ]

    def make_loader(self, stage: Stage) -> Iterable[Any]:
        return self.loader

    # -- the loop's hooks --------------------------------------------------------------------------------------
    def run_stage(self, stage: Stage) -> None:
        self.model.to(self.device)
        if not stage.gradient:
            self.project()
            return
        self._prepare_stage(EcgStage(stage.name))
        self.best_state: dict[str, Any] = {}
        self.fit(stage)
        self.model.load_state_dict(self.best_state["state"])

    def _prepare_stage(self, stage: EcgStage) -> None:
        cfg, model = self.config, self.model
        self.stage = stage
        self.branches = cfg.branches if stage is not EcgStage.FUSION else ()
        self.params = set_trainable(model, stage, cfg.branches)
        y = self.train_data.y
        device = self.device
        self.pos_w = {b: pos_weight(y[:, model.branch_index(b).cpu().numpy()]).to(device) for b in BRANCH_NAMES}
        self.pos_w["fusion"] = pos_weight(y).to(device)
        self.co = {b: jaccard_cooccurrence(y[:, model.branch_index(b).cpu().numpy()]).to(device) for b in BRANCH_NAMES}
        self.weights = PrototypeLossWeights(cfg.clst, cfg.sep, cfg.spars, cfg.div, cfg.cnrst)

    def configure_optimizers(self, stage: Stage) -> tuple[torch.optim.Optimizer, Any]:
        lr = self.config.lr.get(stage.name, 1e-4)
        opt = torch.optim.Adam(self.params, lr=lr, weight_decay=self.config.weight_decay)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=stage.epochs)

    def train_step(self, batch: Any, stage: Stage) -> torch.Tensor:
        x, y = batch
        model = self.model
        if self.stage is EcgStage.FUSION:
            logits = model(x).logits
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_w["fusion"])
            return loss + self.config.l1_fusion * model.fusion.weight.abs().sum()
        loss = x.new_zeros(())
        for name in self.branches:
            b = model.branch(name)
            yb = y[:, model.branch_index(name)]
            if self.stage is EcgStage.FEATURE_EXTRACTOR:
                loss = loss + F.binary_cross_entropy_with_logits(b.feature_logits(x), yb, pos_weight=self.pos_w[name])
            elif self.stage is EcgStage.JOINT:
                logits, sims = b(x)
                term, _ = prototype_loss(
                    logits, sims, yb, b.prototypes, b.prototype_class_identity, self.pos_w[name], self.co[name],
                    self.weights,
                )  # fmt: skip
                loss = loss + term
            else:  # classifier
                logits, _ = b(x)
                loss = loss + F.binary_cross_entropy_with_logits(logits, yb, pos_weight=self.pos_w[name])
                loss = loss + self.config.l1_classifier * offclass_l1(b.classifier.weight, b.prototype_class_identity)
        return loss

    def validate(self, stage: Stage) -> dict[str, float]:
        y = self.val_data.y
        which = {EcgStage.FEATURE_EXTRACTOR: "feature", EcgStage.FUSION: "fusion"}.get(self.stage, "branch")
        logits = predict_logits(self.model, self.x_val, self.config.eval_batch_size, which)
        if self.branches:
            idx = np.concatenate([self.model.branch_index(b).cpu().numpy() for b in self.branches])
            return {"val_auroc": macro_auroc(y[:, idx], logits[:, idx])}
        return {"val_auroc": macro_auroc(y, logits)}

    def monitor(self, stage: Stage) -> tuple[str, str]:
        return "val_auroc", "max"

    def on_improved(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        # each stage keeps its best epoch in memory and continues from it; checkpoints are written per stage
        self.best_state = {"state": copy.deepcopy(self.model.state_dict()), "epoch": epoch}

    def on_epoch_end(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_stage_end(self, stage: Stage) -> None:
        done = [*self.extra.get("stages_done", []), stage.name]
        self.extra["stages_done"] = done
        self.finalise_extra()
        self.save(LAST_NAME, dict(self.stage_metrics))

    def project(self) -> None:
        """Projection ("push"): each prototype becomes the best-matching training latent of its class."""
        cfg, model = self.config, self.model
        set_trainable(model, EcgStage.PROJECTION)
        if self.dist is None:
            sources, segments = project_prototypes(
                model, self.x_train, self.train_data.y, self.train_data.ids, branches=cfg.branches,
                batch_size=cfg.eval_batch_size,
            )  # fmt: skip
        else:
            sources, segments = project_sharded(
                model, self.x_train, self.train_data.y, self.train_data.ids, branches=cfg.branches,
                batch_size=cfg.eval_batch_size, rank=self.dist.rank, world_size=self.dist.world_size,
            )  # fmt: skip
        projected = {s["branch"] for s in sources}
        kept = [s for s in self.extra.get("prototype_sources", []) if s["branch"] not in projected]
        self.extra["prototype_sources"] = kept + sources
        self.extra["prototype_segments"] = {**self.extra.get("prototype_segments", {}), **segments}
        logits = predict_logits(model, self.x_val, cfg.eval_batch_size, "branch")
        self.stage_metrics[EcgStage.PROJECTION.value] = {"val_auroc": macro_auroc(self.val_data.y, logits)}

    # -- after the stages ---------------------------------------------------------------------------------------
    def finalise_extra(self) -> None:
        """Thresholds (max F1 on validation) and the label partition into the checkpoint's extra."""
        model = self.model
        probs = activate(predict_logits(model, self.x_val, self.config.eval_batch_size, "fusion"), "sigmoid")
        self.extra["thresholds"] = [float(t) for t in best_thresholds(self.val_data.y, probs)]
        self.extra["label_partition"] = {b: [PTBXL_LABELS[int(i)] for i in model.branch_index(b)] for b in BRANCH_NAMES}
        done = self.extra.get("stages_done") or []
        self.extra["stage"] = done[-1] if done else None
        self.val_probs = probs

    def finalise(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.finalise_extra()
        groups = {b: [int(i) for i in self.model.branch_index(b)] for b in BRANCH_NAMES}
        self.validation = multilabel_summary(
            self.val_data.y, self.val_probs, np.asarray(self.extra["thresholds"]), groups
        )
        metrics = {"validation": self.validation, "stages": self.stage_metrics}
        self.save(BEST_NAME, metrics)
        self.save(LAST_NAME, metrics)

    def checkpoint_extra(self) -> dict[str, Any]:
        return dict(self.extra)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "sampling_rate_hz": 100.0,
            "num_samples": 1000,
            "highpass_hz": self.config.highpass_hz,
            "leads": list(LEADS),
            "units": "mV",
            "length_rule": "central 10 s if longer; zero-pad 8-10 s; error below 8 s",
        }

    def summary(self) -> dict[str, Any]:
        return {"validation": self.validation}

    def best_metrics(self) -> dict[str, Any]:
        return dict(self.validation)

    def departure_notes(self) -> list[str]:
        """How the 2D branches start and what the stage-1 2D head is, against the authors' code."""
        init = self.extra.get("init_weights")
        init_note = (
            f"the 2D ResNet-18 branches start from the local state dict `{init['file']}` (all layers but the replaced "
            "12x7 first conv and the head, as the authors do with ImageNet weights) [CODE]"
            if init
            else "Departure from the paper: the 2D ResNet-18 branches start from random weights; the authors start "
            "from ImageNet weights (all but the replaced 12x7 first conv). medinfer downloads nothing: pass "
            "`--init-weights FILE` with a local torchvision ResNet-18 state dict [CODE]"
        )
        head = self.config.model_kwargs.get("fc_head", "pool")
        head_note = (
            "the feature-extractor stage's 2D head is Linear(F*W, C) on the flattened (F, 1, W) map, as the authors' "
            "code does [CODE]"
            if head == "flatten"
            else "Departure from the authors' code: the feature-extractor stage's 2D head averages the feature map "
            "before its Linear layer (the authors flatten it) [INF]"
        )
        return [init_note, head_note]

    def card(self) -> CardText:
        cfg = self.config
        kw = cfg.model_kwargs
        return CardText(
            title="ProtoECGNet (ecg)",
            summary="Three prototype branches (rhythm 1D ResNet-18 with global prototypes; morphology 2D ResNet-18 "
            "with time-localised prototypes; diffuse 2D ResNet-18 with global prototypes) and a fusion layer give "
            "71 PTB-XL statement probabilities; each prediction is explained by the most similar prototypes, each a "
            "projected segment of a training ECG.",
            intended_use="Research on interpretable ECG classification and software testing. Not for clinical use.",
            data=f"PTB-XL layout under `{self.data_dir}`: strat_fold 1-8 training ({len(self.train_data)} records), "
            f"9 validation ({len(self.val_data)}; stage selection, thresholds), 10 test. 12 leads, 100 Hz, 10 s, "
            "0.5 Hz zero-phase high-pass",
            metrics=self.validation,
            method_notes=[
                f"stages run: {', '.join(self.extra.get('stages_done', []))} [CODE]",
                f"prototypes per class {kw.get('prototypes_per_class')}, widths {kw.get('widths')}, proto_dim "
                f"{kw.get('proto_dim')} [CODE defaults 5/18/7, ResNet-18, 512]",
                f"loss weights clst {cfg.clst}, sep {cfg.sep}, div {cfg.div}, cnrst {cfg.cnrst}; L1 "
                f"{cfg.l1_classifier} (classifier, off-class only) and {cfg.l1_fusion} (fusion) [CODE]",
                *self.departure_notes(),
                "all selected branches train together in each branch stage (independent parameters and losses) [INF]",
                "each stage keeps its best epoch by validation macro AUROC on fold 9; Adam with cosine annealing [INF]",
                "per-class decision thresholds chosen on validation by max F1 (paper: 0.5) [INF]",
                "records of other lengths: central 10 s if longer, zero-padded if 8-10 s, rejected below 8 s [INF]",
            ],
            limitations=[
                "Only PTB-XL-like 12-lead resting ECGs; rhythm strips, paediatric or paced records untested.",
                "Prototypes are training segments; explanations show similarity, not causation.",
            ],
        )
