"""The ``breakhis`` task: cost-sensitive EfficientNet on BreakHis (Behzadpour et al. 2024), on the classification
family."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.efficientnet import BINARY_LABELS, SUBTYPES
from pipelines.breakhis.config import BreakhisConfig, BreakhisOptions, BreakhisTrainOptions
from pipelines.breakhis.datasets import ImageRecord, discover_images
from pipelines.breakhis.infer import BreakhisPredictor
from pipelines.breakhis.train import BreakhisRun
from pipelines.common.checkpoint import Checkpoint
from pipelines.common.errors import InputError
from pipelines.common.task import (
    Collected,
    InputContract,
    InputItem,
    OutputHead,
    PredictOptions,
    Task,
    TensorSpec,
    expand_paths,
    register_task,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class BreakhisTask(Task):
    """Benign/malignant and 8 subtypes from an H&E breast histopathology image."""

    name = "breakhis"
    title = "Breast histopathology: benign/malignant and 8 subtypes, cost-sensitive EfficientNet (binary→subtype)"
    data_card = "breakhis.md"
    default_model = "breakhis_efficientnet"
    options_model = BreakhisOptions
    train_options_model = BreakhisTrainOptions
    config_class = BreakhisConfig
    run_class = BreakhisRun

    @property
    def contract(self) -> InputContract:
        return InputContract(
            description="one H&E breast histopathology image (BreakHis: 700x460 RGB at 40X-400X)",
            kind="image",
            channels=("R", "G", "B"),
            formats=("PNG", "JPEG", "TIFF", "BMP"),
            heads=(
                OutputHead("binary", BINARY_LABELS, "softmax"),
                OutputHead("subtype", SUBTYPES, "softmax"),
            ),
            notes="Files or folders of images. Other sizes are resized (with a warning); grayscale, palette, RGBA "
            "and 16-bit images are converted (said in the result), corrupt, tiny (< 16 px) or huge (> 100 MP) ones "
            "refused. A binary model answers benign/malignant; a subtype model (trained with --target subtype) "
            "also the 8 subtypes A, F, PT, TA (benign) and DC, LC, MC, PC (malignant). As a tensor (Open Inference "
            "Protocol): (height, width, 3) RGB, UINT8 (or FP32 in 0-255, rounded to 8 bits), preprocessed as the "
            "same image read from a file.",
            tensor=TensorSpec(
                name="image",
                datatypes=("UINT8", "FP32"),
                shape=(-1, -1, 3),
                parameters={"layout": "height x width x channels", "channels": "R,G,B", "range": "0-255"},
            ),
        )

    # -- data --------------------------------------------------------------------------------------------------
    def generate(self, out_dir: Path, n: int, seed: int, dicom: bool, variant: str | None) -> tuple[Path, dict]:
        from pipelines.breakhis.synthetic import write_synthetic_breakhis

        if dicom:
            raise ValueError("breakhis has no DICOM variant (histopathology images are PNG)")
        if variant not in (None, "breakhis_v1"):
            raise ValueError(f"unknown breakhis variant {variant!r}; only breakhis_v1")
        write_synthetic_breakhis(out_dir, n, seed=seed)
        return Path(out_dir), {"layout": "BreaKHis_v1", "patients_per_subtype": n}

    def demo_synth_n(self) -> int:
        return 3

    def example_inputs(self, root: Path, n: int, seed: int) -> list[str]:
        """Images of one synthetic patient per subtype, spread over classes and magnifications."""
        records = discover_images(self.synth(root, n=1, seed=seed))
        step = max(1, len(records) // max(n, 1))
        return [str(r.path) for r in records[::step][:n]]

    # -- inference ---------------------------------------------------------------------------------------------
    def collect_inputs(self, inputs: Sequence[str]) -> Collected:
        out = Collected()
        seen: set[Path] = set()
        names: set[str] = set()
        for path in expand_paths(inputs):
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if not files:
                    out.errors.append(InputError(path, f"holds no images ({', '.join(IMAGE_SUFFIXES)})"))
            elif path.is_file():
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    problem = f"unsupported format {path.suffix or '(no suffix)'}; expected {', '.join(IMAGE_SUFFIXES)}"
                    out.errors.append(InputError(path, problem))
                    continue
                files = [path]
            else:
                out.errors.append(InputError(path, "does not exist"))
                continue
            for f in files:
                if f in seen:
                    continue
                seen.add(f)
                name, k = f.stem, 1
                while name in names:
                    k += 1
                    name = f"{f.stem}_{k}"
                names.add(name)
                out.items.append(InputItem(name, {"image": f}))
        return out

    def load_predictor(self, checkpoint: Checkpoint, options: PredictOptions) -> BreakhisPredictor:
        return BreakhisPredictor(checkpoint, options)

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, data_dir: Path, checkpoint: Checkpoint, out_dir: Path, options: PredictOptions) -> dict:
        """Image- and patient-level figures, per magnification, of every head, on the run's test patients.

        When the data hold the test patients (or images) recorded in the checkpoint's split, only those are
        scored; otherwise (an external set) every image is.
        """
        from pipelines.common.classification import evaluate_multiclass
        from pipelines.common.io import write_json

        predictor = BreakhisPredictor(checkpoint, options)
        records = discover_images(Path(data_dir), predictor.cfg.magnifications)
        split = checkpoint.extra.get("split") or {}
        held_out = _held_out(records, split)
        subset = "the run's held-out test split" if held_out else "every image (external set)"
        records = held_out or records
        probs: dict[str, list[np.ndarray]] = {h.name: [] for h in predictor.heads}
        bs = max(1, options.batch_size)
        for i in range(0, len(records), bs):
            chunk = records[i : i + bs]
            x = np.stack([predictor.prepare(InputItem(r.path.stem, {"image": r.path})).data for r in chunk])
            batch, _ = predictor.predict_arrays(x)
            for name, p in batch.items():
                probs[name].append(p)
        ids = [r.path.name for r in records]
        patients = [r.patient for r in records]
        strata = {"magnification": [r.magnification for r in records]}
        summary: dict[str, Any] = {
            "task": self.name,
            "checkpoint": str(checkpoint.path or ""),
            "images": len(records),
            "patients": len(set(patients)),
            "scored": subset,
        }
        for head in predictor.heads:
            y = np.asarray([r.binary_index if head.name == "binary" else r.subtype_index for r in records])
            summary[head.name] = evaluate_multiclass(
                y, np.concatenate(probs[head.name]), head.labels, ids, Path(out_dir) / head.name,
                id_column="image", groups=patients, strata=strata,
            )  # fmt: skip
        write_json(summary, Path(out_dir) / "summary.json")
        return summary


def _held_out(records: list[ImageRecord], split: dict[str, Any]) -> list[ImageRecord]:
    """The records of a checkpoint's test split (by image name for an image-wise split, else by patient)."""
    if split.get("test_images"):
        names = set(split["test_images"])
        return [r for r in records if r.path.name in names]
    patients = set(split.get("test_patients") or [])
    return [r for r in records if r.patient in patients]


register_task(BreakhisTask())
