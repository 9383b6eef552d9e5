"""``/api/v1/models``: what is served, with checkpoint versions, input contracts and cards."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from app.runtime import ModelRuntime
from app.schemas import DataCard, ModelInfo, ModelList, OutputHeadInfo, error_responses
from app.service import ServiceDep
from pipelines.common.cards import read_data_card

router = APIRouter(prefix="/models", tags=["models"])


def _read(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def model_info(rt: ModelRuntime) -> ModelInfo:
    """What the service tells about one served task."""
    task, ckpt = rt.task, rt.checkpoint
    # the card of the data this checkpoint was trained on (synthetic.md for demo models), else the task's
    card_name = (ckpt.provenance.get("data_card", "") if ckpt else "") or task.data_card
    declared = {h.name: h for h in task.contract.heads}
    if ckpt is not None:
        default_head = task.contract.heads[0].name if task.contract.heads else "output"
        head_labels = ckpt.head_labels(default_head)
    else:
        head_labels = {h.name: list(h.labels) for h in task.contract.heads}
    heads = [
        OutputHeadInfo(name=name, labels=labels, activation=declared[name].activation if name in declared else "")
        for name, labels in head_labels.items()
    ]
    model_card = None
    if rt.checkpoint_path is not None:
        model_card = _read(rt.checkpoint_path.with_name(f"{rt.name}.MODEL_CARD.md")) or _read(
            rt.checkpoint_path.parent / "MODEL_CARD.md"
        )
    return ModelInfo(
        task=rt.name,
        title=task.title,
        state=rt.state,
        model_name=ckpt.model_name if ckpt else task.default_model,
        checkpoint_version=rt.version,
        checkpoint_file=rt.checkpoint_path.name if rt.checkpoint_path else "",
        labels=[label for h in heads for label in h.labels],
        heads=heads,
        contract=task.contract.to_dict(),
        options_schema=task.options_model.model_json_schema(),
        default_options=rt.default_options.model_dump(mode="json"),
        synthetic_demo=ckpt.synthetic_demo if ckpt else False,
        max_batch_size=rt.max_batch_size,
        metrics=ckpt.metrics if ckpt else {},
        provenance=ckpt.provenance if ckpt else {},
        model_card=model_card,
        data_card=DataCard(name=card_name, text=read_data_card(Path(card_name).name)) if card_name else None,
    )


@router.get("", response_model=ModelList, summary="Served models", responses=error_responses(401))
async def list_models(service: ServiceDep) -> ModelList:
    """Every served task: checkpoint version, input contract, labels, model card and data card."""
    return ModelList(models=[model_info(rt) for _, rt in sorted(service.runtimes.items())])


@router.get("/{task}", response_model=ModelInfo, summary="One served model", responses=error_responses(401, 404))
async def get_model(task: str, service: ServiceDep) -> ModelInfo:
    """One task's checkpoint version, input contract, labels, model card and data card."""
    return model_info(service.runtime(task, must_be_ready=False))
