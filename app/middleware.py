"""One pure-ASGI layer around every request: request id, early 413 and shutdown 503, the access
log line and the request metrics. Pure ASGI because it sits on the hot path."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body
from app.http import header, send_json
from app.metrics import Metrics
from app.service import Lifecycle

access_log = logging.getLogger("batchserve.access")


class ServiceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        log_access: bool,
        lifecycle: Lifecycle,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.log_access = log_access
        self.lifecycle = lifecycle
        # Generated request ids: a random per-process prefix and a counter (uuid4 costs a syscall).
        self._id_prefix = uuid.uuid4().hex[:12] + "-"
        self._ids = itertools.count(1)
        self._series: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = header(scope, b"x-request-id") or f"{self._id_prefix}{next(self._ids):x}"
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            status_code, message, code, headers = refusal
            state["error"] = code
            await send_json(send_with_id, status_code, error_body(message, code), headers)
        else:
            await self.app(scope, receive, send_with_id)
        self._record(scope, state, status, time.perf_counter() - started)

    def _refusal(self, scope: Scope) -> tuple[int, str, str, dict[str, str]] | None:
        path = scope["path"]
        if self.lifecycle.draining and not path.startswith(("/v2/health", "/metrics")):
            return 503, "the server is shutting down", "shutting_down", {"Connection": "close"}
        length = header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return (
                413,
                f"body: the request body exceeds the limit of {self.max_body_bytes} bytes",
                "payload_too_large",
                {"Connection": "close"},
            )
        return None

    def _record(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        model = state.get("model", "")
        endpoint = state.get("endpoint") or scope["path"]
        if model:
            key = (model, state.get("version", ""), endpoint, status)
            series = self._series.get(key)
            if series is None:  # labels() takes a lock and builds a tuple; cache the children
                series = self._series[key] = (
                    self.metrics.requests.labels(*key[:3], str(status)),
                    self.metrics.request_seconds.labels(model, endpoint),
                )
            series[0].inc()
            series[1].observe(seconds)
        if status >= 400 and "error" in state:
            # The error's code (queue_full, deadline_exceeded, unauthorized, invalid_input, ...).
            self.metrics.rejected.labels(state["error"]).inc()
        if self.log_access:
            line = {
                "event": "access",
                "request_id": state["request_id"],
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                **{k: v for k, v in state.items() if k in _LOGGED},
            }
            access_log.info(orjson.dumps(line).decode())


_LOGGED = ("model", "version", "items", "batch_size", "queue_ms", "compute_ms", "error")
