"""Operations endpoints outside the inference protocols: Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from app.api.routing import ServiceRoute, served_while_draining
from app.api.schema import errors
from app.metrics import Metrics
from app.serving.dataplane import DataPlane
from app.serving.results import ModelState

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class PrometheusText(Response):
    media_type = PROMETHEUS_TEXT


def observe_models(metrics: Metrics, plane: DataPlane) -> None:
    """Set the queue-depth and model-state gauges from the data plane. Read at scrape time, not
    tracked on every change; a worker among several also calls this every second, since a scrape
    reaches one worker and reads the others' gauges from their files."""
    for name, version, busy, state in plane.queue_depths():
        metrics.queue_depth.labels(name, version).set(busy)
        for each in ModelState:
            metrics.model_state.labels(name, version, each.value).set(state is each)


def router(metrics: Metrics, plane: DataPlane, guard: list[Any]) -> APIRouter:
    """/metrics, behind `guard` (the user key, with BATCHSERVE_PROTECT_METRICS)."""
    api = APIRouter(route_class=ServiceRoute, tags=["operations"])

    @api.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PrometheusText,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **errors({401: "Missing or wrong API key (only with BATCHSERVE_PROTECT_METRICS)"}),
        },
        dependencies=guard,
        name="metrics",
    )
    @served_while_draining
    async def metrics_text() -> Response:
        observe_models(metrics, plane)
        return PrometheusText(metrics.render())

    return api
