"""Training for ``prostate`` on the shared runner: stage 1 supervised, stage 2 co-training consistency.

What is prostate's own: labelled and unlabelled cases, the dual-path network, the supervised loss of both paths
with the signed-distance auxiliary task, the ramped consistency term on labelled, augmented and unlabelled
views, per-zone Dice and the paths' disagreement on validation, and the model card.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader
from monai.metrics import compute_dice
from torch.nn import functional as F

from models import create_model
from models.dual_path_unet import ZONES, DualPathUNet
from pipelines.common import keys
from pipelines.common.device import autocast
from pipelines.common.trainer import BEST_NAME, CardText, Stage, TrainingRun, split_indices, take, to_device
from pipelines.prostate.config import ProstateConfig, ProstateTrainOptions
from pipelines.prostate.datasets import discover_cases
from pipelines.prostate.losses import DualPathLoss, consistency, fuse, rampup, split_logits
from pipelines.prostate.transforms import SDM, eval_transforms, train_transforms, unlabelled_transforms

logger = logging.getLogger(__name__)

SUPERVISED = "supervised"
CO_TRAINING = "co_training"

METHOD_NOTES = (
    "[PAPER] Two paths on the same input, each capturing the representations of connected zones; stage 1 "
    "supervised, stage 2 fine-tunes both paths with an unsupervised loss that penalises the difference between "
    "the paths' predictions of the same class; multi-task learning.",
    "[INF] Paths: two full 3D U-Nets (not a shared encoder). Path A predicts {background, PZ, TZ}, path B "
    "{background, TZ, DPU, AFS}; zones of the other path count as a path's background. The paper does not say "
    "which zones go to which branch.",
    "[INF] Multi-task: each path also regresses the signed distance maps of its zones (clipped at ± sdm_clip_mm "
    "and scaled to [−1, 1], tanh head), weighted by λ_aux in an L1 loss; the paper does not name its auxiliary task.",
    "[INF] Stage 1 loss per path: soft Dice over the zones (batch Dice) + cross-entropy.",
    "[INF] Stage 2 adds λ_cons · ramp(t) · MSE between the paths' probabilities of TZ (everywhere) and of "
    "background (weighted by w = (1 − p_A(PZ))(1 − p_B(DPU) − p_B(AFS)), where background means 'outside the "
    "gland' for both paths), ramp exp(−5(1−t)²), on the labelled batch, an augmented view of it (intensity jitter "
    "and noise) and unlabelled volumes when there are any.",
    "[INF] Fusion: bg and TZ averaged over the paths, PZ from path A, DPU and AFS from path B, normalised, arg-max; "
    "optionally the largest connected component per zone; then back to the input grid.",
    "[CODE-3P] UATS prostate conventions: 0.5×0.5×3 mm, centred ROI 32×168×168 (slices × H × W), 1st–99th "
    "percentile window to [0, 1], 16 base filters, batch norm, pooling (1,2,2), (1,2,2), then (2,2,2), Adam.",
)


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        yield from loader


class ProstateRun(TrainingRun[ProstateConfig]):
    """A prostate training run: ``supervised`` then ``co_training``; best checkpoint by mean zone Dice overall."""

    def load_data(self) -> None:
        cfg, seed = self.config, self.options.seed
        labelled, unlabelled = discover_cases(self.data_dir)
        if isinstance(self.task_options, ProstateTrainOptions) and self.task_options.unlabelled:
            unlabelled += discover_cases(Path(self.task_options.unlabelled))[1]
        if len(labelled) < 2:
            raise ValueError(f"{self.data_dir}: need at least 2 labelled cases (t2 + zones) to train and validate")
        train_idx, val_idx = split_indices(len(labelled), cfg.val_fraction, seed)
        self.train_cases, self.val_cases = take(labelled, train_idx), take(labelled, val_idx)
        self.unlabelled_cases = unlabelled
        logger.info(
            "prostate: %d training, %d validation and %d unlabelled cases",
            len(self.train_cases),
            len(self.val_cases),
            len(unlabelled),
        )
        train_tf = train_transforms(cfg)
        train_tf.set_random_state(seed=seed)
        self.train_ds = CacheDataset(self.train_cases, train_tf, cache_rate=1.0, num_workers=1, progress=False)
        self.val_ds = CacheDataset(self.val_cases, eval_transforms(cfg), cache_rate=1.0, num_workers=1, progress=False)
        generator = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(self.train_ds, batch_size=cfg.batch_size, shuffle=True, generator=generator)
        self.unlabelled_loader: DataLoader | None = None
        if unlabelled:
            unl_tf = unlabelled_transforms(cfg)
            unl_tf.set_random_state(seed=seed + 1)
            unl_ds = CacheDataset(unlabelled, unl_tf, cache_rate=1.0, num_workers=1, progress=False)
            self.unlabelled_loader = DataLoader(
                unl_ds, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed + 1)
            )
        self.augment_generator = torch.Generator().manual_seed(seed + 2)

    def build_model(self) -> torch.nn.Module:
        self.loss_fn = DualPathLoss(self.config.aux_weight)
        self.best_overall = -math.inf
        self.best_stage = ""
        self.stage_epoch = 0
        self.stage_end_disagreement: dict[str, float | None] = {}
        return create_model(self.config.model_name, **self.config.model_kwargs)

    def stages(self) -> list[Stage]:
        out = [Stage(SUPERVISED, self.config.epochs)]
        if self.config.consistency_epochs > 0:
            out.append(Stage(CO_TRAINING, self.config.consistency_epochs))
        return out

    def make_loader(self, stage: Stage) -> Iterable[Any]:
        if stage.name == CO_TRAINING and self.unlabelled_loader is not None:
            self.unlabelled_iter: Iterator[Any] | None = _cycle(self.unlabelled_loader)
        else:
            self.unlabelled_iter = None
        return self.loader

    def configure_optimizers(self, stage: Stage) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.config
        self.stage_epoch = 0
        lr = cfg.lr if stage.name == SUPERVISED else cfg.finetune_lr
        opt = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)

    def consistency_weight(self) -> float:
        """λ_cons at the current epoch of stage 2."""
        return self.config.consistency_weight * rampup(self.stage_epoch, self.config.consistency_rampup)

    def augmented(self, image: torch.Tensor) -> torch.Tensor:
        """Stage 2's augmented view: per-case intensity scale and shift plus Gaussian noise."""
        cfg, g = self.config, self.augment_generator
        n = image.shape[0]
        scale = 1 + (torch.rand((n, 1, 1, 1, 1), generator=g) * 2 - 1) * cfg.intensity_scale
        shift = (torch.rand((n, 1, 1, 1, 1), generator=g) * 2 - 1) * cfg.intensity_shift
        noise = torch.randn(image.shape, generator=g) * cfg.augment_noise
        return image * scale.to(image.device) + shift.to(image.device) + noise.to(image.device)

    def train_step(self, batch: Any, stage: Stage) -> torch.Tensor:
        model: DualPathUNet = self.model  # type: ignore[assignment]
        image = batch[keys.IMAGE]
        out = model.forward_with_aux(image)
        loss = self.loss_fn(out, batch[keys.LABEL], batch[SDM])
        if stage.name != CO_TRAINING:
            return loss
        terms = [consistency(out.logits_a.float(), out.logits_b.float())]
        views = [self.augmented(image)]
        if self.unlabelled_iter is not None:
            views.append(to_device(next(self.unlabelled_iter), self.device)[keys.IMAGE])
        for view in views:
            logits_a, logits_b = split_logits(model(view).float())
            terms.append(consistency(logits_a, logits_b))
        return loss + self.consistency_weight() * torch.stack(terms).mean()

    def validate(self, stage: Stage) -> dict[str, float]:
        scores, gaps = [], []
        for i in range(len(self.val_ds)):
            item = self.val_ds[i]
            image = torch.as_tensor(item[keys.IMAGE])[None].to(self.device)
            with autocast(self.device, self.amp):
                logits = self.model(image)
            logits_a, logits_b = split_logits(logits.float())
            gaps.append(float(consistency(logits_a, logits_b)))
            fused = fuse(torch.softmax(logits_a, 1), torch.softmax(logits_b, 1)).argmax(1).cpu()
            pred = F.one_hot(fused, len(ZONES) + 1).movedim(-1, 1)[:, 1:]
            ref = F.one_hot(torch.as_tensor(item[keys.LABEL]).long(), len(ZONES) + 1).movedim(-1, 1)[:, 1:]
            scores.append(compute_dice(pred.float(), ref.float(), include_background=True, ignore_empty=False)[0])
        mean = torch.stack(scores).mean(0)
        out = {f"dice_{z}": float(mean[i]) for i, z in enumerate(ZONES)}
        out["dice_mean"] = float(mean.mean())
        out["disagreement"] = float(sum(gaps) / len(gaps))
        return out

    def monitor(self, stage: Stage) -> tuple[str, str]:
        return "dice_mean", "max"

    def on_stage_end(self, stage: Stage) -> None:
        self.stage_end_disagreement[stage.name] = self.history[-1].get("disagreement") if self.history else None

    def on_improved(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        """Nothing here: ``on_epoch_end`` keeps one best checkpoint over both stages."""

    def on_epoch_end(self, stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
        self.stage_epoch = epoch
        # stage 2 replaces stage 1's best only when it validates better
        value = metrics.get("dice_mean", -math.inf)
        if value > self.best_overall:
            self.best_overall, self.best_stage = value, stage.name
            self.save(BEST_NAME, {"epoch": epoch, "stage": stage.name, **metrics})
        super().on_epoch_end(stage, epoch, metrics)

    def best_metrics(self) -> dict[str, Any]:
        best = max(self.stage_metrics.values(), key=lambda m: m.get("dice_mean", -math.inf), default={})
        return {**best, "stage": self.best_stage}

    def summary(self) -> dict[str, Any]:
        return {
            "best_stage": self.best_stage,
            # the paths' disagreement on validation at the end of each stage (stage 2 should lower it)
            "disagreement_at_stage_end": self.stage_end_disagreement,
            "unlabelled_cases": len(self.unlabelled_cases),
        }

    def preprocessing(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "channels": ["t2"],
            "orientation": "RAS",
            "target_spacing_mm": list(cfg.target_spacing),
            "roi_size": list(cfg.roi_size),
            "crop": "centred ROI, zero-padded where the field of view is smaller",
            "normalization": f"percentiles {cfg.lower_percentile}–{cfg.upper_percentile} of the ROI to [0, 1], clipped",
        }

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"train_cases": len(self.train_cases), "unlabelled_cases": len(self.unlabelled_cases)}

    def card(self) -> CardText:
        cfg = self.config
        best = self.best_metrics()
        return CardText(
            title=f"prostate dual-path multi-task U-Net ({cfg.preset} preset)",
            summary=(
                "Segments the PI-RADS v2 prostate zones on axial T2-weighted MRI: peripheral zone (PZ), transition "
                "zone (TZ), distal prostatic urethra (DPU) and anterior fibromuscular stroma (AFS). Outputs a zone "
                "map 0 bg, 1 PZ, 2 TZ, 3 DPU, 4 AFS in the input's grid (and a DICOM SEG for DICOM input) with "
                "zone volumes in mL."
            ),
            intended_use=(
                "Research on prostate zone segmentation by engineers and researchers; outputs must be reviewed by a "
                "qualified person and never drive a clinical decision."
            ),
            data=(
                f"{len(self.train_cases)} training and {len(self.val_cases)} validation labelled cases and "
                f"{len(self.unlabelled_cases)} unlabelled cases from `{self.data_dir}`"
            ),
            metrics={k: v for k, v in best.items() if k.startswith(("dice", "disagreement")) or k == "stage"},
            method_notes=[
                *METHOD_NOTES,
                f"Loss weights: λ_aux {cfg.aux_weight}, λ_cons {cfg.consistency_weight} ramped over "
                f"{cfg.consistency_rampup} epochs; {cfg.epochs} + {cfg.consistency_epochs} epochs; Adam lr {cfg.lr} "
                f"then {cfg.finetune_lr} [INF: the paper states none]. The best epoch by mean zone Dice on the "
                "validation split over both stages is kept.",
            ],
            limitations=[
                "Trained and validated only on the data named above; other scanners, field strengths, endorectal "
                "coils and post-treatment glands are unknown territory.",
                "Expects an axial T2-weighted series whose field of view is roughly centred on the prostate (the "
                "network sees a centred ROI only; anything outside it is labelled background).",
            ],
        )
