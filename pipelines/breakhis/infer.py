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

__all__ = ["NATIVE_SIZE", "BreakhisPredictor", "cam_peak_xy", "cam_title"]

#: BreakHis images are 700 × 460 (width × height)
NATIVE_SIZE = (700, 460)
BENIGN_SUBTYPES = (0, 1, 2, 3)
MALIGNANT_SUBTYPES = (4, 5, 6, 7)


def benign_malignant_logits(subtype_logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, 2) whose softmax is the summed probability of the benign and the malignant subtypes."""
    p = torch.softmax(subtype_logits.float(), dim=1)
    pair = torch.stack([p[:, BENIGN_SUBTYPES].sum(1), p[:, MALIGNANT_SUBTYPES].sum(1)], dim=1)
    return torch.log(pair.clamp_min(1e-12))


def _top(head: Head, probs: np.ndarray) -> tuple[str, float]:
    """A softmax head's arg-max class and its probability, rounded as the result's ``probabilities`` are."""
    best = int(np.argmax(probs))
    return head.labels[best], round(float(probs[best]), 6)


def cam_title(head: str, label: str, probability: float, marginal: tuple[str, float] | None = None) -> str:
    """The Grad-CAM pictures' title: ``"malignant, p = 0.934 (binary head)"``; with a subtype model's binary
    marginal, a second line ``"binary marginal: malignant, p = 0.880"``. Probabilities to 3 decimals."""
    title = f"{label}, p = {probability:.3f} ({head} head)"
    if marginal is not None:
        title += f"\nbinary marginal: {marginal[0]}, p = {marginal[1]:.3f}"
    return title


def cam_peak_xy(cam: np.ndarray, width: int, height: int) -> list[float]:
    """The centre of the map's (first) maximum cell in the image's pixel coordinates ``[x, y]``, to 0.1 pixel.

    Args:
        cam: ``(h, w)`` map over the whole image.
        width: the image's width in pixels.
        height: the image's height in pixels.
    """
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return [round((col + 0.5) * width / cam.shape[1], 1), round((row + 0.5) * height / cam.shape[0], 1)]


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
        """Grad-CAM of the predicted class on the last convolution: a heatmap PNG and an overlay PNG, both titled
        with :func:`cam_title` (the explained head's class and probability; a subtype model's binary marginal too)
        and with a colour bar; the JSON says the same (``class``, ``probability``, ``title``, ``colorbar``)."""
        from pipelines.common.plots import CAM_COLORBAR_LABEL, plot_cam

        head = self.heads[-1]  # the network's own output, whose arg-max grad_cam explains
        label, probability = _top(head, raw["probs"][head.name])
        marginal = _top(self.heads[0], raw["probs"][self.heads[0].name]) if self.subtype_model else None
        title = cam_title(head.name, label, probability, marginal)
        cam = np.asarray(raw["cam"], dtype=np.float32)
        rgb = prepared.context["_rgb"]
        name = prepared.item.name
        heat, overlay = plot_cam(
            rgb, cam, out_dir / f"{name}_gradcam.png", out_dir / f"{name}_gradcam_overlay.png", title=title
        )
        output.add("explanation", heat, out_dir)
        output.add("overlay", overlay, out_dir)
        height, width = rgb.shape[:2]
        out: dict[str, Any] = {
            "method": "Grad-CAM",
            "layer": CAM_LAYER,
            "head": head.name,
            "class": label,
            "probability": probability,
        }
        if marginal is not None:
            out["binary_marginal"] = {"class": marginal[0], "probability": marginal[1]}
        out |= {"peak_xy": cam_peak_xy(cam, width, height), "title": title, "colorbar": CAM_COLORBAR_LABEL}
        return out

    def warmup(self) -> None:
        size = self.cfg.image_size
        self.predict_arrays(np.zeros((1, 3, size, size), dtype=np.float32))
