"""``create_app(settings)``: the FastAPI service. Models load in the lifespan, never at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.errors import install_handlers
from app.metrics import MetricsMiddleware
from app.routes import health, jobs, models, oip, predict
from app.security import BodyLimitMiddleware, LocalOnlyMiddleware, require_api_key
from app.service import API_PREFIX, Service
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

#: where the service serves the Swagger UI and ReDoc assets (public, like ``/docs`` and ``/openapi.json``)
DOCS_ASSETS = "/docs-assets"


def docs_assets_dir() -> Path:
    """The Swagger UI (``swagger-ui-bundle.js``, ``swagger-ui.css``), ReDoc (``redoc.standalone.js``) and favicon
    files that the ``fastapi-offline`` package ships."""
    return Path(str(files("fastapi_offline") / "static"))


def _add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` on assets served by the app itself: both work offline, with no CDN, no
    web fonts and no online validator."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # Swagger UI would send the schema to validator.swagger.io
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service app.

    Args:
        settings: service settings; ``None`` reads them from the environment (``get_settings()``).

    Returns:
        The app; its lifespan opens the job store, loads every enabled model in the background and runs
        the job worker.

    Raises:
        ValueError: if the API key file cannot be read, a key is too short, or ``settings.host`` is beyond
            loopback without keys and not ``insecure`` (the CLI's bind rule, also under ``uvicorn --factory``).
    """
    settings = settings or get_settings()
    settings.check_bind()
    service = Service(settings)
    api_keys = settings.keys()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    app = FastAPI(
        title="medinfer",
        version="1",
        summary="Published medical-imaging models behind one API, one per task (GET /api/v1/models lists them). "
        "Research use: not a medical device.",
        lifespan=lifespan,
        docs_url=None,  # served by _add_docs from packaged assets, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.api_keys = api_keys
    install_handlers(app)
    _add_docs(app)

    app.include_router(health.router)
    secured = [Depends(require_api_key)]
    app.include_router(models.router, prefix=API_PREFIX, dependencies=secured)
    app.include_router(predict.router, prefix=API_PREFIX, dependencies=secured)
    app.include_router(jobs.router, prefix=API_PREFIX, dependencies=secured)
    app.include_router(oip.router)  # the Open Inference Protocol: its own keys and error shape
    app.include_router(oip.infer_router)

    app.add_middleware(BodyLimitMiddleware, limit=int(settings.max_upload_mb * 1024 * 1024))
    app.add_middleware(
        MetricsMiddleware, metrics=service.metrics, known_tasks=lambda: service.runtimes.keys(), prefix=API_PREFIX
    )
    if api_keys:
        logger.info("API keys required on %s (%d key(s))", API_PREFIX, len(api_keys))
    else:
        # outermost: the bind, Host and Origin rules hold however the app is served, before anything else runs
        app.add_middleware(LocalOnlyMiddleware, insecure=settings.insecure)
    return app
