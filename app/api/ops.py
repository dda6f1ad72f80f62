"""Operations endpoints outside the inference protocols: Prometheus metrics."""

from __future__ import annotations

from app.api.http import HttpResponse
from app.api.router import Call, Endpoint
from app.metrics import Metrics
from app.serving.results import ModelState

PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


def table(metrics: Metrics) -> list[Endpoint]:
    async def prometheus_metrics(call: Call) -> HttpResponse:
        # Queue depth and model state are read at scrape time, not tracked on every change.
        for name, version, busy, state in call.plane.queue_depths():
            metrics.queue_depth.labels(name, version).set(busy)
            for each in ModelState:
                metrics.model_state.labels(name, version, each.value).set(state is each)
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
