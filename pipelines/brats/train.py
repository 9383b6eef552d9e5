"""Training for ``brats``: the Isensee-2017 recipe with the multi-level (or baseline) head."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import SlidingWindowInferer
from monai.metrics import compute_dice
from torch.utils.data import RandomSampler

from models import get_model_spec
from models.nested_unet import NestedUNet
from pipelines.brats.config import BratsConfig, make_config
from pipelines.brats.datasets import discover_cases, split_cases
from pipelines.brats.losses import REGIONS, DeepSupervisionLoss, Head, levels_to_regions, mask_outside_brain
from pipelines.brats.transforms import MODALITIES, eval_transforms, train_transforms
from pipelines.common import keys
from pipelines.common.checkpoint import BEST_NAME, LAST_NAME, Checkpoint, make_provenance, save_checkpoint
from pipelines.common.modelcard import write_model_card
from pipelines.common.seed import seed_everything
from pipelines.common.task import TrainOptions, resolve_device
from pipelines.common.trainer import Trainer

logger = logging.getLogger(__name__)
SYNTHETIC_MARKER = "medinfer_synthetic.json"

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


class BratsTrainer(Trainer):
    """Trainer hooks for brats: Adam + exponential decay, deep-supervision loss, per-region Dice."""

    def __init__(self, model: NestedUNet, cfg: BratsConfig, **kwargs: Any) -> None:
        self.cfg = cfg
        self.head = Head(cfg.head, cfg.beta, cfg.thresholds)
        self.loss_fn = DeepSupervisionLoss(self.head, cfg.ds_weights)
        self.inferer = SlidingWindowInferer(
            cfg.roi_size, sw_batch_size=cfg.sw_batch_size, overlap=0.25, mode="gaussian"
        )
        super().__init__(model, **kwargs)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.cfg.lr_decay)

    def train_step(self, batch: Any) -> torch.Tensor:
        out = self.model.forward_with_aux(batch[keys.IMAGE])
        return self.loss_fn(out.logits.float(), [a.float() for a in out.aux], batch[keys.LABEL])

    def validate(self, val_data: Any) -> dict[str, float]:
        scores = []
        for item in val_data:
            image = torch.as_tensor(item[keys.IMAGE])[None].to(self.device)
            with self.autocast():
                logits = self.inferer(image, self.model)
            levels = mask_outside_brain(self.head.decode(self.head.maps(logits.float())), image)
            pred = levels_to_regions(levels).cpu()
            ref = torch.as_tensor(item[keys.LABEL])[None].float()
            scores.append(compute_dice(pred, ref, include_background=True, ignore_empty=False)[0])
        mean = torch.stack(scores).mean(0)
        out = {f"dice_{r}": float(mean[i]) for i, r in enumerate(REGIONS)}
        out["dice_mean"] = float(mean.mean())
        return out


def make_checkpoint(
    cfg: BratsConfig,
    model: NestedUNet,
    provenance: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """A brats checkpoint of ``model`` trained (or not) with ``cfg``."""
    preprocessing = {
        "channels": list(MODALITIES),
        "orientation": "RAS",
        "target_spacing_mm": list(cfg.target_spacing) if cfg.target_spacing else None,
        "crop": "foreground (nonzero in any channel)",
        "normalization": "per-channel z-score inside the nonzero brain mask",
        "roi_size": list(cfg.roi_size),
    }
    return Checkpoint(
        task="brats",
        model_name=cfg.model_name,
        model_kwargs=cfg.model_kwargs,
        state_dict=model.state_dict(),
        labels=list(REGIONS),
        config=cfg.to_dict(),
        preprocessing=preprocessing,
        metrics=metrics or {},
        provenance=provenance,
        extra=extra or {},
    )


def untrained_checkpoint(cfg: BratsConfig, seed: int = 0) -> Checkpoint:
    """A randomly initialised checkpoint, for speed benchmarks and geometry tests (never for predictions)."""
    torch.manual_seed(seed)
    model = NestedUNet(**cfg.model_kwargs)
    return make_checkpoint(cfg, model, make_provenance("untrained", "synthetic.md", seed), extra={"untrained": True})


def is_synthetic(data_dir: Path) -> bool:
    """Whether a dataset was written by ``medinfer synth``."""
    return (Path(data_dir) / SYNTHETIC_MARKER).is_file()


def train(options: TrainOptions) -> Path:
    """Train on a BraTS-layout dataset; writes best/last checkpoints, metrics.json, the curve and the card."""
    cfg = make_config(options.preset, options.config_path, options.epochs)
    device = resolve_device(options.device)
    seed_everything(options.seed)
    cases = discover_cases(options.data_dir, require_label=True)
    train_cases, val_cases = split_cases(cases, cfg.val_fraction, options.seed)
    if not train_cases:
        raise ValueError(f"{options.data_dir}: need at least 2 labelled cases to train and validate")
    logger.info("brats: %d training and %d validation cases", len(train_cases), len(val_cases))

    train_tf = train_transforms(cfg)
    train_tf.set_random_state(seed=options.seed)
    train_ds = CacheDataset(train_cases, train_tf, cache_rate=cfg.cache_rate, num_workers=1, progress=False)
    val_ds = CacheDataset(val_cases, eval_transforms(cfg), cache_rate=1.0, num_workers=1, progress=False)
    generator = torch.Generator().manual_seed(options.seed)
    if cfg.iterations_per_epoch is not None:
        sampler = RandomSampler(
            train_ds, replacement=True, num_samples=cfg.iterations_per_epoch * cfg.batch_size, generator=generator
        )
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)
    else:
        loader = DataLoader(
            train_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, generator=generator
        )

    model = NestedUNet(**cfg.model_kwargs)
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = get_model_spec(cfg.model_name)
    provenance = make_provenance(str(Path(options.data_dir).name), spec.data_card, options.seed)

    def save(kind: str, epoch: int, metrics: dict[str, float]) -> None:
        extra = {"synthetic": is_synthetic(options.data_dir), "train_cases": len(train_cases)}
        ckpt = make_checkpoint(cfg, model, provenance, metrics={"epoch": epoch, **metrics}, extra=extra)
        save_checkpoint(ckpt, out_dir / (BEST_NAME if kind == "best" else LAST_NAME))

    trainer = BratsTrainer(
        model,
        cfg,
        device=device,
        epochs=cfg.epochs,
        out_dir=out_dir,
        monitor="dice_mean" if val_cases else "train_loss",
        mode="max" if val_cases else "min",
        save_fn=save,
        iterations_per_epoch=cfg.iterations_per_epoch,
    )
    trainer.fit(loader, val_ds if val_cases else None)
    best = trainer.history[trainer.best_epoch - 1]
    synthetic = is_synthetic(options.data_dir)
    write_model_card(
        out_dir / "MODEL_CARD.md",
        title=f"brats {cfg.head} nested-class residual U-Net ({cfg.preset} preset)",
        task="brats",
        model_name=cfg.model_name,
        paper=spec.paper,
        summary=(
            "Segments glioma sub-regions on co-registered T1, T1ce, T2 and FLAIR MRI as nested regions: whole "
            "tumour ⊃ tumour core ⊃ enhancing tumour. Outputs a label map in the input's grid and region "
            "volumes in mL."
        ),
        intended_use=(
            "Research on brain-tumour segmentation methods by engineers and researchers; outputs must be "
            "reviewed by a qualified person and never drive a clinical decision."
        ),
        data=f"{len(train_cases)} training and {len(val_cases)} validation cases from `{options.data_dir}`"
        + (" (synthetic phantoms)." if synthetic else "."),
        data_card="synthetic.md" if synthetic else spec.data_card,
        metrics={k: v for k, v in best.items() if k.startswith("dice") or k == "epoch"},
        method_notes=METHOD_NOTES,
        limitations=(
            "Trained and validated only on the data named above; performance on other scanners, protocols, "
            "paediatric or post-operative cases is unknown.",
            "Expects skull-stripped, co-registered inputs (as BraTS distributes them).",
        ),
        provenance=provenance,
        synthetic=synthetic,
    )
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")
    return out_dir
