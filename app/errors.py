"""The service's error type and the handlers that render every error as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.common.errors import InputError

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_input",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_type",
    422: "validation_error",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}


class ServiceError(Exception):
    """An error with its HTTP status, raised anywhere in ``app/`` and rendered by :func:`install_handlers`.

    Args:
        status: HTTP status code.
        message: readable message (never a patient identifier or a server path).
        code: stable machine code; defaults from the status.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")
        self.headers = headers or {}


class QueueFullError(ServiceError):
    """A model's queue is full; the client should retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(503, message, "overloaded", {"Retry-After": str(int(retry_after_s))})


#: routes of the Open Inference Protocol, whose errors are the protocol's ``{"error": message}``
OIP_PREFIX = "/v2"


def error_json(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, *, path: str = ""
) -> JSONResponse:
    """An error response in the service's shape, or in the Open Inference Protocol's for a ``/v2`` ``path``."""
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Register handlers so that every error, expected or not, is JSON in one shape."""

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return error_json(exc.status, exc.code, exc.message, exc.headers, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        code = _CODES.get(exc.status_code, "error")
        return error_json(exc.status_code, code, message, dict(exc.headers or {}), path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        path = request.url.path
        api_upload = not (path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"))
        if api_upload and request.method == "POST" and not content_type.lower().startswith("multipart/form-data"):
            # every POST of the API is an upload: a body of another type is the wrong media type, not a field
            return error_json(415, "unsupported_type", f"expected a multipart/form-data upload, got {content_type!r}")
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
        return error_json(422, "validation_error", "; ".join(parts) or "invalid request", path=path)

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        return error_json(400, "bad_input", str(exc), path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return error_json(500, "internal", "internal server error", path=request.url.path)
