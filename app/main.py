"""The application factory: `create_app(settings)` wires settings, registry, routes and middleware.
Nothing happens at import time; models load in the lifespan."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app import routes_v1, routes_v2
from app.docs import install_docs
from app.errors import install_error_handlers
from app.fastpath import FastPath
from app.health import HealthServer
from app.http import authorize
from app.middleware import ServiceMiddleware
from app.service import Service
from app.settings import Settings

log = logging.getLogger("batchserve")

DESCRIPTION = """Inference for trained PyTorch MLP and RNN models, with dynamic batching:
concurrent requests to a model are merged into one forward pass.

* `/v1` is the native API: `predict` for classifiers, `score` for language models.
* `/v2` is the Open Inference Protocol (KServe / Triton).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        health = None
        if settings.health_port is not None:
            health = HealthServer(service, settings.host, settings.health_port)
            health.start()
            app.state.health_port = health.port
        await service.registry.load_repository()
        # Start-up leaves ~10^5 long-lived objects (torch, pydantic, FastAPI); freezing them keeps
        # the collector's full passes from walking them again during serving.
        gc.collect()
        gc.freeze()
        log.info("serving models: %s", ", ".join(service.registry.names()) or "none")
        yield
        await service.registry.close()
        if health is not None:
            health.stop()

    app = BatchserveApp(
        title="batchserve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves them without a CDN
        redoc_url=None,
        # batchserve exports its own Prometheus metrics; no OpenTelemetry work per request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.service = service
    install_error_handlers(app)
    install_docs(app)
    app.include_router(routes_v1.router)
    app.include_router(routes_v2.router)
    if service.admin_keys:  # without an admin key the control routes do not exist (404)
        app.include_router(routes_v2.repository_router)
    _add_metrics_route(app, service)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.front = ServiceMiddleware(
        FastPath(app.call_fastapi, service),
        metrics=service.metrics,
        max_body_bytes=settings.max_body_bytes,
        log_access=settings.access_log,
        lifecycle=service.lifecycle,
    )
    return app


class BatchserveApp(FastAPI):
    """FastAPI behind batchserve's own two ASGI layers: request accounting (ServiceMiddleware)
    and the hot predict/score endpoints (FastPath) run before FastAPI's middleware stack, so a
    request that FastPath answers (or a 503 under overload) costs no FastAPI work at all."""

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def call_fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def _add_metrics_route(app: FastAPI, service: Service) -> None:
    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        if service.settings.protect_metrics:
            authorize(request, service.api_keys)
        service.refresh_gauges()
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (*routes_v1.REQUEST_SCHEMAS, *routes_v2.REQUEST_SCHEMAS):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = schema
    return app.openapi_schema
