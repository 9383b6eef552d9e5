"""``/v2``: the Open Inference Protocol (KServe v2, Triton's HTTP/REST API) for tasks whose input is a tensor.

Health (``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}/ready``) is open like ``/readyz``; server
and model metadata and inference need the API key like ``/api/v1``. Inference is admitted before its body is
read, as the file routes are (:class:`~app.routes.predict.AdmittedRoute`). Every error of these routes is the
protocol's ``{"error": message}`` (:class:`OipRoute`). See :mod:`app.oip` for the tensors.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import oip
from app.errors import ServiceError
from app.routes.predict import AdmittedRoute, until_disconnect
from app.runtime import ModelRuntime
from app.schemas import OipError, OipInferRequest, OipInferResponse, OipModelMetadata, OipServerMetadata
from app.security import require_api_key
from app.service import Service, ServiceDep
from pipelines.common.errors import InputError

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def protocol_errors(handler: Handler) -> Handler:
    """Render every error of ``handler`` (its dependencies and admission included) as ``{"error": message}``."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except ServiceError as exc:
            return oip.error_response(exc.status, exc.message, exc.headers)
        except StarletteHTTPException as exc:  # the body limit, met while the body streams in
            message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
            return oip.error_response(exc.status_code, message, exc.headers)
        except InputError as exc:
            return oip.error_response(400, str(exc))
        except Exception as exc:
            logger.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
            return oip.error_response(500, "internal server error")

    return answer


class OipRoute(APIRoute):
    """A protocol route: its errors in the protocol's shape."""

    def get_route_handler(self) -> Handler:
        return protocol_errors(super().get_route_handler())


class OipInferRoute(AdmittedRoute):
    """The inference route: admitted before its body is read (key, model, room: 401, 404, 503 with
    ``Retry-After``) and bounded in time (504), its errors in the protocol's shape."""

    def get_route_handler(self) -> Handler:
        return protocol_errors(super().get_route_handler())


router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=OipRoute)
infer_router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=OipInferRoute)

secured = [Depends(require_api_key)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Bad request: the message names the input, output or parameter.",
        401: "Missing or wrong API key.",
        404: "Unknown model or version.",
        413: "Request body too large, or more inputs in its batch than a request may hold.",
        500: "Inference failed.",
        503: "Model not ready, or its queue is full (see Retry-After).",
        504: "The request or an input ran past its time limit.",
    }
    return {c: {"model": OipError, "description": text[c]} for c in codes}


def _health(ok: bool) -> Response:
    """A health answer: the status is the answer, the body empty."""
    return Response(status_code=200 if ok else 503)


HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Yes (empty body)."},
    503: {"description": "No (empty body)."},
}


def _runtime(service: Service, task: str, version: str | None = None) -> ModelRuntime:
    """The served model (any state), and its version when one is named.

    Raises:
        ServiceError: 404 for an unknown model or version.
    """
    rt = service.runtime(task, must_be_ready=False)
    if version is not None and (rt.checkpoint is None or version != rt.version):
        shown = rt.version if rt.checkpoint is not None else "none loaded"
        raise ServiceError(404, f"model {task!r} has no version {version[:80]!r} (served: {shown})")
    return rt


@router.get("/health/live", summary="Server live", response_class=Response, responses=HEALTH_RESPONSES)
async def live() -> Response:
    """200 while the server answers (Kubernetes liveness)."""
    return _health(True)


@router.get("/health/ready", summary="Server ready", response_class=Response, responses=HEALTH_RESPONSES)
async def ready(service: ServiceDep) -> Response:
    """200 when every served model is loaded and warmed, else 503 (Kubernetes readiness)."""
    return _health(bool(service.runtimes) and all(rt.ready for rt in service.runtimes.values()))


@router.get(
    "",
    response_model=OipServerMetadata,
    summary="Server metadata",
    dependencies=secured,
    responses=_errors(401),
)
async def server_metadata() -> dict[str, Any]:
    """The server's name and version, and the protocol extensions it serves."""
    try:
        version = importlib.metadata.version("medinfer")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": oip.SERVER_NAME, "version": version, "extensions": list(oip.EXTENSIONS)}


@router.get(
    "/models/{task}",
    response_model=OipModelMetadata,
    summary="Model metadata",
    dependencies=secured,
    responses=_errors(401, 404),
)
async def model_metadata(task: str, service: ServiceDep) -> JSONResponse:
    """Inputs and outputs (name, datatype, shape with -1 for a variable size, parameters: labels, units)."""
    return JSONResponse(oip.model_metadata(_runtime(service, task)))


@router.get(
    "/models/{task}/versions/{version}",
    response_model=OipModelMetadata,
    summary="Model metadata of a version",
    dependencies=secured,
    responses=_errors(401, 404),
)
async def model_version_metadata(task: str, version: str, service: ServiceDep) -> JSONResponse:
    """As ``GET /v2/models/{name}``, for the served version only."""
    return JSONResponse(oip.model_metadata(_runtime(service, task, version)))


MODEL_READY_RESPONSES: dict[int | str, dict[str, Any]] = {**HEALTH_RESPONSES, **_errors(404)}


@router.get("/models/{task}/ready", summary="Model ready", response_class=Response, responses=MODEL_READY_RESPONSES)
async def model_ready(task: str, service: ServiceDep) -> Response:
    """200 when the model is loaded and warmed, else 503; 404 for a model not served."""
    return _health(_runtime(service, task).ready)


@router.get(
    "/models/{task}/versions/{version}/ready",
    summary="Model version ready",
    response_class=Response,
    responses=MODEL_READY_RESPONSES,
)
async def model_version_ready(task: str, version: str, service: ServiceDep) -> Response:
    """As ``GET /v2/models/{name}/ready``, for the served version only."""
    return _health(_runtime(service, task, version).ready)


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its ``$defs`` references replaced by their definitions (for ``openapi_extra``)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


_REQUEST_SCHEMA = OipInferRequest.model_json_schema()
INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline(_REQUEST_SCHEMA, _REQUEST_SCHEMA.get("$defs", {}))},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "The JSON request (its length in Inference-Header-Content-Length), then the inputs' "
                "binary data in order.",
            },
        },
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The outputs; with binary outputs, the JSON response (its length in "
        "Inference-Header-Content-Length) followed by their data.",
    },
    **_errors(400, 401, 404, 413, 500, 503, 504),
}


async def _infer(task: str, request: Request, service: Service, version: str | None = None) -> Response:
    rt = _runtime(service, task, version)
    if rt.task.contract.tensor is None:
        raise oip.files_only(rt)
    body = await request.body()
    admission = getattr(request.state, "admission", None)
    # decoding a JSON tensor (tens of thousands of numbers) would hold the event loop: a decode thread does it
    header = request.headers.get(oip.HEADER_LENGTH)
    tensors = await rt.in_pool(oip.decode_request, body, header, rt, claim=admission, stage="parse")
    outcomes = await until_disconnect(request, oip.run(rt, tensors, service.settings, admission))
    oip.check_outcomes(outcomes)
    return oip.response(rt, tensors, outcomes)


@infer_router.post(
    "/models/{task}/infer",
    response_model=OipInferResponse,
    summary="Inference",
    openapi_extra=INFER_OPENAPI,
    responses=INFER_RESPONSES,
)
async def infer(task: str, request: Request, service: ServiceDep) -> Response:
    """Predict on tensors: one input, or a batch along a leading dimension, each element one input of the task.

    The task's options are parameters of the request or of the input (a signal's rate, for one). Outputs are
    the task's heads (``probabilities``, ``decisions``; one per head for several heads), as JSON data or, asked
    with ``binary_data``, as binary data; ``classification: k`` answers an output's top k labels.
    """
    return await _infer(task, request, service)


@infer_router.post(
    "/models/{task}/versions/{version}/infer",
    response_model=OipInferResponse,
    summary="Inference with a version",
    openapi_extra=INFER_OPENAPI,
    responses=INFER_RESPONSES,
)
async def infer_version(task: str, version: str, request: Request, service: ServiceDep) -> Response:
    """As ``POST /v2/models/{name}/infer``, for the served version only."""
    return await _infer(task, request, service, version)
