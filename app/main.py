"""``create_app(settings)``: the FastAPI service. Models load in the lifespan, never at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from app.errors import install_handlers
from app.metrics import MetricsMiddleware
from app.routes import health, jobs, models, oip, predict
from app.security import BodyLimitMiddleware, LocalOnlyMiddleware, require_api_key
from app.service import API_PREFIX, Service
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)


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
        summary="Four published medical-imaging models behind one API. Research use: not a medical device.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.api_keys = api_keys
    install_handlers(app)

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
