"""The application factory: `create_app(settings)` wires the serving core (registry, data plane)
to the HTTP transport, a FastAPI app: an APIRouter per protocol, the middleware around every
request, the exception handlers and the docs pages. Nothing happens at import time; models load
in the lifespan."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app import __version__
from app.api import ops, playground
from app.api.context import Accounting, Keys
from app.api.docs import install_docs
from app.api.grpc.server import GrpcServer
from app.api.health import HealthServer
from app.api.middleware import RequestMiddleware
from app.api.openai import endpoints as openai
from app.api.routing import bearer_key, install_error_handlers
from app.api.schema import BodySchemas, openapi_document
from app.api.v1 import endpoints as v1
from app.api.v1 import kserve as kserve_v1
from app.api.v2 import endpoints as v2
from app.metrics import Metrics
from app.serving.batcher import BatchReport
from app.serving.dataplane import DataPlane, Lifecycle
from app.serving.generation import StepReport
from app.serving.loader import LoadedModel
from app.serving.registry import ModelRegistry
from app.settings import Settings

log = logging.getLogger("batchserve")

TITLE = "batchserve"
DESCRIPTION = """Inference for trained PyTorch MLP and RNN models, with dynamic batching:
concurrent requests to a model are merged into one forward pass.

* [The playground](playground): draw a digit, type a name, and see what each served model
  makes of it.
* `/v1` is the native API: `predict` for classifiers, `score` for language models.
* `/v1/models/{name}:predict` is KServe's V1 protocol (`instances` -> `predictions`).
* `/v2` is the Open Inference Protocol (KServe / Triton), with Triton's binary tensor data,
  classification, statistics and model configuration extensions; the same is served over gRPC
  on `BATCHSERVE_GRPC_PORT` when set.

Request bodies may be sent compressed (`Content-Encoding: gzip` or `deflate`; the body limit
applies to the decompressed size), and answers of 1 KiB or more are compressed when
`Accept-Encoding` asks for it.
"""


class Application:
    """The ASGI application uvicorn runs, and the handles the process needs on it. A worker among
    several passes its multiprocess `metrics` and the health port's socket it shares."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        health_socket: socket.socket | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health_socket = health_socket
        self.lifecycle = Lifecycle()
        registry = ModelRegistry(settings, self._observe_batch, self._observe_step)
        self.plane = DataPlane(settings, registry, lifecycle=self.lifecycle)
        self.keys = Keys.from_settings(settings)
        self.accounting = Accounting(self.metrics, settings.access_log)
        self.health_port: int | None = None
        self.grpc_port: int | None = None
        self._grpc: GrpcServer | None = None
        self.fastapi = self._fastapi()

    def _fastapi(self) -> FastAPI:
        settings, plane = self.settings, self.plane
        app = FastAPI(
            title=TITLE,
            version=__version__,
            description=DESCRIPTION,
            lifespan=self._lifespan,
            docs_url=None,  # install_docs serves them without a CDN
            redoc_url=None,
            # batchserve exports its own Prometheus metrics; no OpenTelemetry work per request.
            telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        )
        app.state.plane = plane
        keys, bodies = self.keys, BodySchemas()
        user: list[Any] = []
        if keys.user:
            user = [bearer_key(keys.user, "UserKey", "An API key of BATCHSERVE_API_KEYS.")]
        admin = None
        if keys.admin:
            admin = [bearer_key(keys.admin, "AdminKey", "BATCHSERVE_ADMIN_API_KEY.")]
        routers = [
            v1.router(plane, bodies, user),
            kserve_v1.router(plane, bodies, user),
            v2.router(plane, bodies, user, admin),
            openai.router(plane, bodies, user),
            ops.router(self.metrics, plane, user if settings.protect_metrics else []),
        ]
        # The protocols' routes go straight into the app's router, as include_router would put
        # them with no prefix and no dependencies of its own, but without its lazy per-request
        # walk of each included router (~30 us per request on a predict of 300 us).
        for router in routers:
            app.router.routes.extend(router.routes)
        app.router.routes.extend(playground.router.routes)
        install_docs(app)
        install_error_handlers(app)
        cached: dict[str, Any] = {}

        def openapi() -> dict[str, Any]:
            if not cached:
                cached.update(openapi_document(app, bodies, TITLE, __version__, DESCRIPTION))
            return cached

        app.openapi = openapi  # type: ignore[method-assign]
        # One pure-ASGI middleware does all the per-request work in one pass: three layers (id
        # and accounting, compression, body limit) measured ~6 us more per request.
        app.add_middleware(
            RequestMiddleware, accounting=self.accounting, max_body_bytes=settings.max_body_bytes
        )
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fastapi(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        return self.fastapi.openapi()

    def _observe_batch(self, model: LoadedModel, report: BatchReport) -> None:
        self.plane.observe_batch(model, report)
        self.metrics.observe_batch(
            model.name, model.version, report.compute_s, report.queue_s, report.failed_items
        )

    def _observe_step(self, model: LoadedModel, report: StepReport) -> None:
        self.metrics.observe_step(model.name, model.version, report.sequences, report.tokens)

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        settings, registry = self.settings, self.plane.registry
        torch.set_num_threads(settings.torch_threads)
        # Scores must not depend on the device: TF32 (cuDNN's default is on) moves a language
        # model's log-probabilities by up to 1e-2 nats against the CPU; off unless asked for.
        torch.backends.cuda.matmul.allow_tf32 = settings.allow_tf32
        torch.backends.cudnn.allow_tf32 = settings.allow_tf32
        self.lifecycle.starting = True
        health = None
        if settings.health_port is not None:
            health = HealthServer(
                self.plane, settings.host, settings.health_port, self.health_socket
            )
            health.start()
            self.health_port = health.port
        if settings.grpc_port is not None:
            # Before the models load, so that gRPC health probes see NOT_SERVING, not nothing.
            self._grpc = GrpcServer(self.plane, self.keys, self.accounting)
            self.grpc_port = await self._grpc.start(settings.host, settings.grpc_port)
        await registry.load_repository()
        self.lifecycle.starting = False
        # Start-up leaves ~10^5 long-lived objects (torch, pydantic, FastAPI); freezing them keeps
        # the collector's full passes from walking them again during serving.
        gc.collect()
        gc.freeze()
        # Every request allocates dozens of short-lived container objects, and with Python's
        # threshold (700) the collector runs every few requests; those in flight then move up a
        # generation and are walked again and again. Under 1,024 connections that was a third
        # of the CPU (bench/RESULTS.md, "Garbage collection"). Cycles are rare on this path.
        thresholds = gc.get_threshold()
        gc.set_threshold(settings.gc_threshold, *thresholds[1:])
        self._log_start(registry)
        yield
        gc.set_threshold(*thresholds)
        await self.stop_grpc()
        await registry.close()
        if health is not None:
            health.stop()

    async def stop_grpc(self) -> None:
        """Close the gRPC listener; calls in progress get the shutdown grace to finish."""
        if self._grpc is not None:
            await self._grpc.stop(self.settings.shutdown_grace_s)

    def _log_start(self, registry: ModelRegistry) -> None:
        """What serves, what does not, and which doors are open (never the keys)."""
        log.info("serving models: %s", ", ".join(registry.ready_models()) or "none")
        for name in registry.not_ready():
            log.error("model %s has no ready version; see /v1/models/%s", name, name)
        settings = self.settings
        log.info(
            "user auth %s; admin API %s; readiness %s",
            "on" if settings.api_keys else "OFF (no BATCHSERVE_API_KEYS)",
            "on" if settings.admin_api_key else "off (no BATCHSERVE_ADMIN_API_KEY)",
            "strict" if settings.strict_readiness else "non-strict",
        )


def create_app(settings: Settings | None = None) -> Application:
    return Application(settings or Settings())
