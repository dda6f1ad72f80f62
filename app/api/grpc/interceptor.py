"""What gRPC does around every call of the inference service, as `app.api.router` does around an
HTTP request and with the same functions (`app.api.context`): refuse while starting or draining,
check the bearer key from the `authorization` metadata, take the deadline and the request id,
map typed errors to gRPC status codes in one place, and record the call in the metrics and the
access log. The servicer reads the call's RequestContext from `REQUEST`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from app.api.context import Accounting, Keys, RequestIds, check_bearer, deadline_from
from app.errors import (
    ItemFailed,
    MalformedRequest,
    ModelNotReady,
    QueueFull,
    ResultNotFinite,
    ServiceError,
    ShuttingDown,
)
from app.serving.context import RequestContext
from app.serving.dataplane import DataPlane

log = logging.getLogger("batchserve")

SERVICE = "inference.GRPCInferenceService"
REQUEST: ContextVar[RequestContext] = ContextVar("batchserve_grpc_request")

Code = grpc.StatusCode
# By HTTP status, as Triton and KServe map their errors; the exceptions below by type.
_CODES: Mapping[int, Any] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    404: Code.NOT_FOUND,
    413: Code.RESOURCE_EXHAUSTED,
    415: Code.INVALID_ARGUMENT,
    422: Code.INVALID_ARGUMENT,
    499: Code.CANCELLED,
    501: Code.UNIMPLEMENTED,
    503: Code.UNAVAILABLE,  # not ready, shutting down: another replica may serve it
    504: Code.DEADLINE_EXCEEDED,
}
_BY_TYPE: Mapping[type[ServiceError], Any] = {
    # KServe's client retries UNAVAILABLE at once; a full queue asks it to back off instead.
    QueueFull: Code.RESOURCE_EXHAUSTED,
    # The model, not the input, failed.
    ItemFailed: Code.INTERNAL,
    ResultNotFinite: Code.INTERNAL,
}


def status_code(error: ServiceError) -> Any:
    return _BY_TYPE.get(type(error)) or _CODES.get(error.status, Code.INTERNAL)


@dataclass(frozen=True)
class Rpc:
    """How one RPC is guarded, as an HTTP Endpoint is."""

    auth: Literal["none", "user", "admin"] = "user"
    metric: str = ""  # an inference RPC: its `endpoint` label; it takes the deadline
    served_while_starting: bool = False
    served_while_draining: bool = False


_HEALTH = Rpc("none", served_while_starting=True, served_while_draining=True)
RPCS: Mapping[str, Rpc] = {
    "ServerLive": _HEALTH,
    "ServerReady": _HEALTH,
    "ModelInfer": Rpc(metric="infer"),
    "RepositoryIndex": Rpc("admin"),
    "RepositoryModelLoad": Rpc("admin"),
    "RepositoryModelUnload": Rpc("admin"),
}
Unary = Callable[[Any, Any], Awaitable[Any]]


class Guard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type stubs
    def __init__(self, plane: DataPlane, keys: Keys, accounting: Accounting) -> None:
        self.plane = plane
        self.keys = keys
        self.accounting = accounting
        self.ids = RequestIds()

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, name = details.method.lstrip("/").partition("/")
        deserialize = _tolerant(handler.request_deserializer)
        if service != SERVICE:  # health: only an undecodable request is answered here
            return self._health(handler, details.method, deserialize)
        if handler.unary_unary is None:
            return handler  # the streaming RPC (answered UNIMPLEMENTED)
        rpc = RPCS.get(name, Rpc())
        metadata = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        inner: Unary = handler.unary_unary

        async def guarded(request: Any, context: Any) -> Any:
            return await self._serve(inner, request, context, details.method, rpc, metadata)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )

    def _health(self, handler: Any, method: str, deserialize: Callable[[bytes], Any]) -> Any:
        """The handler as it is, except that a request that does not decode is answered
        INVALID_ARGUMENT (with its access-log line and metric) instead of UNKNOWN."""
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            unary: Unary = handler.unary_unary

            async def checked(request: Any, context: Any) -> Any:
                if isinstance(request, Undecodable):
                    await self._refuse(request, context, method)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                checked, request_deserializer=deserialize, response_serializer=serialize
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def watched(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, Undecodable):
                    await self._refuse(request, context, method)
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                watched, request_deserializer=deserialize, response_serializer=serialize
            )
        return handler

    async def _refuse(self, request: Undecodable, context: Any, method: str) -> None:
        ctx = RequestContext(self.ids.take(None))
        error = request.error()
        ctx.error = error.code
        self.accounting.record(ctx, "POST", method, error.status, 0.0, "grpc")
        await context.abort(status_code(error), error.message)

    async def _serve(
        self,
        inner: Unary,
        request: Any,
        context: Any,
        method: str,
        rpc: Rpc,
        metadata: dict[str, str],
    ) -> Any:
        started = time.perf_counter()
        supplied = metadata.get("x-request-id") or getattr(request, "id", "") or None
        ctx = RequestContext(self.ids.take(supplied))
        trailer = (("x-request-id", ctx.request_id),)
        context.set_trailing_metadata(trailer)
        status = 200
        token = REQUEST.set(ctx)
        try:
            self._admit(rpc, metadata, context, ctx)
            if isinstance(request, Undecodable):
                raise request.error()
            return await inner(request, context)
        except ServiceError as exc:
            ctx.error, status = exc.code, exc.status
            await context.abort(status_code(exc), exc.message, trailing_metadata=trailer)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            passed = ctx.deadline is not None and time.monotonic() >= ctx.deadline
            ctx.error, status = ("deadline_exceeded", 504) if passed else ("cancelled", 499)
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.exception("unhandled error in %s", method)
            ctx.error, status = "internal", 500
            message = f"internal error: {type(exc).__name__}"
            await context.abort(Code.INTERNAL, message, trailing_metadata=trailer)
        finally:
            REQUEST.reset(token)
            seconds = time.perf_counter() - started
            self.accounting.record(ctx, "POST", method, status, seconds, "grpc")

    def _admit(self, rpc: Rpc, metadata: dict[str, str], context: Any, ctx: RequestContext) -> None:
        lifecycle = self.plane.lifecycle
        if lifecycle.draining and not rpc.served_while_draining:
            raise ShuttingDown("the server is shutting down")
        if lifecycle.starting and not rpc.served_while_starting:
            raise ModelNotReady("the server is starting: its models are loading")
        if rpc.auth == "user":
            check_bearer(metadata.get("authorization"), self.keys.user)
        elif rpc.auth == "admin":
            check_bearer(metadata.get("authorization"), self.keys.admin)
        if rpc.metric:
            ctx.endpoint = rpc.metric
            ctx.deadline = _deadline(context, metadata)


class Undecodable:
    """A request message that did not decode (grpc would answer UNKNOWN, with a traceback):
    the call goes on to be refused INVALID_ARGUMENT, logged and counted like any bad input."""

    __slots__ = ("problem", "type_name")

    def __init__(self, type_name: str, problem: Exception) -> None:
        self.type_name, self.problem = type_name, problem

    def error(self) -> MalformedRequest:
        return MalformedRequest(
            f"request: not a valid {self.type_name} message ({type(self.problem).__name__}: "
            f"{str(self.problem)[:200]})"
        )


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """`deserialize`, answering an Undecodable instead of raising."""
    if deserialize is None:
        return lambda raw: raw
    owner = getattr(deserialize, "__self__", None)  # Message.FromString: bound to its class
    type_name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def tolerant(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or anything a parser raises
            return Undecodable(type_name, exc)

    return tolerant


def _deadline(context: Any, metadata: dict[str, str]) -> float | None:
    """The call's gRPC deadline, or X-Request-Timeout-Ms sent as metadata, whichever is first."""
    deadlines = []
    remaining_s = context.time_remaining()
    if remaining_s is not None:
        deadlines.append(time.monotonic() + remaining_s)
    header = deadline_from(metadata.get("x-request-timeout-ms"))
    if header is not None:
        deadlines.append(header)
    return min(deadlines, default=None)
