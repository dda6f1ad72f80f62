"""Running the application under uvicorn: the connection limits, the event loop and parser, and
a graceful SIGTERM. The command line and the tests' live servers both start it from here."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn

from app.api.connections import ConnectionLimits, limited_protocol
from app.main import Application
from app.serving.dataplane import Lifecycle
from app.settings import Settings

log = logging.getLogger("batchserve")


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections,
        retry_after_s=settings.retry_after_s,
    )


def uvicorn_config(app: Application, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for `app`; `options` (host, port, log_level, ...) are uvicorn's own."""
    settings = app.settings
    rejected = app.metrics.rejected
    protocol = limited_protocol(
        connection_limits(settings), lambda code: rejected.labels(code).inc()
    )
    return uvicorn.Config(
        app,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        timeout_keep_alive=int(settings.keep_alive_timeout_s),
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=protocol,
        **options,
    )


def serve(settings: Settings, model_name: str | None = None) -> int:
    """Serve on settings.host:settings.port until SIGTERM (then drain and exit 0) or Ctrl+C;
    `model_name` is the name KServe gives the server, logged for the operator. With
    settings.workers > 1, a supervisor process runs that many servers (app.workers)."""
    from app.logs import configure_logging
    from app.main import create_app

    configure_logging(settings.log_level, with_pid=settings.workers > 1)
    if model_name:
        log.info(
            "KServe model name %s (served: every model in %s)",
            model_name,
            settings.model_repository,
        )
    if settings.workers > 1:
        from app.workers import supervise

        return supervise(settings)
    app = create_app(settings)
    host, port = settings.host, settings.port
    config = uvicorn_config(app, host=host, port=port, log_config=None)
    log.info("listening on http://%s:%d", host, port)
    GracefulServer(config, app.lifecycle, settings.shutdown_drain_s, app.stop_grpc).run()
    return 0


class GracefulServer(uvicorn.Server):
    """uvicorn already stops accepting on SIGTERM and waits for the accepted requests. This adds:
    readiness turns false and new requests get 503 at once (gRPC: UNAVAILABLE), for `drain_s`
    before the listeners close; the gRPC listener (`stop_also`) closes and drains together with
    the HTTP one, each within the grace; and the process exits 0 rather than dying by the signal
    uvicorn re-raises."""

    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        drain_s: float,
        stop_also: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_s = drain_s
        self.stop_also = stop_also
        self.exit_at: float | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = asyncio.ensure_future(self.stop_also()) if self.stop_also else None
        try:
            await super().shutdown(sockets)
        finally:
            if stopping is not None:
                await stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.draining = True
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)  # Ctrl+C keeps uvicorn's behaviour (twice forces)
        elif self.exit_at is None:
            # Not passed on: uvicorn would record it and re-raise it after a clean shutdown, and
            # an orchestrator would read exit status 143 as a crash.
            self.exit_at = time.monotonic() + self.drain_s

    async def on_tick(self, counter: int) -> bool:
        # Runs every 0.1 s in uvicorn's main loop: the place to end the drain without a task.
        if self.exit_at is not None and time.monotonic() >= self.exit_at:
            self.should_exit = True
        return await super().on_tick(counter)
