"""The HTTP transport's one endpoint table and the raw-ASGI front that serves it.

Every API operation is an `Endpoint` in one table: the front matches requests against it here,
and `app.api.openapi` documents the same table, so what is served and what is documented cannot
drift. Paths are matched on the raw (still percent-encoded) path with the mount's root_path
removed: an encoded slash stays inside its segment, as the proxies in front assume. What the
table does not hold (the docs pages, the OpenAPI document) goes on to FastAPI."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.connections import CONNECTION_GONE
from app.api.context import Accounting, Keys, RequestIds, check_bearer, deadline_from
from app.api.http import (
    ErrorFormat,
    Headers,
    HttpResponse,
    HttpStream,
    ascii_uint,
    compress,
    content_coding,
    disconnect_waiter,
    error_body,
    receive_body,
    send_response,
    send_stream,
)
from app.errors import (
    InvalidInput,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    ShuttingDown,
    UnsupportedMediaType,
)
from app.serving.context import RequestContext
from app.serving.dataplane import DataPlane
from app.settings import Settings

log = logging.getLogger("batchserve")

Auth = Literal["none", "user", "admin", "metrics"]


@dataclass(slots=True)
class Call:
    """One HTTP request as a handler sees it."""

    plane: DataPlane
    settings: Settings
    params: dict[str, str]
    ctx: RequestContext
    scope: Scope
    receive: Receive
    headers: Headers

    def header(self, name: bytes) -> str | None:
        return self.headers.get(name)

    async def body(self) -> bytes:
        """The body, decompressed as its Content-Encoding says (the limit applies after)."""
        coding = content_coding(self.header(b"content-encoding"))
        return await receive_body(self.receive, self.settings.max_body_bytes, coding)


Handler = Callable[[Call], Awaitable[HttpResponse | HttpStream]]


@dataclass(frozen=True)
class Endpoint:
    """One operation: how it is matched, guarded and served, and how it is documented."""

    method: Literal["GET", "POST"]
    path: str  # a template: /v1/models/{name}/versions/{version}/predict
    handler: Handler
    summary: str
    tags: tuple[str, ...]
    auth: Auth = "user"
    inference: bool = False  # reads the deadline header and watches for a disconnect
    metric: str = ""  # inference: its requests' `endpoint` label (predict, score, infer)
    served_while_draining: bool = False  # health and metrics answer during shutdown
    invalid_input_status: int = InvalidInput.status  # the Open Inference Protocol answers 400
    error_format: ErrorFormat = error_body  # the protocol's error body from (message, code)
    binary_body: bool = False  # takes application/octet-stream beside JSON
    request_schema: type[BaseModel] | None = None
    request_required: bool = True
    response_schema: Any = None  # a pydantic model, or a type such as list[Model]
    errors: Mapping[int, str] = field(default_factory=dict)  # documented error statuses
    docs: Mapping[str, Any] = field(default_factory=dict)  # OpenAPI extras for this operation
    operation: str = ""  # its name in the OpenAPI operationId; the handler's name by default


# A path segment of a template: a literal, or a parameter with the literal text around it
# ("{name}", or "{name}:predict" as KServe's v1 protocol writes its verbs).
_PARAMETER = re.compile(r"^([^{}]*)\{(\w+)\}([^{}]*)$")


@dataclass(frozen=True, slots=True)
class _Parameter:
    prefix: bytes
    suffix: bytes

    def value(self, segment: bytes) -> bytes | None:
        """The parameter's part of the segment; None when the segment does not fit (the value
        may not be empty)."""
        inner = len(segment) - len(self.prefix) - len(self.suffix)
        if inner <= 0 or not (segment.startswith(self.prefix) and segment.endswith(self.suffix)):
            return None
        return segment[len(self.prefix) : len(self.prefix) + inner]


@dataclass(frozen=True, slots=True)
class _Pattern:
    endpoint: Endpoint
    segments: tuple[bytes | _Parameter, ...]
    names: tuple[str, ...]
    # Fewer parameters, then more literal bytes, rank first: /v2/models/stats before
    # /v2/models/{name}, and /v1/models/{name}:predict before /v1/models/{name}.
    rank: tuple[int, int]


def _pattern(endpoint: Endpoint) -> _Pattern:
    segments: list[bytes | _Parameter] = []
    names: list[str] = []
    literal = 0
    for part in endpoint.path.strip("/").split("/"):
        found = _PARAMETER.match(part)
        if found is None:
            segments.append(part.encode())
            literal += len(part)
            continue
        segments.append(_Parameter(found.group(1).encode(), found.group(3).encode()))
        names.append(found.group(2))
        literal += len(found.group(1)) + len(found.group(3))
    return _Pattern(endpoint, tuple(segments), tuple(names), (len(names), -literal))


class Routes:
    """The table, indexed for matching by segment count, the most specific pattern first."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints
        self._by_length: dict[int, list[_Pattern]] = {}
        for endpoint in endpoints:
            pattern = _pattern(endpoint)
            self._by_length.setdefault(len(pattern.segments), []).append(pattern)
        for patterns in self._by_length.values():
            patterns.sort(key=lambda p: p.rank)

    def match(self, method: str, raw_path: bytes) -> tuple[Endpoint, dict[str, str]] | None:
        """The endpoint and its path parameters; None when no path matches. The path is the
        resource of the most specific templates it fits (/v1/models/x:predict is not model
        "x:predict"); a method they do not have raises MethodNotAllowed. HEAD is served by the
        GET endpoint."""
        method = "GET" if method == "HEAD" else method
        parts = raw_path.strip(b"/").split(b"/")
        allowed: list[str] = []
        rank: tuple[int, int] | None = None
        for pattern in self._by_length.get(len(parts), ()):
            if rank is not None and pattern.rank != rank:
                break  # a less specific template: another resource
            params = _bind(pattern, parts)
            if params is None:
                continue
            rank = pattern.rank
            if pattern.endpoint.method == method:
                return pattern.endpoint, params
            if pattern.endpoint.method not in allowed:
                allowed.append(pattern.endpoint.method)
        if allowed:
            allowed += ["HEAD"] if "GET" in allowed else []
            raise MethodNotAllowed(
                f"{method} is not allowed here; allowed: {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        return None


def _bind(pattern: _Pattern, parts: list[bytes]) -> dict[str, str] | None:
    values: list[str] = []
    for want, got in zip(pattern.segments, parts, strict=True):
        if isinstance(want, bytes):
            if got != want:
                return None
            continue
        value = want.value(got)
        if value is None:
            return None
        values.append(unquote(value.decode("latin-1"), errors="replace"))
    return dict(zip(pattern.names, values, strict=True))


class HttpFront:
    """The ASGI app in front: request id, early refusals, dispatch on the endpoint table, one
    error mapping, and the accounting of every request (FastAPI's included)."""

    def __init__(
        self,
        routes: Routes,
        plane: DataPlane,
        keys: Keys,
        accounting: Accounting,
        fallback: ASGIApp,
        fallback_paths: tuple[bytes, ...],
    ) -> None:
        """`fallback` serves the paths under `fallback_paths` (the docs site)."""
        self.routes = routes
        self.plane = plane
        self.settings = plane.settings
        self.keys = keys
        self.accounting = accounting
        self.fallback = fallback
        self.fallback_paths = fallback_paths
        self.ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)  # lifespan
            return
        started = time.perf_counter()
        headers = Headers(scope["headers"])
        ctx = RequestContext(self.ids.take(headers.get(b"x-request-id")))
        status = 500

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", ctx.request_id.encode()),
                ]
            await send(message)

        try:
            await self._dispatch(scope, headers, receive, send_with_id, ctx)
        finally:
            seconds = time.perf_counter() - started
            self.accounting.record(ctx, scope["method"], scope["path"], status, seconds, "http")

    async def _dispatch(
        self, scope: Scope, headers: Headers, receive: Receive, send: Send, ctx: RequestContext
    ) -> None:
        endpoint: Endpoint | None = None
        response: HttpResponse | HttpStream
        try:
            self._refuse_early(headers)
            path = _route_path(scope)
            found = self.routes.match(scope["method"], path)
            if found is not None:
                endpoint = found[0]
            if self.plane.lifecycle.draining and not (endpoint and endpoint.served_while_draining):
                raise ShuttingDown("the server is shutting down", headers={"Connection": "close"})
            if found is None:
                if not path.startswith(self.fallback_paths):
                    raise NotFound("Not Found")
                await self.fallback(scope, receive, send)
                return
            response = await self._serve(found[0], found[1], scope, headers, receive, ctx)
        except ServiceError as exc:
            ctx.error = exc.code
            status = exc.status
            shape: ErrorFormat = error_body
            if endpoint is not None:
                shape = endpoint.error_format
                if isinstance(exc, InvalidInput):
                    status = endpoint.invalid_input_status
            response = HttpResponse(shape(exc.message, exc.code), status, headers=exc.headers)
        except Exception as exc:  # a bug; the answer must still be JSON
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            ctx.error = "internal"
            body = error_body(f"internal error: {type(exc).__name__}", "internal")
            response = HttpResponse(body, 500)
        if isinstance(response, HttpStream):
            await send_stream(send, response, [])
        else:
            response = compress(response, headers.get(b"accept-encoding"))
            await send_response(send, response, [], with_body=scope["method"] != "HEAD")

    def _refuse_early(self, headers: Headers) -> None:
        """Before any routing: a declared body over the limit (413)."""
        declared = headers.get(b"content-length")
        if declared is None:
            return
        length, limit = ascii_uint(declared), self.settings.max_body_bytes
        if length is None:
            raise MalformedRequest(
                "Content-Length: expected a number of bytes in ASCII digits",
                headers={"Connection": "close"},
            )
        if length > limit:
            raise PayloadTooLarge(
                f"body: the request body exceeds the limit of {limit} bytes",
                headers={"Connection": "close"},
            )

    async def _serve(
        self,
        endpoint: Endpoint,
        params: dict[str, str],
        scope: Scope,
        headers: Headers,
        receive: Receive,
        ctx: RequestContext,
    ) -> HttpResponse | HttpStream:
        if endpoint.method == "POST":
            _check_content_type(headers.get(b"content-type"), endpoint.binary_body)
            content_coding(headers.get(b"content-encoding"))  # 415 before auth
        authorization = headers.get(b"authorization")
        if endpoint.auth == "user" or (
            endpoint.auth == "metrics" and self.settings.protect_metrics
        ):
            check_bearer(authorization, self.keys.user)
        elif endpoint.auth == "admin":
            check_bearer(authorization, self.keys.admin)
        if endpoint.inference:
            ctx.endpoint = endpoint.metric  # counted even if the model turns out unknown
            ctx.deadline = deadline_from(headers.get(b"x-request-timeout-ms"))
            # batchserve's own connections can be asked whether the client left; under another
            # ASGI server a task has to wait for http.disconnect instead.
            gone = scope.get("extensions", {}).get(CONNECTION_GONE, {}).get("gone")
            if gone is not None:
                ctx.client_gone = gone
            else:
                ctx.disconnected = disconnect_waiter(receive)
        call = Call(self.plane, self.settings, params, ctx, scope, receive, headers)
        return await endpoint.handler(call)


def _check_content_type(declared: str | None, binary: bool) -> None:
    """A body declared as something else than JSON is refused (415); an undeclared one is read
    as JSON, as curl and many clients send it."""
    if declared is None:
        return
    media_type = declared.partition(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return
    if binary and media_type == "application/octet-stream":
        return
    accepted = "application/json" + (" or application/octet-stream" if binary else "")
    raise UnsupportedMediaType(f"Content-Type: {media_type or declared!r}; send {accepted}")


def _route_path(scope: Scope) -> bytes:
    """The raw request path below the mount point (uvicorn's --root-path)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    root = scope.get("root_path", "").encode()
    if root and raw.startswith(root):
        raw = raw[len(root) :]
    return raw.split(b"?", 1)[0] or b"/"
