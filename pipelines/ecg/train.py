"""``medinfer train ecg``: ProtoECGNet's stages feature_extractor → joint → projection → classifier → fusion.

Every branch stage trains the selected branches together (their parameters and losses are independent, so this
equals training them one after another with the same batches). Each stage keeps its best epoch by validation
macro AUROC (fold 9). Per-class thresholds (max F1 on validation) go into the checkpoint with the label
partition, the prototype sources and the stages run.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models import create_model
from models.protoecgnet import BRANCH_NAMES, LEADS, PTBXL_LABELS, ProtoECGNet
from pipelines.common.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    Checkpoint,
    load_checkpoint,
    make_provenance,
    save_checkpoint,
)
from pipelines.common.modelcard import write_model_card
from pipelines.common.plots import plot_curves
from pipelines.common.seed import seed_everything
from pipelines.common.task import TrainOptions, resolve_device
from pipelines.common.trainer import Trainer
from pipelines.ecg.config import MODEL_NAME, TRAIN_FOLDS, VAL_FOLDS, EcgConfig, load_config
from pipelines.ecg.datasets import EcgArrays, load_split
from pipelines.ecg.evaluate import best_thresholds, macro_auroc, summary_metrics
from pipelines.ecg.losses import (
    PrototypeLossWeights,
    jaccard_cooccurrence,
    offclass_l1,
    pos_weight,
    prototype_loss,
)
from pipelines.ecg.stages import STAGE_ORDER, Stage, project_prototypes, set_trainable

__all__ = ["StageTrainer", "train", "predict_logits"]

logger = logging.getLogger(__name__)

DATASET = "PTB-XL"
DATA_CARD = "ptbxl.md"


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


class StageTrainer(Trainer):
    """The generic loop with ProtoECGNet's per-stage optimiser, loss and validation (one hook each).

    Args:
        model: the network.
        stage: the stage to train (not projection).
        cfg: run configuration.
        train_y: (N, L) training labels, for pos_weight and label co-occurrence.
        branches: branches trained in branch stages.
        **kwargs: :class:`Trainer` arguments.
    """

    def __init__(
        self,
        model: ProtoECGNet,
        stage: Stage,
        cfg: EcgConfig,
        train_y: np.ndarray,
        branches: tuple[str, ...],
        **kwargs: Any,
    ) -> None:
        self.stage = stage
        self.cfg = cfg
        self.branches = branches if stage is not Stage.FUSION else ()
        self.params = set_trainable(model, stage, branches)
        device = kwargs["device"]
        self.pos_w = {b: pos_weight(train_y[:, model.branch_index(b).numpy()]).to(device) for b in BRANCH_NAMES}
        self.pos_w["fusion"] = pos_weight(train_y).to(device)
        self.co = {b: jaccard_cooccurrence(train_y[:, model.branch_index(b).numpy()]).to(device) for b in BRANCH_NAMES}
        self.weights = PrototypeLossWeights(cfg.clst, cfg.sep, cfg.spars, cfg.div, cfg.cnrst)
        self.terms: dict[str, float] = {}
        super().__init__(model, **kwargs)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        lr = self.cfg.lr.get(self.stage.value, 1e-4)
        opt = torch.optim.Adam(self.params, lr=lr, weight_decay=self.cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)

    def train_step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        model: ProtoECGNet = self.model  # type: ignore[assignment]
        if self.stage is Stage.FUSION:
            logits = model(x).logits
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_w["fusion"])
            return loss + self.cfg.l1_fusion * model.fusion.weight.abs().sum()
        loss = x.new_zeros(())
        for name in self.branches:
            b = model.branch(name)
            yb = y[:, model.branch_index(name)]
            if self.stage is Stage.FEATURE_EXTRACTOR:
                loss = loss + F.binary_cross_entropy_with_logits(b.feature_logits(x), yb, pos_weight=self.pos_w[name])
            elif self.stage is Stage.JOINT:
                logits, sims = b(x)
                term, self.terms = prototype_loss(
                    logits, sims, yb, b.prototypes, b.prototype_class_identity, self.pos_w[name], self.co[name],
                    self.weights,
                )  # fmt: skip
                loss = loss + term
            else:  # classifier
                logits, _ = b(x)
                loss = loss + F.binary_cross_entropy_with_logits(logits, yb, pos_weight=self.pos_w[name])
                loss = loss + self.cfg.l1_classifier * offclass_l1(b.classifier.weight, b.prototype_class_identity)
        return loss

    def validate(self, val_data: Any) -> dict[str, float]:
        x, y = val_data
        model: ProtoECGNet = self.model  # type: ignore[assignment]
        which = {Stage.FEATURE_EXTRACTOR: "feature", Stage.FUSION: "fusion"}.get(self.stage, "branch")
        logits = predict_logits(model, x, self.cfg.eval_batch_size, which)
        if self.branches:
            idx = np.concatenate([model.branch_index(b).numpy() for b in self.branches])
            return {"val_auroc": macro_auroc(y[:, idx], logits[:, idx])}
        return {"val_auroc": macro_auroc(y, logits)}


def _stages_to_run(stage: str | None) -> list[Stage]:
    return [Stage.parse(stage)] if stage else list(STAGE_ORDER)


def _initial_model(cfg: EcgConfig, out_dir: Path, single_stage: bool) -> tuple[ProtoECGNet, dict[str, Any]]:
    init = cfg.init_checkpoint or (
        str(out_dir / LAST_NAME) if single_stage and (out_dir / LAST_NAME).is_file() else None
    )
    if init:
        ckpt = load_checkpoint(init, task="ecg")
        logger.info("starting from %s", ckpt.path)
        return ckpt.build_model("cpu"), dict(ckpt.extra)
    return create_model(MODEL_NAME, **cfg.model_kwargs), {}  # type: ignore[return-value]


def _checkpoint(model: ProtoECGNet, cfg: EcgConfig, extra: dict[str, Any], metrics: dict, seed: int) -> Checkpoint:
    return Checkpoint(
        task="ecg",
        model_name=MODEL_NAME,
        model_kwargs=dict(cfg.model_kwargs),
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        labels=list(PTBXL_LABELS),
        config=cfg.to_dict(),
        preprocessing={"sampling_rate_hz": 100.0, "num_samples": 1000, "highpass_hz": cfg.highpass_hz,
                       "leads": list(LEADS),
                       "units": "mV", "length_rule": "central 10 s if longer; zero-pad 8-10 s; error below 8 s"},
        metrics=metrics,
        provenance=make_provenance(DATASET, DATA_CARD, seed),
        extra=extra,
    )  # fmt: skip


def _synthetic(data_dir: Path) -> bool:
    """The synthetic generator leaves a marker in the scp_statements descriptions."""
    f = data_dir / "scp_statements.csv"
    return f.is_file() and "not generated synthetically" in f.read_text()


def train(options: TrainOptions) -> Path:
    """Run the stages (all, or ``options.stage``); write checkpoints, metrics.json, a curve PNG and a model card."""
    cfg = load_config(options.preset, options.config_path, options.epochs)
    seed_everything(options.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(options.device)
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = _stages_to_run(options.stage)
    train_data: EcgArrays = load_split(options.data_dir, TRAIN_FOLDS, highpass_hz=cfg.highpass_hz)
    val_data: EcgArrays = load_split(options.data_dir, VAL_FOLDS, highpass_hz=cfg.highpass_hz)
    if len(train_data) == 0 or len(val_data) == 0:
        raise ValueError(f"{options.data_dir}: needs records in strat_folds 1-8 (train) and 9 (validation)")
    model, extra = _initial_model(cfg, out_dir, single_stage=options.stage is not None)
    model = model.to(device)
    x_train = torch.from_numpy(train_data.x)
    y_train = torch.from_numpy(train_data.y)
    x_val = torch.from_numpy(val_data.x)
    g = torch.Generator().manual_seed(options.seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train, y_train), batch_size=cfg.batch_size, shuffle=True, generator=g
    )
    history: list[dict[str, float]] = []
    stage_metrics: dict[str, Any] = {}
    stages_done = list(extra.get("stages_done", []))
    for stage in stages:
        logger.info("stage %s", stage.value)
        if stage is Stage.PROJECTION:
            set_trainable(model, stage)
            sources, segments = project_prototypes(
                model, x_train, train_data.y, train_data.ids, branches=cfg.branches, batch_size=cfg.eval_batch_size
            )
            old = {s["branch"]: None for s in sources}
            kept = [s for s in extra.get("prototype_sources", []) if s["branch"] not in old]
            extra["prototype_sources"] = kept + sources
            extra["prototype_segments"] = {**extra.get("prototype_segments", {}), **segments}
            logits = predict_logits(model, x_val, cfg.eval_batch_size, "branch")
            stage_metrics[stage.value] = {"val_auroc": macro_auroc(val_data.y, logits)}
        else:
            best_state: dict[str, Any] = {}

            def keep_best(kind: str, epoch: int, metrics: dict[str, float], _m=model, _b=best_state) -> None:
                if kind == "best":
                    _b["state"] = copy.deepcopy(_m.state_dict())
                    _b["epoch"], _b["metrics"] = epoch, dict(metrics)

            trainer = StageTrainer(
                model,
                stage,
                cfg,
                train_data.y,
                cfg.branches,
                device=device,
                epochs=cfg.epochs[stage.value],
                out_dir=out_dir / "stages" / stage.value,
                monitor="val_auroc",
                mode="max",
                amp=True,
                save_fn=keep_best,
            )
            stage_history = trainer.fit(loader, (x_val, val_data.y))
            model.load_state_dict(best_state["state"])
            offset = len(history)
            history += [{**h, "epoch": offset + h["epoch"]} for h in stage_history]
            stage_metrics[stage.value] = {"best_epoch": best_state["epoch"], **best_state["metrics"]}
        stages_done.append(stage.value)
        extra["stages_done"] = stages_done
        save_checkpoint(_checkpoint(model, cfg, _finalise(model, extra, val_data, cfg), stage_metrics, options.seed),
                        out_dir / LAST_NAME)  # fmt: skip
    for p in model.parameters():
        p.requires_grad_(True)
    extra = _finalise(model, extra, val_data, cfg)
    val_p = 1 / (1 + np.exp(-predict_logits(model, x_val, cfg.eval_batch_size, "fusion")))
    metrics = {
        "validation": summary_metrics(val_data.y, val_p, np.asarray(extra["thresholds"])),
        "stages": stage_metrics,
    }
    ckpt = _checkpoint(model, cfg, extra, metrics, options.seed)
    save_checkpoint(ckpt, out_dir / BEST_NAME)
    save_checkpoint(ckpt, out_dir / LAST_NAME)
    (out_dir / "metrics.json").write_text(json.dumps({**metrics, "history": history}, indent=2, default=str))
    if history:
        plot_curves(history, out_dir / "training_curve.png")
    _model_card(out_dir, cfg, metrics, ckpt.provenance, _synthetic(Path(options.data_dir)), stages_done)
    return out_dir


def _finalise(model: ProtoECGNet, extra: dict[str, Any], val: EcgArrays, cfg: EcgConfig) -> dict[str, Any]:
    """Thresholds (max F1 on validation) and the label partition into ``extra``."""
    logits = predict_logits(model, torch.from_numpy(val.x), cfg.eval_batch_size, "fusion")
    probs = 1 / (1 + np.exp(-logits))
    out = dict(extra)
    out["thresholds"] = [float(t) for t in best_thresholds(val.y, probs)]
    out["label_partition"] = {b: [PTBXL_LABELS[int(i)] for i in model.branch_index(b)] for b in BRANCH_NAMES}
    out["stage"] = out.get("stages_done", [None])[-1] if out.get("stages_done") else None
    return out


def _model_card(
    out_dir: Path, cfg: EcgConfig, metrics: dict, provenance: dict, synthetic: bool, stages: list[str]
) -> None:
    write_model_card(
        out_dir / "MODEL_CARD.md",
        title="ProtoECGNet (ecg)",
        task="ecg",
        model_name=MODEL_NAME,
        paper="Sethi et al., ProtoECGNet: case-based interpretable deep learning for multi-label ECG classification "
        "with contrastive learning, MLHC 2025 (arXiv 2504.08713)",
        summary="Three prototype branches (rhythm 1D ResNet-18 with global prototypes; morphology 2D ResNet-18 with "
        "time-localised prototypes; diffuse 2D ResNet-18 with global prototypes) and a fusion layer give 71 PTB-XL "
        "statement probabilities; each prediction is explained by the most similar prototypes, each a projected "
        "segment of a training ECG.",
        intended_use="Research on interpretable ECG classification and software testing. Not for clinical use.",
        data="PTB-XL layout: strat_fold 1-8 training, 9 validation (stage selection, thresholds), 10 test. "
        "12 leads, 100 Hz, 10 s, 0.5 Hz zero-phase high-pass.",
        data_card=DATA_CARD,
        metrics=metrics["validation"],
        method_notes=[
            f"stages run: {', '.join(stages)} [CODE]",
            f"prototypes per class {cfg.model_kwargs.get('prototypes_per_class')}, widths "
            f"{cfg.model_kwargs.get('widths')}, proto_dim {cfg.model_kwargs.get('proto_dim')} [CODE defaults 5/18/7, "
            "ResNet-18, 512]",
            f"loss weights clst {cfg.clst}, sep {cfg.sep}, div {cfg.div}, cnrst {cfg.cnrst}; L1 {cfg.l1_classifier} "
            f"(classifier, off-class only) and {cfg.l1_fusion} (fusion) [CODE]",
            "the 2D ResNet-18 is randomly initialised; no pretrained weights are downloaded [INF] (the paper's "
            "ImageNet init does not reach the replaced 12x7 first conv)",
            "all selected branches train together in each branch stage (independent parameters and losses) [INF]",
            "each stage keeps its best epoch by validation macro AUROC on fold 9; Adam with cosine annealing [INF]",
            "per-class decision thresholds chosen on validation by max F1 (paper: 0.5) [INF]",
            "records of other lengths: central 10 s if longer, zero-padded if 8-10 s, rejected below 8 s [INF]",
        ],
        limitations=[
            "Only PTB-XL-like 12-lead resting ECGs; rhythm strips, paediatric or paced records untested.",
            "Prototypes are training segments; explanations show similarity, not causation.",
        ],
        provenance=provenance,
        synthetic=synthetic,
    )
