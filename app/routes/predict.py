"""``/api/v1/models/{task}/predict`` and ``/explain``: synchronous, dynamically batched prediction.

Both routes admit a request before its body is read (:class:`AdmittedRoute`): a model whose outstanding work is
at its bound answers 503 with ``Retry-After`` before a byte of the upload is parsed, unpacked or decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.routing import APIRoute

from app.batching import Claim
from app.errors import ServiceError
from app.schemas import PredictResponse, error_responses
from app.security import require_api_key
from app.service import Service, ServiceDep, get_service


def declared_length(request: Request) -> int:
    """The body size a request announces (``Content-Length``; 0 when absent or malformed)."""
    try:
        return max(0, int(request.headers.get("content-length", "0")))
    except ValueError:
        return 0


class AdmittedRoute(APIRoute):
    """A prediction route that admits its request before FastAPI reads the body, and bounds its time.

    In order, on the raw request: the API key (401), the model (404, or 503 when not ready) and room in its
    outstanding work for one more request of the declared ``Content-Length`` (503 with a ``Retry-After`` that
    grows with the work ahead: :class:`~app.batching.WorkLedger`). The claim is handed to the endpoint as
    ``request.state.admission`` and let go of when the request ends (its threads hold it until they return).
    The whole request, body included, gets ``request_timeout_s``, else 504.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def admitted(request: Request) -> Response:
            require_api_key(request)
            service = get_service(request)
            claim = service.runtime(str(request.path_params.get("task", ""))).admit(declared_length(request))
            request.state.admission = claim
            request.state.admitted_at = time.perf_counter()  # the endpoint records the body's parse from here
            limit = service.settings.request_timeout_s
            deadline = asyncio.timeout(limit)
            try:
                async with deadline:
                    return await handler(request)
            except TimeoutError as exc:
                if not deadline.expired():
                    raise
                raise ServiceError(
                    504, f"the request took longer than {limit:g} s; submit a job for slow inputs", "timeout"
                ) from exc
            finally:
                claim.let_go()

        return admitted


router = APIRouter(prefix="/models", tags=["predict"], route_class=AdmittedRoute)

T = TypeVar("T")

FilesField = Annotated[
    list[UploadFile],
    File(
        min_length=1,
        description="The task's files: a case as a zip or as its separate files, a DICOM series as a zip, "
        "a signal record (e.g. .hea + .dat) or an image. Zips are extracted safely.",
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

SaveField = Annotated[
    bool,
    Query(
        description="Keep the result as files (each input's result file and report.json/report.csv under "
        "/api/v1/jobs/{id}/files/) even when the answer holds all of it. Volumes and explanations always keep "
        "their files.",
    ),
]

PREDICT_RESPONSES = error_responses(400, 401, 404, 413, 415, 422, 503, 504)


def require_multipart(request: Request) -> None:
    """415 for a body that is not ``multipart/form-data``."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ServiceError(415, f"expected a multipart/form-data upload, got {content_type or 'no content type'!r}")


async def until_disconnect(request: Request, work: Awaitable[T], poll_s: float = 0.2) -> T:
    """Await ``work`` but cancel it when the client goes away, so that its inputs leave the queue.

    Threads already decoding for it run to their end, holding the request's claims until they return.

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


def _admission(request: Request, service: Service, task: str) -> Claim | None:
    """The claim :class:`AdmittedRoute` made for this request; records the body's parse (the ``parse`` stage:
    from admission to the endpoint, which FastAPI calls once the multipart body is read and parsed)."""
    admitted_at = getattr(request.state, "admitted_at", None)
    if isinstance(admitted_at, float) and task in service.runtimes:
        service.metrics.stage(task, "parse", time.perf_counter() - admitted_at)
    claim = getattr(request.state, "admission", None)
    return claim if isinstance(claim, Claim) else None


@router.post(
    "/{task}/predict",
    response_model=PredictResponse,
    summary="Predict on uploaded files",
    responses=PREDICT_RESPONSES,
)
async def predict(
    task: str,
    request: Request,
    service: ServiceDep,
    files: FilesField,
    options: OptionsField = None,
    save: SaveField = False,
) -> dict[str, Any]:
    """Predict on one upload; results as the CLI writes them, each input's files (masks) as links."""
    require_multipart(request)
    values = await task_options(request, options, PREDICT_FIELDS)
    admission = _admission(request, service, task)
    work = service.predict(task, files, values, explain=False, admission=admission, save=save)
    return await until_disconnect(request, work)


@router.post(
    "/{task}/explain",
    response_model=PredictResponse,
    summary="Predict and explain",
    responses=PREDICT_RESPONSES,
)
async def explain(
    task: str,
    request: Request,
    service: ServiceDep,
    files: FilesField,
    options: OptionsField = None,
    save: SaveField = False,
) -> dict[str, Any]:
    """Predict with the task's explanation (prototypes, Grad-CAM, probability maps) among the outputs."""
    require_multipart(request)
    values = await task_options(request, options, PREDICT_FIELDS)
    admission = _admission(request, service, task)
    work = service.predict(task, files, values, explain=True, admission=admission, save=save)
    return await until_disconnect(request, work)
