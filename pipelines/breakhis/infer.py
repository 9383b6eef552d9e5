"""``medinfer predict breakhis`` on the classification family: what is the task's own is reading an H&E image,
the subtype model's benign/malignant marginal, and the Grad-CAM explanation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.efficientnet import BINARY_LABELS, CAM_LAYER, SUBTYPES
from pipelines.breakhis.config import BreakhisConfig, BreakhisOptions
from pipelines.breakhis.transforms import NOTES, predict_transforms, rgb_from_array
from pipelines.common import keys
from pipelines.common.classification import ClassificationPredictor, Head
from pipelines.common.io import read_rgb_image
from pipelines.common.task import InputItem, ItemOutput, Prepared

__all__ = ["NATIVE_SIZE", "BreakhisPredictor"]

#: BreakHis images are 700 × 460 (width × height)
NATIVE_SIZE = (700, 460)
BENIGN_SUBTYPES = (0, 1, 2, 3)
MALIGNANT_SUBTYPES = (4, 5, 6, 7)


def benign_malignant_logits(subtype_logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, 2) whose softmax is the summed probability of the benign and the malignant subtypes."""
    p = torch.softmax(subtype_logits.float(), dim=1)
    pair = torch.stack([p[:, BENIGN_SUBTYPES].sum(1), p[:, MALIGNANT_SUBTYPES].sum(1)], dim=1)
    return torch.log(pair.clamp_min(1e-12))


class BreakhisPredictor(ClassificationPredictor[BreakhisOptions]):
    """The binary model answers benign/malignant; the subtype model answers its 8 subtypes and their sums.

    Args:
        checkpoint: a ``breakhis`` checkpoint.
        options: ``batch_size`` images per forward pass, ``amp`` (CUDA only), ``explain`` (Grad-CAM).
    """

    options_model = BreakhisOptions
    id_field = "image"
    csv_name = "predictions.csv"

    def __init__(self, checkpoint: Any, options: Any) -> None:
        self.cfg = BreakhisConfig.from_checkpoint(checkpoint.config)
        self.subtype_model = "subtype" in checkpoint.heads
        super().__init__(checkpoint, options)
        self.preprocess = predict_transforms(self.cfg)

    def heads_from_checkpoint(self) -> list[Head]:
        heads = [Head("binary", BINARY_LABELS, "softmax")]
        if self.subtype_model:
            heads.append(Head("subtype", SUBTYPES, "softmax"))
        return heads

    # -- the task's own steps ----------------------------------------------------------------------------------
    def read(self, item: InputItem, options: BreakhisOptions) -> tuple[np.ndarray, dict[str, Any]]:
        """An image file, or an image given in memory (``item.data``: see ``rgb_from_array``), as RGB uint8 and
        then preprocessed the one way (:meth:`from_rgb`)."""
        if item.data is not None:
            rgb, notes = rgb_from_array(item.data, item.name)
        else:
            rgb, notes = read_rgb_image(Path(next(iter(item.paths.values()))))
        return self.from_rgb(rgb, notes, item, options)

    def from_rgb(
        self, rgb: np.ndarray, notes: list[str], item: InputItem, options: BreakhisOptions
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The network's input (3, S, S) and the result's context from RGB uint8 (H, W, 3) and its reading notes."""
        height, width = rgb.shape[:2]
        warnings = list(notes)
        size = self.cfg.image_size
        if (width, height) != NATIVE_SIZE and options.resize_warning:
            warnings.append(f"{width}x{height} is not BreakHis's 700x460; resized to {size}x{size} all the same")
        data = self.preprocess({keys.IMAGE: rgb})
        warnings += data.get(NOTES, [])
        context: dict[str, Any] = {"input_size": [width, height], "warnings": warnings}
        if self.wants_explanation(item):
            context["_rgb"] = rgb  # private: the overlay is drawn on the original image
        return np.asarray(data[keys.IMAGE], dtype=np.float32), context

    def forward(self, x: torch.Tensor, explain: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        logits = self.model(x)
        out = (
            {"subtype": logits, "binary": benign_malignant_logits(logits)} if self.subtype_model else {"binary": logits}
        )
        extras: dict[str, Any] = {}
        if any(explain):
            from pipelines.common.explain import grad_cam

            extras["cam"] = grad_cam(self.model, x, CAM_LAYER, class_index=logits.argmax(1).tolist())
        return out, extras

    def explain(self, prepared: Prepared, raw: dict[str, Any], out_dir: Path, output: ItemOutput) -> dict[str, Any]:
        """Grad-CAM of the predicted class on the last convolution: a heatmap PNG and an overlay PNG."""
        from pipelines.common.plots import plot_cam

        head = self.heads[-1]
        probs = raw["probs"][head.name]
        label = head.labels[int(np.argmax(probs))]
        cam = np.asarray(raw["cam"], dtype=np.float32)
        rgb = prepared.context["_rgb"]
        name = prepared.item.name
        title = f"{label} ({float(np.max(probs)):.2f})"  # plot_cam puts "Grad-CAM" before it
        heat, overlay = plot_cam(
            rgb, cam, out_dir / f"{name}_gradcam.png", out_dir / f"{name}_gradcam_overlay.png", title=title
        )
        output.add("explanation", heat, out_dir)
        output.add("overlay", overlay, out_dir)
        row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
        height, width = rgb.shape[:2]
        return {
            "method": "Grad-CAM",
            "layer": CAM_LAYER,
            "head": head.name,
            "class": label,
            "peak_xy": [round((col + 0.5) * width / cam.shape[1], 1), round((row + 0.5) * height / cam.shape[0], 1)],
        }

    def warmup(self) -> None:
        size = self.cfg.image_size
        self.predict_arrays(np.zeros((1, 3, size, size), dtype=np.float32))
