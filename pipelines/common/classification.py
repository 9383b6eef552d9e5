"""The classification family (ecg, breakhis): batched logits → per-head activation and thresholds → JSON and CSV.

A classifier subclasses :class:`ClassificationPredictor` and supplies ``read`` (one input to a preprocessed
array) and, when its network returns more than one tensor, ``forward``. Heads (:class:`Head`) come from the
checkpoint: their labels, activation (``sigmoid`` multi-label with per-class thresholds, ``softmax`` one
class) and optional groups (ProtoECGNet reports its 71 labels grouped by branch). :func:`activate` is the one
activation used by training, evaluation and serving. :func:`evaluate_multilabel` writes the evaluation files
of a multi-label classifier with the shared metrics.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipelines.common.config import TaskOptions
from pipelines.common.csvsafe import SafeDictWriter, safe_writer
from pipelines.common.device import autocast
from pipelines.common.errors import InputError
from pipelines.common.io import write_json
from pipelines.common.task import InputItem, ItemOutput, Predictor, Prepared

__all__ = [
    "ClassificationPredictor",
    "Head",
    "activate",
    "balanced_class_weights",
    "evaluate_multiclass",
    "evaluate_multilabel",
    "head_thresholds",
    "multiclass_summary",
    "multilabel_summary",
    "split_batch",
]

ACTIVATIONS = ("sigmoid", "softmax")
PER_CLASS_COLUMNS = ("positives", "negatives", "auroc", "threshold", "f1", "precision", "recall")


def activate(logits: Any, activation: str) -> Any:
    """Probabilities from logits along the last axis (torch tensor or NumPy array, same type back).

    Raises:
        ValueError: an unknown activation.
    """
    import torch

    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    as_numpy = isinstance(logits, np.ndarray)
    t = torch.from_numpy(logits) if as_numpy else logits
    t = t.float()
    out = torch.sigmoid(t) if activation == "sigmoid" else torch.softmax(t, dim=-1)
    return out.numpy() if as_numpy else out


@dataclass(frozen=True)
class Head:
    """One classification head as served.

    Args:
        name: head name.
        labels: class names in output order.
        activation: ``sigmoid`` (independent labels, decided by ``thresholds``) or ``softmax`` (one class).
        thresholds: per-class decision thresholds of a sigmoid head (0.5 when not tuned).
        groups: optional group name → label indices, to report the labels grouped (ProtoECGNet's branches).
    """

    name: str
    labels: tuple[str, ...]
    activation: str
    thresholds: tuple[float, ...] = ()
    groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"head {self.name!r}: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.activation == "sigmoid" and not self.thresholds:
            object.__setattr__(self, "thresholds", (0.5,) * len(self.labels))
        if self.thresholds and len(self.thresholds) != len(self.labels):
            raise ValueError(f"head {self.name!r}: {len(self.thresholds)} thresholds for {len(self.labels)} labels")

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The decisions (C,) of a sigmoid head: each probability at or above its class's threshold."""
        return np.asarray(probs) >= np.asarray(self.thresholds)

    def result(self, probs: np.ndarray) -> dict[str, Any]:
        """Probabilities and decisions of one input, grouped when the head has groups."""
        if self.activation == "softmax":
            best = int(np.argmax(probs))
            return {
                "probabilities": {c: round(float(p), 6) for c, p in zip(self.labels, probs, strict=True)},
                "prediction": self.labels[best],
                "confidence": round(float(probs[best]), 6),
            }
        decisions = self.decide(probs)
        parts = self.groups or {"": tuple(range(len(self.labels)))}
        out: dict[str, Any] = {"probabilities": {}, "decisions": {}, "positive": {}}
        for group, idx in parts.items():
            names = [self.labels[i] for i in idx]
            out["probabilities"][group] = {c: round(float(probs[i]), 6) for c, i in zip(names, idx, strict=True)}
            out["decisions"][group] = {c: bool(decisions[i]) for c, i in zip(names, idx, strict=True)}
            out["positive"][group] = [c for c, i in zip(names, idx, strict=True) if decisions[i]]
        if not self.groups:
            out = {k: v[""] for k, v in out.items()}
        return out

    def csv_header(self, prefix: str) -> tuple[list[str], list[str]]:
        """Probability columns and decision columns."""
        probs = [f"{prefix}{c}" for c in self.labels]
        if self.activation == "softmax":
            return probs, [f"{prefix}prediction"]
        return probs, [f"{prefix}{c}_decision" for c in self.labels]

    def csv_values(self, probs: np.ndarray) -> tuple[list[str], list[Any]]:
        values = [f"{p:.6f}" for p in probs]
        if self.activation == "softmax":
            return values, [self.labels[int(np.argmax(probs))]]
        return values, self.decide(probs).astype(int).tolist()


def balanced_class_weights(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Cost-sensitive class weights w_c = N / (C · n_c) (sklearn's "balanced"); 0 for a class without samples.

    Args:
        counts: (C,) samples per class.

    Raises:
        ValueError: negative counts or no samples at all.
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or (n < 0).any() or n.sum() == 0:
        raise ValueError(f"counts must be non-negative per-class sample counts with a positive total, got {n.tolist()}")
    weights = np.zeros_like(n)
    present = n > 0
    weights[present] = n.sum() / (len(n) * n[present])
    return weights


def split_batch(value: Any, i: int) -> Any:
    """Item ``i`` of a batch-major array, or of every array in a (nested) mapping."""
    if isinstance(value, Mapping):
        return {k: split_batch(v, i) for k, v in value.items()}
    return value[i]


OptionsT = TypeVar("OptionsT", bound=TaskOptions)


class ClassificationPredictor(Predictor[OptionsT], abc.ABC):
    """A loaded classifier: batches of preprocessed inputs → per-head probabilities → JSON and one CSV row each.

    Subclasses supply :meth:`read` and :meth:`heads_from_checkpoint`, and override :meth:`forward` when the
    network returns more than logits, :meth:`explain` for explanations.
    """

    #: the result JSON's key for the input's name
    id_field = "record"
    #: one row per input, appended
    csv_name = "predictions.csv"

    def __init__(self, checkpoint: Any, options: Any) -> None:
        super().__init__(checkpoint, options)
        self.max_batch = max(1, int(options.batch_size))
        self.heads: list[Head] = self.heads_from_checkpoint()
        #: what every result says about the model (computed once; results share it and never change it)
        self.model_info: dict[str, Any] = checkpoint.model_info()

    # -- what a classifier supplies ------------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, item: InputItem, options: OptionsT) -> tuple[np.ndarray, dict[str, Any]]:
        """One input → its preprocessed array and context facts for the result (raises ``InputError``).

        Context keys starting with ``_`` stay private (an explanation's inputs); the others go into the result.
        """

    @abc.abstractmethod
    def heads_from_checkpoint(self) -> list[Head]:
        """The heads of the loaded checkpoint (labels, activation, thresholds)."""

    def forward(self, x: Any, explain: Sequence[bool]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Logits per head (B, C) and batch-major extras that ``explain`` needs (default: the model's logits)."""
        return {self.heads[0].name: self.model(x)}, {}

    def explain(self, prepared: Prepared, raw: dict[str, Any], out_dir: Path, output: ItemOutput) -> dict[str, Any]:
        """The explanation of one input (JSON), recording any file it writes in ``output``."""
        return {}

    # -- the three steps ---------------------------------------------------------------------------------------
    def prepare(self, item: InputItem) -> Prepared:
        options = self.item_options(item)
        t0 = time.perf_counter()
        x, context = self.read(item, options)
        return Prepared(item, x, context, {"read": time.perf_counter() - t0}, options)

    def predict_arrays(self, x: Any, explain: Sequence[bool] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Probabilities per head (B, C) as NumPy arrays and the extras, for a preprocessed batch."""
        import torch

        explain = list(explain) if explain is not None else [False] * len(x)
        with torch.no_grad(), autocast(self.device, self.options.amp):
            logits, extras = self.forward(torch.as_tensor(x).to(self.device), explain)
        probs = {h.name: activate(logits[h.name].float(), h.activation).cpu().numpy() for h in self.heads}
        return probs, extras

    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        x = np.stack([p.data for p in batch])
        explain = [self.wants_explanation(p.item) for p in batch]
        probs, extras = self.predict_arrays(x, explain)
        return [{"probs": split_batch(probs, i), **split_batch(extras, i)} for i in range(len(batch))]

    def needs_files(self, item: InputItem) -> bool:
        """Only an explanation needs files (its pictures); a prediction is all in the result's JSON."""
        return self.wants_explanation(item)

    def finish(self, prepared: Prepared, raw: Any, out_dir: Path | None) -> ItemOutput:
        """The result JSON; with ``out_dir``, also written as ``<name>.json`` and a row of the run's CSV."""
        self.check_finite(prepared.item, raw["probs"])
        name = prepared.item.name
        output = ItemOutput({})
        public = {k: v for k, v in prepared.context.items() if not k.startswith("_")}
        data: dict[str, Any] = {self.id_field: name, **public, **self.head_results(raw["probs"])}
        data["model"] = self.model_info  # a result says which model made it, in memory or as a file
        if out_dir is None:  # answered from memory (no explanation: see needs_files)
            output.data = {**data, "files": []}
            return output
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = out_dir / f"{name}.json"
        files = [json_path.name]
        if self.wants_explanation(prepared.item):
            data["explanation"] = self.explain(prepared, raw, out_dir, output)
            files += [f.path for f in output.files]
        data["files"] = files
        output.data = data
        output.add("result", write_json(data, json_path), out_dir)
        self.append_csv(out_dir, name, raw["probs"])
        return output

    # -- outputs -----------------------------------------------------------------------------------------------
    def check_finite(self, item: InputItem, probs: Mapping[str, np.ndarray]) -> None:
        """Refuse a result with NaN or infinite probabilities (nothing is written for it).

        Raises:
            InputError: naming the input, the head and how many of its probabilities are not finite.
        """
        for h in self.heads:
            p = np.asarray(probs[h.name], dtype=np.float64)
            bad = ~np.isfinite(p)
            if bad.any():
                kind = "NaN" if np.isnan(p).any() else "inf"
                shown = next(iter(item.paths.values())) if len(item.paths) == 1 else item.name
                raise InputError(
                    shown,
                    f"model output is not finite ({kind} in {int(bad.sum())} of {p.size} probabilities of head "
                    f"{h.name!r}); the input may hold extreme values, or the checkpoint is broken",
                )

    def head_results(self, probs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The result fields of every head (a single head's fields at the top level)."""
        if len(self.heads) == 1:
            return self.heads[0].result(probs[self.heads[0].name])
        return {h.name: h.result(probs[h.name]) for h in self.heads}

    def append_csv(self, out_dir: Path, name: str, probs: Mapping[str, np.ndarray]) -> None:
        """One row per input, appended; the header is written when the file is new (no per-path state is kept,
        so a long-running service does not accumulate any)."""
        path = out_dir / self.csv_name
        fresh = not path.exists() or path.stat().st_size == 0
        prob_cols: list[Any] = []
        decision_cols: list[Any] = []
        header_p: list[str] = []
        header_d: list[str] = []
        for h in self.heads:
            prefix = "" if len(self.heads) == 1 else f"{h.name}:"
            hp, hd = h.csv_header(prefix)
            vp, vd = h.csv_values(probs[h.name])
            header_p, header_d = header_p + hp, header_d + hd
            prob_cols, decision_cols = prob_cols + vp, decision_cols + vd
        with path.open("a", newline="", encoding="utf-8") as fh:
            w = safe_writer(fh)
            if fresh:
                w.writerow([self.id_field, *header_p, *header_d])
            w.writerow([name, *prob_cols, *decision_cols])


def head_thresholds(checkpoint: Any, head: str, n: int) -> tuple[float, ...]:
    """Tuned thresholds of a head from the checkpoint (``extra["thresholds"]``: a list for a single head, or a
    mapping head → list); 0.5 each when none were tuned."""
    stored = checkpoint.extra.get("thresholds")
    if isinstance(stored, Mapping):
        stored = stored.get(head)
    if stored is None:
        return (0.5,) * n
    return tuple(float(t) for t in stored)


def multilabel_summary(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray, groups: Mapping[str, Sequence[int]] | None = None
) -> dict[str, Any]:
    """Records, macro AUROC over classes with positives and negatives (and per group as ``auroc_<group>``),
    macro AUPRC, micro-F1 at ``thresholds`` and Fmax of a multi-label classifier."""
    from pipelines.common import metrics as m

    thr = np.asarray(thresholds, dtype=np.float64)
    aucs = m.per_class_auroc(y, p)
    summary: dict[str, Any] = {
        "n_records": int(y.shape[0]),
        "macro_auroc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan,
        "n_classes_scored": int(np.isfinite(aucs).sum()),
        "micro_f1": m.micro_f1(y, (p >= thr[None]).astype(np.float32)),
        "fmax": m.fmax(y, p),
        "macro_auprc": m.macro_auprc(y, p),
    }
    for group, idx in (groups or {}).items():
        sub = aucs[list(idx)]
        summary[f"auroc_{group}"] = float(np.nanmean(sub)) if np.isfinite(sub).any() else math.nan
    return summary


def evaluate_multilabel(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: np.ndarray,
    labels: Sequence[str],
    ids: Sequence[str],
    out_dir: Path,
    *,
    id_column: str,
    groups: Mapping[str, Sequence[int]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Shared metrics of a multi-label classifier; writes ``per_class.csv``, ``predictions.csv``, ``summary.json``.

    Args:
        y: (N, C) multi-hot references.
        p: (N, C) probabilities.
        thresholds: (C,) decision thresholds.
        labels: C class names.
        ids: N record identifiers.
        out_dir: output folder.
        id_column: header of the identifier column of ``predictions.csv``.
        groups: optional group → class indices (``per_class.csv`` then has a ``group`` column).
        extra: more summary fields.

    Returns:
        :func:`multilabel_summary` plus ``extra``.
    """
    from pipelines.common import metrics as m

    thr = np.asarray(thresholds, dtype=np.float64)
    summary = {**multilabel_summary(y, p, thr, groups), **(extra or {})}
    group_of = {i: group for group, idx in (groups or {}).items() for i in idx}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = m.per_class_rows(y, p, thr, labels)
    with (out_dir / "per_class.csv").open("w", newline="", encoding="utf-8") as fh:
        w = safe_writer(fh)
        w.writerow(["label", *(["group"] if groups else []), *PER_CLASS_COLUMNS])
        for i, row in enumerate(rows):
            lead = [row["label"], *([group_of.get(i, "")] if groups else [])]
            w.writerow([*lead, *(row[k] for k in PER_CLASS_COLUMNS)])
    with (out_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        w = safe_writer(fh)
        w.writerow([id_column, *labels])
        for rid, row in zip(ids, p, strict=True):
            w.writerow([rid, *(f"{v:.5f}" for v in row)])
    write_json(summary, out_dir / "summary.json")
    return summary


def multiclass_summary(y: np.ndarray, p: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, one-vs-rest macro AUROC, per-class precision/recall/F1 and the
    confusion matrix (rows true, columns predicted) of single-label predictions.

    Args:
        y: (N,) true class indices.
        p: (N, C) probabilities.
        labels: C class names.
    """
    from pipelines.common import metrics as m

    pred = np.asarray(p).argmax(1) if len(p) else np.zeros(0, dtype=np.int64)
    cm = m.confusion_matrix(y, pred, len(labels))
    per_class: list[dict[str, Any]] = []
    f1s: list[float] = []
    for c, name in enumerate(labels):
        tp, support, predicted = int(cm[c, c]), int(cm[c].sum()), int(cm[:, c].sum())
        precision = tp / predicted if predicted else math.nan
        recall = tp / support if support else math.nan
        f1 = (
            2 * precision * recall / (precision + recall)
            if predicted and support and tp
            else (0.0 if support else math.nan)
        )
        per_class.append({"label": name, "support": support, "precision": precision, "recall": recall, "f1": f1})
        if math.isfinite(f1):
            f1s.append(f1)
    return {
        "n": len(y),
        "accuracy": m.accuracy(y, pred),
        "balanced_accuracy": m.balanced_accuracy(y, pred, len(labels)),
        "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
        "macro_auroc": m.multiclass_auroc(y, p) if len(y) else math.nan,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def evaluate_multiclass(
    y: np.ndarray,
    p: np.ndarray,
    labels: Sequence[str],
    ids: Sequence[str],
    out_dir: Path,
    *,
    id_column: str,
    groups: Sequence[str] | None = None,
    group_name: str = "patient",
    strata: Mapping[str, Sequence[Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Shared metrics of a single-label classifier, per image, per group and per stratum.

    Writes ``predictions.csv`` (one row per item: true and predicted class, probabilities), ``per_class.csv``
    and ``confusion_matrix.csv``/``.png`` (item level), and ``summary.json``: ``image`` (item-level
    :func:`multiclass_summary`), ``<group_name>`` (each group's mean probability, e.g. per patient) and
    ``by_<stratum>`` (item level within each value, e.g. per magnification).

    Args:
        y: (N,) true class indices.
        p: (N, C) probabilities.
        labels: C class names.
        ids: N item identifiers.
        out_dir: output folder.
        id_column: header of the identifier column of ``predictions.csv``.
        groups: N group keys (patients); their mean probabilities give the group-level figures.
        group_name: what a group is.
        strata: name → N values (magnification → 40, 100...).
        extra: more summary fields.
    """
    from pipelines.common.plots import plot_confusion_matrix

    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"labels": list(labels), "image": multiclass_summary(y, p, labels)}
    if groups is not None:
        keys_ = sorted(set(groups))
        index = {g: i for i, g in enumerate(keys_)}
        g_idx = np.asarray([index[g] for g in groups])
        g_p = np.stack([p[g_idx == i].mean(0) for i in range(len(keys_))]) if keys_ else np.zeros((0, len(labels)))
        g_y = np.asarray([np.bincount(y[g_idx == i], minlength=len(labels)).argmax() for i in range(len(keys_))])
        summary[group_name] = multiclass_summary(g_y, g_p, labels)
    for name, values in (strata or {}).items():
        vals = np.asarray(list(values), dtype=object)
        summary[f"by_{name}"] = {
            str(v): multiclass_summary(y[vals == v], p[vals == v], labels) for v in sorted(set(vals.tolist()))
        }
    summary.update(extra or {})
    image = summary["image"]
    with (out_dir / "per_class.csv").open("w", newline="", encoding="utf-8") as fh:
        w = SafeDictWriter(fh, fieldnames=["label", "support", "precision", "recall", "f1"])
        w.writeheader()
        w.writerows(image["per_class"])
    cm = np.asarray(image["confusion_matrix"], dtype=np.int64)
    with (out_dir / "confusion_matrix.csv").open("w", newline="", encoding="utf-8") as fh:
        w2 = safe_writer(fh)
        w2.writerow(["true \\ predicted", *labels])
        for name, row in zip(labels, cm, strict=True):
            w2.writerow([name, *row.tolist()])
    plot_confusion_matrix(cm, labels, out_dir / "confusion_matrix.png", title="image level")
    with (out_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        w3 = safe_writer(fh)
        w3.writerow([id_column, "true", "predicted", *labels])
        for rid, yi, row in zip(ids, y, p, strict=True):
            w3.writerow([rid, labels[yi], labels[int(row.argmax())], *(f"{v:.5f}" for v in row)])
    write_json(summary, out_dir / "summary.json")
    return summary
