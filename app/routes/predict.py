"""``/api/v1/models/{task}/predict`` and ``/explain``: synchronous, dynamically batched prediction."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Request, UploadFile

from app.errors import ServiceError
from app.schemas import PredictResponse, error_responses
from app.service import ServiceDep

router = APIRouter(prefix="/models", tags=["predict"])

T = TypeVar("T")

FilesField = Annotated[
    list[UploadFile],
    File(
        description="The task's files: a case as a zip or as its separate files, a DICOM series as a zip, "
        "a signal record (e.g. .hea + .dat) or an image. Zips are extracted safely."
    ),
]
OptionsField = Annotated[
    str | None,
    Form(
        max_length=16_384,
        description="The task's options as a JSON object (each task's schema is in GET /api/v1/models, "
        'e.g. {"KEY": VALUE}); unknown keys or invalid values are answered 422 naming the key.',
    ),
]

RESPONSES = error_responses(400, 401, 404, 413, 415, 422, 503)


def require_multipart(request: Request) -> None:
    """415 for a body that is not ``multipart/form-data``."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ServiceError(415, f"expected a multipart/form-data upload, got {content_type or 'no content type'!r}")


async def until_disconnect(request: Request, work: Awaitable[T], poll_s: float = 0.2) -> T:
    """Await ``work`` but cancel it when the client goes away, so its queue slot is freed.

    Raises:
        ServiceError: 499-style cancellation is reported as 400 (nobody reads it).
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ServiceError(400, "client disconnected", "client_closed")
    finally:
        if not task.done():
            task.cancel()


async def task_options(request: Request, raw: str | None, allowed: frozenset[str]) -> dict[str, Any]:
    """The ``options`` form field as a mapping; a form field the endpoint does not take is refused.

    Raises:
        ServiceError: 422 for JSON that is not an object, or for an unknown form field (task options go in
            ``options``, never as fields of their own).
    """
    form = await request.form()  # already parsed by FastAPI for this request: no second read
    unknown = sorted(set(form.keys()) - allowed)
    if unknown:
        raise ServiceError(
            422,
            f"unknown form field(s) {', '.join(repr(u) for u in unknown)}; a task's options go in the 'options' "
            "field as a JSON object",
        )
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ServiceError(422, f"options: not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise ServiceError(422, f"options: expected a JSON object, got {type(value).__name__}")
    return value


PREDICT_FIELDS = frozenset({"files", "options"})


@router.post(
    "/{task}/predict",
    response_model=PredictResponse,
    summary="Predict on uploaded files",
    responses=RESPONSES,
)
async def predict(
    task: str,
    request: Request,
    service: ServiceDep,
    files: FilesField,
    options: OptionsField = None,
) -> dict[str, Any]:
    """Predict on one upload; results as the CLI writes them, each input's files (masks) as links."""
    require_multipart(request)
    values = await task_options(request, options, PREDICT_FIELDS)
    return await until_disconnect(request, service.predict(task, files, values, explain=False))


@router.post(
    "/{task}/explain",
    response_model=PredictResponse,
    summary="Predict and explain",
    responses=RESPONSES,
)
async def explain(
    task: str,
    request: Request,
    service: ServiceDep,
    files: FilesField,
    options: OptionsField = None,
) -> dict[str, Any]:
    """Predict with the task's explanation (prototypes, Grad-CAM, probability maps) among the outputs."""
    require_multipart(request)
    values = await task_options(request, options, PREDICT_FIELDS)
    return await until_disconnect(request, service.predict(task, files, values, explain=True))
