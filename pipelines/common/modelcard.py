"""Model cards: Markdown written beside every trained checkpoint.

Every card has the same sections in the same order (:data:`MODEL_CARD_SECTIONS`), whatever the task: what the
model is, its intended use, that it is not a medical device, the data it was trained on with a pointer to the
data card in ``data_cards/``, validation metrics, method notes, limitations and provenance (with the
``synthetic`` flag). A model trained on ``medinfer synth`` data says which real dataset the synthetic data stand
in for, and points at both cards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.common.cards import data_card_path, dataset_name

logger = logging.getLogger(__name__)

NOT_A_DEVICE = "**Not a medical device; not for diagnosis.** Research use only."
#: the card of every dataset written by ``medinfer synth`` (one section per task)
SYNTHETIC_CARD = "synthetic.md"
#: the ``## `` sections of every model card, in order
MODEL_CARD_SECTIONS: tuple[str, ...] = (
    "Model",
    "Intended use",
    "Not a medical device",
    "Training data",
    "Metrics (validation)",
    "Method notes",
    "Limitations",
    "Provenance",
)
_NOT_A_DEVICE_TEXT = (
    "This model is research software. It is not a medical device: it has not been cleared or approved by any "
    "regulator, and it must not be used for diagnosis, treatment or any decision about a patient."
)


def _card_ref(name: str) -> str:
    """``data_cards/<name>`` as code, saying so when no such card is installed (a wrong pointer is worse)."""
    if data_card_path(name) is None:
        logger.warning("model card points at data card %s, which does not exist", name)
        return f"`data_cards/{name}` (no such data card in this installation)"
    return f"`data_cards/{name}`"


def _real_card(task: str, data_card: str, stands_in_for: str | None, provenance: Mapping[str, Any]) -> str | None:
    """The card of the real dataset that synthetic training data imitate, from the first source that names it."""
    if stands_in_for:
        return stands_in_for
    if provenance.get("stands_in_for"):
        return str(provenance["stands_in_for"])
    if data_card and data_card != SYNTHETIC_CARD:
        return data_card  # the caller named the real card and flagged the data as synthetic
    from pipelines.common.task import get_task

    try:
        return get_task(task).data_card or None
    except ValueError:  # a task that is not registered (tests' analytic tasks)
        return None


def _data_pointer(task: str, data_card: str, synthetic: bool, real: str | None) -> str:
    if not synthetic:
        return f"Data card: {_card_ref(data_card)}."
    made = f"{_card_ref(SYNTHETIC_CARD)} (section `{task}`) for how the data were made"
    if real is None:
        return f"Synthetic data: see {made}; the real dataset they stand in for is not recorded."
    return (
        f"Synthetic stand-in for {dataset_name(real)}: see {made}, and {_card_ref(real)} for the real dataset "
        "they imitate."
    )


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def write_model_card(
    path: Path,
    *,
    title: str,
    task: str,
    model_name: str,
    paper: str,
    summary: str,
    intended_use: str,
    data: str,
    data_card: str,
    metrics: Mapping[str, Any],
    method_notes: Sequence[str] = (),
    limitations: Sequence[str] = (),
    provenance: Mapping[str, Any] | None = None,
    synthetic: bool = False,
    stands_in_for: str | None = None,
) -> Path:
    """Write a model card with the sections of :data:`MODEL_CARD_SECTIONS`, in order.

    Args:
        path: Markdown file to write.
        title: card title.
        task: task name.
        model_name: registry name of the network.
        paper: the reference the method follows.
        summary: one paragraph on what the model does.
        intended_use: who may use it for what.
        data: what it was trained on.
        data_card: data card file (under ``data_cards/``) of the training data: ``synthetic.md`` for synthetic data.
        metrics: headline validation metrics.
        method_notes: design choices, each tagged as in PAPERS.md ([PAPER], [CODE], [INF]...).
        limitations: known limitations.
        provenance: the checkpoint's provenance block (listed as it is, plus ``synthetic`` when it lacks one).
        synthetic: trained on synthetic data (says so prominently, and names the real dataset they stand in for).
        stands_in_for: for synthetic data, the card of the real dataset they imitate; default: the provenance's
            ``stands_in_for``, else ``data_card`` when it is not ``synthetic.md``, else the registered task's card.

    Returns:
        ``path``.
    """
    prov = dict(provenance or {})
    prov.setdefault("synthetic", synthetic)
    real = _real_card(task, data_card, stands_in_for, prov) if synthetic else None
    lines = [f"# Model card: {title}", "", NOT_A_DEVICE, ""]
    if synthetic:
        what = f"a synthetic stand-in for {dataset_name(real)}" if real else "synthetic data"
        demo = " It is a `medinfer demo` model." if prov.get("trained_by") == "medinfer demo" else ""
        lines += [
            f"> Trained on **synthetic data** ({what}) generated by `medinfer synth`. Its outputs on real images "
            f"are meaningless; it exists to exercise the pipeline.{demo}",
            "",
        ]
    notes = list(method_notes) or ["none stated"]
    stated_limits = list(limitations)
    if synthetic:
        stated_limits.append("Trained on synthetic data: it has never seen a real image, signal or patient.")
    sections: dict[str, list[str]] = {
        "Model": [f"- task: `{task}`", f"- network: `{model_name}`", f"- method: {paper}", "", summary],
        "Intended use": [intended_use],
        "Not a medical device": [_NOT_A_DEVICE_TEXT],
        "Training data": [data, "", _data_pointer(task, SYNTHETIC_CARD if synthetic else data_card, synthetic, real)],
        "Metrics (validation)": ["```json", json.dumps(dict(metrics), indent=2, default=str), "```"],
        "Method notes": [f"- {n}" for n in notes],
        "Limitations": [
            *[f"- {x}" for x in stated_limits],
            "- Not validated prospectively or on any clinical population.",
        ],
        "Provenance": [f"- {k}: {_value(v)}" for k, v in prov.items()],
    }
    for name in MODEL_CARD_SECTIONS:
        lines += [f"## {name}", *sections[name], ""]
    lines += ["---", NOT_A_DEVICE, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
