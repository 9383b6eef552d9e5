"""``medinfer predict ecg``: 71 probabilities, decisions grouped by branch, and prototype explanations."""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.protoecgnet import BRANCH_NAMES, PTBXL_LABELS, ProtoECGNet
from pipelines.common.checkpoint import Checkpoint
from pipelines.common.io import write_json
from pipelines.common.task import InputItem, PredictOptions, Predictor, Prepared
from pipelines.ecg.explain import plot_explanation, top_prototypes
from pipelines.ecg.readers import read_record
from pipelines.ecg.transforms import preprocess_signal

__all__ = ["EcgPredictor", "PREDICTIONS_CSV", "synthetic_waveform"]

PREDICTIONS_CSV = "predictions.csv"


def synthetic_waveform(seconds: float = 10.0, fs: float = 100.0, rate_bpm: float = 72.0) -> np.ndarray:
    """A cheap ECG-like (12, n) signal in mV (Gaussian P, QRS and T per beat) for warm-up and benchmarks."""
    t = np.arange(int(seconds * fs)) / fs
    rr = 60.0 / rate_bpm
    phase = (t % rr) - rr * 0.3
    beat = (
        0.15 * np.exp(-((phase + 0.16) ** 2) / (2 * 0.02**2))
        + 1.0 * np.exp(-(phase**2) / (2 * 0.012**2))
        + 0.3 * np.exp(-((phase - 0.25) ** 2) / (2 * 0.04**2))
    )
    gains = np.linspace(0.6, 1.2, 12)[:, None]
    return gains * beat[None, :]


class EcgPredictor(Predictor):
    """ProtoECGNet predictor: ``prepare`` reads and preprocesses, ``run`` batches, ``finish`` writes JSON/CSV/PNG.

    Args:
        checkpoint: an ``ecg`` checkpoint.
        options: ``batch_size`` records per forward pass, ``amp`` (CUDA only), ``explain``, ``sampling_rate`` for
            CSV/NPY inputs.
    """

    def __init__(self, checkpoint: Checkpoint, options: PredictOptions) -> None:
        super().__init__(checkpoint, options)
        self.model: ProtoECGNet
        self.max_batch = max(1, int(options.batch_size))
        extra = checkpoint.extra
        n = len(checkpoint.labels)
        self.thresholds = np.asarray(extra.get("thresholds", [0.5] * n), dtype=np.float64)
        self.highpass_hz = float(checkpoint.preprocessing.get("highpass_hz", 0.5))
        self.fs = float(checkpoint.preprocessing.get("sampling_rate_hz", 100.0))
        self.sources: list[dict[str, Any]] = list(extra.get("prototype_sources", []))
        self.segments: dict[str, torch.Tensor] = dict(extra.get("prototype_segments", {}))
        self.labels = list(checkpoint.labels)

    # -- the three steps ---------------------------------------------------------------------------------------
    def prepare(self, item: InputItem) -> Prepared:
        t0 = time.perf_counter()
        path = next(iter(item.paths.values()))
        rec = read_record(path, self.options.sampling_rate)
        x = preprocess_signal(rec.signal, rec.fs, rec.leads, path, target_fs=self.fs, highpass_hz=self.highpass_hz)
        context = {"input_fs": rec.fs, "input_seconds": round(rec.seconds, 3)}
        return Prepared(item, x, context, {"read": time.perf_counter() - t0})

    def _autocast(self) -> Any:
        if self.options.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (B, L) and similarities (B, P) of a batch (B, 12, N)."""
        with self._autocast():
            out = self.model(x.to(self.device))
        return torch.sigmoid(out.logits.float()).cpu().numpy(), out.similarities.float().cpu().numpy()

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """Fusion probabilities (B, L) of a preprocessed batch."""
        return self.forward(x)[0]

    @torch.no_grad()
    def best_windows(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Per 2D branch, (B, P, 2): the best window of each prototype and its scaled similarity."""
        out = {}
        for name in BRANCH_NAMES:
            b = self.model.branch(name)
            if b.kind != "2d":
                continue
            ws = b.window_similarities(b.latent(x.to(self.device))).float()
            val, idx = ws.max(dim=-1)
            out[name] = torch.stack([idx.float(), val], dim=-1).cpu().numpy()
        return out

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        x = torch.from_numpy(np.stack([p.data for p in batch]))
        probs, sims = self.forward(x)
        explain = [self.wants_explanation(p.item) for p in batch]
        windows = self.best_windows(x) if any(explain) else {}
        return [
            {
                "probs": probs[i],
                "sims": sims[i],
                "windows": {k: v[i] for k, v in windows.items()} if explain[i] else None,
            }
            for i in range(len(batch))
        ]

    def result(self, probs: np.ndarray) -> dict[str, Any]:
        """Probabilities and decisions grouped by branch."""
        decisions = probs >= self.thresholds
        out: dict[str, Any] = {"probabilities": {}, "decisions": {}, "positive": {}}
        for name in BRANCH_NAMES:
            idx = self.model.branch_index(name).cpu().tolist()
            names = [self.labels[i] for i in idx] if len(self.labels) == len(PTBXL_LABELS) else [str(i) for i in idx]
            out["probabilities"][name] = {c: round(float(probs[i]), 6) for c, i in zip(names, idx, strict=True)}
            out["decisions"][name] = {c: bool(decisions[i]) for c, i in zip(names, idx, strict=True)}
            out["positive"][name] = [c for c in names if out["decisions"][name][c]]
        return out

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path) -> dict[str, Any]:
        out_dir.mkdir(parents=True, exist_ok=True)
        name = prepared.item.name
        res = {"record": name, **prepared.context, **self.result(raw["probs"])}
        files = [f"{name}.json"]
        if raw["windows"] is not None:
            res["explanation"], pngs = self.explain(prepared, raw, out_dir)
            files += pngs
        res["files"] = files
        write_json(res, out_dir / f"{name}.json")
        self._append_csv(out_dir, name, raw["probs"])
        return res

    # -- outputs -----------------------------------------------------------------------------------------------
    def _append_csv(self, out_dir: Path, name: str, probs: np.ndarray) -> None:
        # one row per record, appended; the header is written when the file is new (no per-path state is kept,
        # so a long-running service does not accumulate any)
        path = out_dir / PREDICTIONS_CSV
        fresh = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if fresh:
                w.writerow(["record", *self.labels, *[f"{c}_decision" for c in self.labels]])
            decisions = (probs >= self.thresholds).astype(int)
            w.writerow([name, *(f"{p:.6f}" for p in probs), *decisions.tolist()])

    def explain(self, prepared: Prepared, raw: Any, out_dir: Path) -> tuple[dict[str, Any], list[str]]:
        """Top-5 prototypes per branch, and a PNG per branch for its most similar prototype."""
        slices = self.model.prototype_slices()
        explanation, pngs = {}, []
        for branch in BRANCH_NAMES:
            sims = raw["sims"][slices[branch]]
            top = top_prototypes(self.model, branch, sims, raw["windows"].get(branch), self.sources, self.fs)
            explanation[branch] = top
            if top:
                seg = self.segments.get(branch)
                segment = seg[top[0]["prototype"]].float().numpy() if seg is not None else None
                png = f"{prepared.item.name}_explain_{branch}.png"
                plot_explanation(prepared.data, top[0], segment, out_dir / png, title=f"{branch}: {top[0]['label']}")
                pngs.append(png)
        return explanation, pngs

    def warmup(self) -> None:
        x = preprocess_signal(synthetic_waveform(), 100.0, None, "<warmup>", highpass_hz=self.highpass_hz)
        self.forward(torch.from_numpy(x)[None])
