"""``medinfer train breakhis`` on the shared runner: the binary model first, then the subtype model from its trunk.

What is the breakhis task's own: the BreaKHis tree and its patient-wise (or image-wise) split, the
cost-sensitive loss with w_c = N / (C·n_c), the class-balanced sampler option, the transfer with a frozen trunk
for the first epochs, balanced accuracy on validation, and the model card.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import CacheDataset, DataLoader
from torch.utils.data import WeightedRandomSampler

from models import create_model
from models.efficientnet import BINARY_LABELS, SUBTYPES, BreakHisNet, load_trunk_weights
from pipelines.breakhis.config import BreakhisConfig, BreakhisTrainOptions
from pipelines.breakhis.datasets import ImageRecord, class_counts, discover_images, split_images, split_patients
from pipelines.breakhis.transforms import eval_transforms, train_transforms
from pipelines.common import keys
from pipelines.common.checkpoint import BEST_NAME, load_checkpoint, read_state_dict
from pipelines.common.classification import activate, balanced_class_weights
from pipelines.common.metrics import accuracy, balanced_accuracy
from pipelines.common.trainer import CardText, Stage, TrainingRun, recalibrate_batchnorm

__all__ = ["BreakhisRun", "labels_of", "record_items"]

logger = logging.getLogger(__name__)

METHOD_NOTES = (
    "[PAPER] EfficientNet on BreakHis, binary (benign/malignant) then 8 subtypes; intensive augmentation, "
    "cost-sensitive learning, and the binary model's weights initialising the subtype model.",
    "[INF] medinfer's reading of what the paper leaves unstated: EfficientNet-B0 (MONAI's EfficientNetBN, "
    "variant configurable) with global average pooling, dropout and a linear head; class-weighted cross-entropy "
    "w_c = N / (C·n_c) over the training images; Adam with cosine annealing; magnifications pooled.",
    "[INF] Transfer: the subtype model copies the binary model's whole trunk, gets a new random head, and trains "
    "the head alone for the config's freeze_epochs before the trunk unfreezes.",
)


def labels_of(target: str) -> tuple[str, ...]:
    """The classes of a target (``binary`` or ``subtype``)."""
    return BINARY_LABELS if target == "binary" else SUBTYPES


def record_items(records: Sequence[ImageRecord], target: str) -> list[dict[str, Any]]:
    """Dataset items ``{image: path, label: class index}`` of a target."""
    return [
        {keys.IMAGE: str(r.path), keys.LABEL: r.binary_index if target == "binary" else r.subtype_index}
        for r in records
    ]


class BreakhisRun(TrainingRun[BreakhisConfig]):
    """A breakhis run of one target; with ``--transfer-from`` two stages (frozen trunk, then all)."""

    model: BreakHisNet

    @property
    def train_options(self) -> BreakhisTrainOptions:
        opts = self.task_options
        return opts if isinstance(opts, BreakhisTrainOptions) else BreakhisTrainOptions()

    @property
    def target(self) -> str:
        return self.train_options.target

    @property
    def model_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "variant": cfg.variant,
            "num_classes": len(labels_of(self.target)),
            "dropout": cfg.dropout,
            "bn_momentum": cfg.bn_momentum,
        }

    def heads(self) -> dict[str, list[str]]:
        # a subtype model also answers benign/malignant: the sums of its benign and malignant subtypes
        out = {"binary": list(BINARY_LABELS)}
        if self.target == "subtype":
            out["subtype"] = list(SUBTYPES)
        return out

    # -- data and model ----------------------------------------------------------------------------------------
    def load_data(self) -> None:
        cfg, seed = self.config, self.options.seed
        records = discover_images(self.data_dir, cfg.magnifications)
        split = split_patients if cfg.split == "patient" else split_images
        self.train_records, self.val_records, self.test_records = split(
            records, cfg.val_fraction, cfg.test_fraction, seed
        )
        if not self.train_records or not self.val_records:
            raise ValueError(
                f"{self.data_dir}: {len(records)} images of {len({r.patient for r in records})} patients are too few "
                f"for a {cfg.split}-wise split with validation"
            )
        if cfg.split == "image":
            logger.warning("image-wise split: images of one patient fall into several splits (optimistic figures)")
        n_classes = len(labels_of(self.target))
        self.counts = class_counts(self.train_records, self.target)
        self.class_weight = balanced_class_weights(self.counts) if cfg.cost_sensitive else None
        sizes = (len(self.train_records), len(self.val_records), len(self.test_records))
        logger.info("breakhis %s: %s train/val/test images; class counts %s", self.target, sizes, self.counts.tolist())
        train_tf = train_transforms(cfg)
        train_tf.set_random_state(seed=seed)
        train_items = record_items(self.train_records, self.target)
        self.train_ds = CacheDataset(train_items, train_tf, cache_rate=1.0, num_workers=1, progress=False)
        val_items = record_items(self.val_records, self.target)
        self.val_ds = CacheDataset(val_items, eval_transforms(cfg), cache_rate=1.0, num_workers=1, progress=False)
        generator = torch.Generator().manual_seed(seed)
        if cfg.balanced_sampler:
            per_class = 1.0 / np.maximum(self.counts, 1)
            weights = [float(per_class[item[keys.LABEL]]) for item in train_items]
            sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
            self.loader = DataLoader(
                self.train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers
            )
        else:
            self.loader = DataLoader(
                self.train_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, generator=generator
            )
        self.n_classes = n_classes
        self.best_value = -math.inf
        self.best: dict[str, Any] = {}

    def build_model(self) -> BreakHisNet:
        model: BreakHisNet = create_model(self.model_name, **self.model_kwargs)  # type: ignore[assignment]
        self.start: dict[str, Any] = {}
        opts = self.train_options
        if opts.transfer_from is not None:
            source = load_checkpoint(opts.transfer_from, task="breakhis")
            if source.model_kwargs.get("variant", "efficientnet-b0") != self.config.variant:
                raise ValueError(
                    f"{source.path}: its trunk is {source.model_kwargs.get('variant')}, this config's "
                    f"{self.config.variant}"
                )
            if "subtype" in source.heads and self.target == "binary":
                raise ValueError(f"{source.path}: transfer goes from a binary model to the subtype model")
            source_model = source.build_model("cpu")
            assert isinstance(source_model, BreakHisNet)
            model.trunk.load_state_dict(source_model.trunk.state_dict())
            self.start = {"transfer_from": source.path.name if source.path else "", "source_version": source.version}
        elif opts.init_weights is not None:
            path = opts.init_weights.expanduser()
            state = read_state_dict(path)
            try:
                report = load_trunk_weights(model, state)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
            self.start = {"init_weights": path.name, "tensors_loaded": len(report["loaded"])}
        return model

    def stages(self) -> list[Stage]:
        cfg = self.config
        if self.train_options.transfer_from is not None and cfg.freeze_epochs > 0:
            return [Stage("frozen_trunk", cfg.freeze_epochs), Stage("finetune", cfg.epochs - cfg.freeze_epochs)]
        return [Stage("train", cfg.epochs)]

    def make_loader(self, stage: Stage) -> Iterable[Any]:
        return self.loader

    # -- the loop's hooks --------------------------------------------------------------------------------------
    def run_stage(self, stage: Stage) -> None:
        self.model.set_trunk_trainable(stage.name != "frozen_trunk")
        super().run_stage(stage)

    def configure_optimizers(self, stage: Stage) -> tuple[torch.optim.Optimizer, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=stage.epochs)

    def train_step(self, batch: Any, stage: Stage) -> torch.Tensor:
        logits = self.model(batch[keys.IMAGE])
        weight = self.class_weight
        w = torch.as_tensor(weight, dtype=torch.float32, device=logits.device) if weight is not None else None
        return F.cross_entropy(logits.float(), batch[keys.LABEL].long(), weight=w)

    def predict(self, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
        """Labels (N,) and probabilities (N, C) of a cached dataset."""
        loader = DataLoader(dataset, batch_size=max(32, self.config.batch_size), shuffle=False)
        ys, ps = [], []
        for batch in loader:
            logits = self.model(batch[keys.IMAGE].to(self.device))
            ps.append(activate(logits.float(), "softmax").cpu().numpy())
            ys.append(np.asarray(batch[keys.LABEL]))
        return np.concatenate(ys), np.concatenate(ps)

    def validate(self, stage: Stage) -> dict[str, float]:
        batches = (batch[keys.IMAGE].to(self.device) for batch in self.loader)
        recalibrate_batchnorm(self.model, batches, self.config.precise_bn_batches)
        y, p = self.predict(self.val_ds)
        pred = p.argmax(1)
        return {
            "val_balanced_accuracy": balanced_accuracy(y, pred, self.n_classes),
            "val_accuracy": accuracy(y, pred),
        }

    def monitor(self, stage: Stage) -> tuple[str, str]:
        return "val_balanced_accuracy", "max"

    def on_improved(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        # best over the whole run, not per stage: the fine-tuning stage must beat the frozen one to replace it
        value = metrics["val_balanced_accuracy"]
        if not self.best or value > self.best_value:
            self.best_value = value
            self.best = {"stage": stage.name, "epoch": epoch, **metrics}
            self.save(BEST_NAME, self.best)

    # -- what is written ---------------------------------------------------------------------------------------
    def best_metrics(self) -> dict[str, Any]:
        return dict(self.best)

    def preprocessing(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "channels": ["R", "G", "B"],
            "image_size": [cfg.image_size, cfg.image_size],
            "resize": "area interpolation to a square (BreakHis is 700x460)",
            "stain_normalization": "Macenko (MONAI NormalizeHEStains)" if cfg.stain_normalization else None,
            "normalization": "ImageNet mean and std on [0, 1] RGB",
        }

    def checkpoint_extra(self) -> dict[str, Any]:
        cfg = self.config

        def patients(records: Sequence[ImageRecord]) -> list[str]:
            return sorted({r.patient for r in records})

        return {
            "target": self.target,
            "class_counts": self.counts.tolist(),
            "class_weights": self.class_weight.tolist() if self.class_weight is not None else None,
            "magnifications": list(cfg.magnifications),
            "split": {
                "protocol": cfg.split,
                "seed": self.options.seed,
                "train_patients": patients(self.train_records),
                "val_patients": patients(self.val_records),
                "test_patients": patients(self.test_records),
                "test_images": [r.path.name for r in self.test_records] if cfg.split == "image" else None,
            },
            **self.start,
        }

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "best": self.best_metrics()}

    def card(self) -> CardText:
        cfg = self.config
        start = (
            f"[PAPER] transfer: the trunk comes from the binary model `{self.start['transfer_from']}`"
            if "transfer_from" in self.start
            else f"the trunk starts from the local state dict `{self.start['init_weights']}` (ImageNet weights "
            "brought by the user) [CODE]"
            if "init_weights" in self.start
            else "Departure from the paper: the trunk starts from random weights, not ImageNet's; medinfer downloads "
            "nothing (pass `--init-weights FILE` with a local EfficientNet state dict)"
        )
        split = (
            "patient-wise split, stratified by subtype: no patient in two splits [INF]"
            if cfg.split == "patient"
            else "image-wise split as the paper's figures most likely were: images of one patient fall into "
            "several splits, so the figures are optimistic [INF]"
        )
        weights = (
            f"cost-sensitive loss, class weights {np.round(self.class_weight, 4).tolist()} from counts "
            f"{self.counts.tolist()} [INF]"
            if self.class_weight is not None
            else "plain cross-entropy (cost_sensitive off)"
        )
        return CardText(
            title=f"BreakHis EfficientNet ({self.target}, {cfg.preset} preset)",
            summary=f"Classifies H&E breast histopathology images ({', '.join(labels_of(self.target))}) with an "
            f"{cfg.variant} at {cfg.image_size}x{cfg.image_size}; a subtype model also reports benign/malignant as "
            "the sums of its subtype probabilities. Explanations are Grad-CAM maps on the last convolution.",
            intended_use="Research on histopathology classification methods; outputs must be reviewed by a qualified "
            "pathologist and never drive a clinical decision.",
            data=f"BreaKHis layout under `{self.data_dir}`, magnifications "
            f"{', '.join(f'{m}X' for m in cfg.magnifications)} pooled: {len(self.train_records)} training, "
            f"{len(self.val_records)} validation and "
            f"{len(self.test_records)} test images",
            metrics=self.best_metrics(),
            method_notes=[
                *METHOD_NOTES,
                start,
                split,
                weights,
                f"batch-norm statistics recomputed on up to {cfg.precise_bn_batches} training batches before each "
                "validation (precise BN), so the saved model's eval-mode statistics match its weights [INF]",
                f"augmentation `{cfg.augmentation}`; stain normalisation {'on' if cfg.stain_normalization else 'off'}; "
                f"{'class-balanced sampler' if cfg.balanced_sampler else 'uniform sampling'} [INF]",
            ],
            limitations=[
                "BreakHis comes from one laboratory and 82 patients; other scanners, stains and sites are untested.",
                "Image-level figures over-state patient-level performance; see the evaluation's patient-level figures.",
            ],
        )
