"""Training for ``brats`` on the shared runner: the Isensee-2017 recipe with the multi-level (or baseline) head.

What is brats's own: the cases and their split, the network, the deep-supervision loss, per-region Dice
on validation, and the model card's method notes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import SlidingWindowInferer
from monai.metrics import compute_dice
from torch.utils.data import RandomSampler

from models import create_model
from models.nested_unet import BRATS_REGIONS as REGIONS
from pipelines.brats.config import BratsConfig, BratsTrainOptions
from pipelines.brats.datasets import discover_cases
from pipelines.brats.losses import DeepSupervisionLoss, Head, levels_to_regions, mask_outside_brain
from pipelines.brats.transforms import MODALITIES, eval_transforms, train_transforms
from pipelines.common import keys
from pipelines.common.device import autocast
from pipelines.common.trainer import BEST_NAME, CardText, Stage, TrainingRun, split_indices, take

logger = logging.getLogger(__name__)

METHOD_NOTES = (
    "[INF] Multi-level activation, medinfer's reading of Hu et al. 2018 / Piraud et al. 2018 (the method "
    "sections were not retrievable): one logit z per voxel, y = (1/3) Σ_k σ(β(z − t_k)), t = (−2, 0, 2); "
    "WT = y > 1/6, TC = y > 1/2, ET = y > 5/6, so ET ⊆ TC ⊆ WT by construction.",
    "[INF] Loss: Σ_k [soft Dice + BCE] between σ(β(z − t_k)) and the cumulative masks WT, TC, ET, applied at "
    "each deep-supervision level with weights 1, 1/2, 1/4 (normalised).",
    "[CODE] Network: Isensee-2017 residual 3D U-Net (context modules with spatial dropout 0.3, instance norm "
    "and LeakyReLU, upsampling and localisation modules, deep supervision summed over the 3 finest levels).",
    "[CODE-3P] Recipe: Adam 5e-4, weight decay 5e-5, lr × 0.985 per epoch, batch 2, 128³ patches.",
    "[INF] Preprocessing: RAS orientation, resampling to the target spacing, foreground crop, per-channel "
    "z-score inside the nonzero brain mask; augmentation limited to random crops, flips and intensity "
    "shift/scale (no rotations, scaling or elastic deformation).",
)


def preprocessing_record(cfg: BratsConfig) -> dict[str, Any]:
    """What a brats checkpoint records about its preprocessing."""
    return {
        "channels": list(MODALITIES),
        "orientation": "RAS",
        "target_spacing_mm": list(cfg.target_spacing) if cfg.target_spacing else None,
        "crop": "foreground (nonzero in any channel)",
        "normalization": "per-channel z-score inside the nonzero brain mask",
        "roi_size": list(cfg.roi_size),
    }


class BratsRun(TrainingRun[BratsConfig]):
    """A brats training run: one stage, best checkpoint by mean validation Dice (train loss with ``--all-cases``)."""

    @property
    def all_cases(self) -> bool:
        return isinstance(self.task_options, BratsTrainOptions) and self.task_options.all_cases

    def load_data(self) -> None:
        cfg, seed = self.config, self.options.seed
        cases = discover_cases(self.data_dir, require_label=True)
        if self.all_cases:
            self.train_cases, self.val_cases = cases, []
        else:
            train_idx, val_idx = split_indices(len(cases), cfg.val_fraction, seed)
            self.train_cases, self.val_cases = take(cases, train_idx), take(cases, val_idx)
            if not self.train_cases:
                raise ValueError(f"{self.data_dir}: need at least 2 labelled cases to train and validate")
        logger.info("brats: %d training and %d validation cases", len(self.train_cases), len(self.val_cases))
        train_tf = train_transforms(cfg)
        train_tf.set_random_state(seed=seed)
        self.train_ds = CacheDataset(
            self.train_cases, train_tf, cache_rate=cfg.cache_rate, num_workers=1, progress=False
        )
        self.val_ds = (
            CacheDataset(self.val_cases, eval_transforms(cfg), cache_rate=1.0, num_workers=1, progress=False)
            if self.val_cases
            else None
        )
        generator = torch.Generator().manual_seed(seed)
        if cfg.iterations_per_epoch is not None:
            n = cfg.iterations_per_epoch * cfg.batch_size
            sampler = RandomSampler(self.train_ds, replacement=True, num_samples=n, generator=generator)
            self.loader = DataLoader(
                self.train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers
            )
        else:
            self.loader = DataLoader(
                self.train_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, generator=generator
            )

    def build_model(self) -> torch.nn.Module:
        cfg = self.config
        self.head = Head(cfg.head, cfg.beta, cfg.thresholds)
        self.loss_fn = DeepSupervisionLoss(self.head, cfg.ds_weights)
        self.inferer = SlidingWindowInferer(
            cfg.roi_size, sw_batch_size=cfg.sw_batch_size, overlap=0.25, mode="gaussian"
        )
        return create_model(cfg.model_name, **cfg.model_kwargs)

    def make_loader(self, stage: Stage) -> Iterable[Any]:
        return self.loader

    def iterations_per_epoch(self, stage: Stage) -> int | None:
        return self.config.iterations_per_epoch

    def configure_optimizers(self, stage: Stage) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.config
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)

    def monitor(self, stage: Stage) -> tuple[str, str]:
        return ("dice_mean", "max") if self.val_ds is not None else ("train_loss", "min")

    def on_improved(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        if not self.all_cases:  # a final retrain keeps its last epoch (no held-out cases to choose by)
            super().on_improved(stage, epoch, metrics)

    def on_stage_end(self, stage: Stage) -> None:
        if self.all_cases:
            self.save(BEST_NAME, {"epoch": stage.epochs, **self.history[-1]})

    def train_step(self, batch: Any, stage: Stage) -> torch.Tensor:
        out = self.model.forward_with_aux(batch[keys.IMAGE])  # type: ignore[operator]
        return self.loss_fn(out.logits.float(), [a.float() for a in out.aux], batch[keys.LABEL])

    def validate(self, stage: Stage) -> dict[str, float]:
        if self.val_ds is None:
            return {}
        scores = []
        for i in range(len(self.val_ds)):
            item = self.val_ds[i]
            image = torch.as_tensor(item[keys.IMAGE])[None].to(self.device)
            with autocast(self.device, self.amp):
                logits = self.inferer(image, self.model)
            assert isinstance(logits, torch.Tensor)  # the network returns one tensor outside training
            levels = mask_outside_brain(self.head.decode(self.head.maps(logits.float())), image)
            pred = levels_to_regions(levels).cpu()
            ref = torch.as_tensor(item[keys.LABEL])[None].float()
            scores.append(compute_dice(pred, ref, include_background=True, ignore_empty=False)[0])
        mean = torch.stack(scores).mean(0)
        out = {f"dice_{r}": float(mean[i]) for i, r in enumerate(REGIONS)}
        out["dice_mean"] = float(mean.mean())
        return out

    def preprocessing(self) -> dict[str, Any]:
        return preprocessing_record(self.config)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"train_cases": len(self.train_cases)}

    def card(self) -> CardText:
        cfg = self.config
        best = self.best_metrics()
        if self.all_cases:
            retrain = (
                f"[PAPER] Final retrain on all {len(self.train_cases)} labelled cases with the fixed recipe "
                "(`--all-cases`); the last epoch is kept."
            )
        else:
            retrain = (
                "Departure from the paper: no final retrain on all training cases; the best epoch by validation "
                "Dice on the held-out split is kept (pass `--all-cases` for the paper's final retrain)."
            )
        return CardText(
            title=f"brats {cfg.head} nested-class residual U-Net ({cfg.preset} preset)",
            summary=(
                "Segments glioma sub-regions on co-registered T1, T1ce, T2 and FLAIR MRI as nested regions: "
                "whole tumour ⊃ tumour core ⊃ enhancing tumour. Outputs a label map in the input's grid and "
                "region volumes in mL."
            ),
            intended_use=(
                "Research on brain-tumour segmentation methods by engineers and researchers; outputs must be "
                "reviewed by a qualified person and never drive a clinical decision."
            ),
            data=f"{len(self.train_cases)} training and {len(self.val_cases)} validation cases from `{self.data_dir}`",
            metrics={k: v for k, v in best.items() if k.startswith("dice") or k in ("epoch", "train_loss")},
            method_notes=[*METHOD_NOTES, retrain],
            limitations=[
                "Trained and validated only on the data named above; performance on other scanners, protocols, "
                "paediatric or post-operative cases is unknown.",
                "Expects skull-stripped, co-registered inputs (as BraTS distributes them).",
            ],
        )
