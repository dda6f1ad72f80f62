"""What every transport does around a request, as plain functions: check the bearer key, read the
deadline, pick the request id, and record the finished request in the metrics and the access
log. HTTP calls them from `app.api.routing` and `app.api.middleware`; gRPC from
`app.api.grpc.interceptor`."""

from __future__ import annotations

import hmac
import itertools
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import MalformedRequest, ModelNotFound, Unauthorized
from app.metrics import Metrics
from app.serving.context import RequestContext
from app.settings import ASCII_WHITESPACE, Settings

access_log = logging.getLogger("batchserve.access")

DEADLINE_HEADER = "X-Request-Timeout-Ms"
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_MILLISECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?", re.ASCII)
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="batchserve"'}


@dataclass(frozen=True)
class Keys:
    """Bearer keys: `user` for inference and metadata (none = open), `admin` for the repository
    control endpoints (none = those endpoints do not exist)."""

    user: tuple[bytes, ...]
    admin: tuple[bytes, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        admin = settings.admin_api_key
        return cls(
            user=tuple(k.get_secret_value().encode() for k in settings.api_keys),
            admin=(admin.get_secret_value().encode(),) if admin else (),
        )


def check_bearer(authorization: str | None, keys: tuple[bytes, ...]) -> None:
    """Bearer auth; keys are compared in constant time and never echoed. No keys: open."""
    if not keys:
        return
    authorization = authorization or ""
    scheme, _, token = authorization.partition(" ")
    supplied = token.strip(ASCII_WHITESPACE).encode()
    if scheme.lower() == "bearer" and supplied:
        # Compare against every key so the time taken does not reveal which one matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(supplied, key)
        if matched:
            return
    problem = "missing" if not authorization else "wrong"
    raise Unauthorized(
        f"Authorization: {problem} API key; send 'Authorization: Bearer <key>'",
        headers=_WWW_AUTHENTICATE,
    )


def deadline_from(timeout_ms: str | None) -> float | None:
    """The time.monotonic() deadline that a client's X-Request-Timeout-Ms sets; None when it
    sets none. ASCII decimals only: float() would also take '1e3', 'infinity', '1_000' and
    other scripts' digits."""
    if timeout_ms is None:
        return None
    milliseconds = float(timeout_ms) if _MILLISECONDS.fullmatch(timeout_ms) else 0.0
    if not 0 < milliseconds < 86_400_000:
        raise MalformedRequest(
            f"{DEADLINE_HEADER}: expected a positive number of milliseconds below one day, "
            "in ASCII digits (e.g. 250 or 12.5)"
        )
    return time.monotonic() + milliseconds / 1000


class RequestIds:
    """The client's request id, or a generated one: a random per-process prefix and a counter
    (uuid4 per request costs a syscall)."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12] + "-"
        self._counter = itertools.count(1)

    def take(self, supplied: str | None) -> str:
        """The client's id when it is usable (1 to 128 visible ASCII characters: it is echoed
        in a header and written to the log), else a new one."""
        if supplied is not None and _REQUEST_ID.fullmatch(supplied):
            return supplied
        return f"{self._prefix}{next(self._counter):x}"


class Accounting:
    """Records each finished request: the request metrics and one JSON access-log line."""

    def __init__(self, metrics: Metrics, log_access: bool) -> None:
        self.metrics = metrics
        self.log_access = log_access
        self._series: dict[tuple[str, str, str, int, str], tuple[Any, Any]] = {}

    def record(
        self,
        ctx: RequestContext,
        method: str,
        target: str,
        status: int,
        seconds: float,
        protocol: str,
    ) -> None:
        """`status` is HTTP's, or for gRPC the HTTP status of the same outcome, so that one
        query counts errors across protocols; `protocol` is http or grpc."""
        if ctx.model:
            self._count(ctx.model, ctx.version, ctx.endpoint, status, protocol, seconds)
        elif ctx.endpoint and ctx.error == ModelNotFound.code:
            # An unknown model's name is the client's to choose: it must not become a label.
            self._count("", "", ctx.endpoint, status, protocol, seconds)
        if status >= 400 and ctx.error:
            # The error's code (queue_full, deadline_exceeded, unauthorized, invalid_input, ...).
            self.metrics.rejected.labels(ctx.error).inc()
        if self.log_access:
            access_log.info(_access_line(ctx, method, target, status, seconds, protocol))

    def _count(
        self, model: str, version: str, endpoint: str, status: int, protocol: str, seconds: float
    ) -> None:
        key = (model, version, endpoint, status, protocol)
        series = self._series.get(key)
        if series is None:  # labels() takes a lock and builds a tuple; cache the children
            series = self._series[key] = (
                self.metrics.requests.labels(model, version, endpoint, str(status), protocol),
                self.metrics.request_seconds.labels(model, endpoint),
            )
        series[0].inc()
        series[1].observe(seconds)


def _access_line(
    ctx: RequestContext, method: str, target: str, status: int, seconds: float, protocol: str
) -> str:
    line: dict[str, Any] = {
        "event": "access",
        "request_id": ctx.request_id,
        "protocol": protocol,
        "method": method,
        "path": target,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
    }
    if ctx.model:
        line.update(model=ctx.model, version=ctx.version)
    if ctx.items:
        line.update(
            items=ctx.items,
            batch_size=ctx.batch_size,
            queue_ms=ctx.queue_ms,
            compute_ms=ctx.compute_ms,
        )
    if ctx.error:
        line["error"] = ctx.error
    return orjson.dumps(line).decode()
