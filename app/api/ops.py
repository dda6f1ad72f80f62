"""Operations endpoints outside the inference protocols: Prometheus metrics."""

from __future__ import annotations

from app.api.http import HttpResponse
from app.api.router import Call, Endpoint
from app.metrics import Metrics
from app.serving.dataplane import DataPlane
from app.serving.results import ModelState

PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


def observe_models(metrics: Metrics, plane: DataPlane) -> None:
    """Set the queue-depth and model-state gauges from the data plane. Read at scrape time, not
    tracked on every change; a worker among several also calls this every second, since a scrape
    reaches one worker and reads the others' gauges from their files."""
    for name, version, busy, state in plane.queue_depths():
        metrics.queue_depth.labels(name, version).set(busy)
        for each in ModelState:
            metrics.model_state.labels(name, version, each.value).set(state is each)


def table(metrics: Metrics) -> list[Endpoint]:
    async def prometheus_metrics(call: Call) -> HttpResponse:
        observe_models(metrics, call.plane)
        return HttpResponse(metrics.render(), content_type=PROMETHEUS_TEXT)

    return [
        Endpoint(
            "GET",
            "/metrics",
            prometheus_metrics,
            "Prometheus metrics",
            ("operations",),
            auth="metrics",
            served_while_draining=True,
            errors={401: "Missing or wrong API key (only with BATCHSERVE_PROTECT_METRICS)"},
            docs={"produces": "text/plain"},
            operation="metrics",
        )
    ]
