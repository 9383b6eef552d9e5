"""Liveness, readiness and Prometheus metrics (open even when API keys are required)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.schemas import Health, JobsState, ModelState, Readiness, Threads
from app.service import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The process is up and answering."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    responses={
        503: {
            "model": Readiness,
            "description": "Some model is not loaded and warmed yet (or failed), or the job worker is not running.",
        }
    },
)
async def readyz(service: ServiceDep) -> JSONResponse:
    """200 once every enabled model is loaded and has run a warm-up input and the job worker runs; else 503.

    The body gives each model's state (and a failed one's reason, without server paths), the worker's, and the
    thread budgets set at start-up (torch's intra-op threads, decode threads, BLAS threads).
    """
    worker = service.worker
    body = Readiness(
        ready=service.ready,
        models={
            name: ModelState(state=rt.state, device=rt.device, error=rt.error, torch_threads=rt.torch_threads)
            for name, rt in service.runtimes.items()
        },
        jobs=JobsState(state="running" if worker is not None and worker.running else "stopped"),
        threads=Threads(**service.thread_budgets) if service.thread_budgets else None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format."}},
)
async def metrics(service: ServiceDep) -> Response:
    """Requests and failures by task and code, queue/compute seconds, batch sizes, jobs by state."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
