"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _GaugeCollector(Collector):
    """A gauge read at scrape time from a callable returning ``{label value: number}``."""

    def __init__(self, name: str, doc: str, label: str, values: Callable[[], dict[str, int]]) -> None:
        self._name, self._doc, self._label, self._values = name, doc, label, values

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._doc, labels=[self._label])
        for key, n in sorted(self._values().items()):
            family.add_metric([key], n)
        yield family


class Metrics:
    """Request, failure, queue, compute, batch and job metrics.

    Args:
        job_counts: returns the number of jobs in each state, read at scrape time.
        queue_depths: returns the number of requests waiting per task, read at scrape time.
    """

    def __init__(
        self,
        job_counts: Callable[[], dict[str, int]] | None = None,
        queue_depths: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "medinfer_requests",
            "HTTP requests by task, route and status code.",
            ["task", "route", "code"],
            registry=self.registry,
        )
        self.failures = Counter(
            "medinfer_request_failures",
            "HTTP requests answered 4xx/5xx, by task and code.",
            ["task", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "medinfer_request_seconds",
            "End-to-end request seconds.",
            ["task", "route"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "medinfer_queue_seconds",
            "Seconds a request waited for its batch.",
            ["task"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "medinfer_compute_seconds",
            "Seconds of each batch's forward pass.",
            ["task"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "medinfer_batch_size", "Requests per batch.", ["task"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.stage_seconds = Histogram(
            "medinfer_stage_seconds",
            "Seconds of each stage of a prediction, by task: parse (request body and multipart), store (uploads "
            "to the private folder), group (inputs from files), decode_wait (for a decode thread), prepare (read "
            "and preprocess), queue (for a batch), forward (one batch), finish (post-process and any files).",
            ["task", "stage"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.item_failures = Counter(
            "medinfer_item_failures",
            "Inputs that failed, by task and reason.",
            ["task", "reason"],
            registry=self.registry,
        )
        if job_counts is not None:
            self.registry.register(_GaugeCollector("medinfer_jobs", "Jobs by state.", "state", job_counts))
        if queue_depths is not None:
            self.registry.register(
                _GaugeCollector("medinfer_queue_depth", "Requests waiting for a batch.", "task", queue_depths)
            )

    def stage(self, task: str, stage: str, seconds: float) -> None:
        """Record one stage of a prediction (see ``medinfer_stage_seconds``)."""
        self.stage_seconds.labels(task, stage).observe(max(0.0, seconds))

    def observe_batch(self, task: str, compute_s: float, batch_size: int, queue_times: list[float]) -> None:
        """Record one batch (its forward pass is also the ``forward`` stage, its inputs' waits ``queue``)."""
        self.compute_seconds.labels(task).observe(compute_s)
        self.stage(task, "forward", compute_s)
        self.batch_size.labels(task).observe(batch_size)
        for q in queue_times:
            self.queue_seconds.labels(task).observe(q)
            self.stage(task, "queue", q)


class MetricsMiddleware:
    """Count every HTTP request by task, route template and status code (including ones refused early).

    Args:
        app: the wrapped ASGI app.
        metrics: where to count.
        known_tasks: task names used as label values (anything else is counted as ``other``).
        prefix: the API prefix, restored on route templates of included routers.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics, known_tasks: Callable[[], Iterable[str]], prefix: str = ""
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.known_tasks = known_tasks
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            path = str(scope.get("path", ""))
            if route is not None and self.prefix and path.startswith(self.prefix + "/"):
                if not route_path.startswith(self.prefix + "/"):
                    route_path = self.prefix + route_path
            task = str(scope.get("path_params", {}).get("task", "") or scope.get("state", {}).get("task", ""))
            if task and task not in set(self.known_tasks()):
                task = "other"
            code = str(status)
            self.metrics.requests.labels(task, route_path, code).inc()
            self.metrics.request_seconds.labels(task, route_path).observe(time.perf_counter() - start)
            if status >= 400:
                self.metrics.failures.labels(task, code).inc()
