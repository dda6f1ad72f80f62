"""How batchserve's FastAPI path operations are served: one `APIRoute` class per protocol (its
error shape and the status of invalid input), bodies validated by Pydantic from their bytes,
bearer keys as security dependencies, the inference context, and the exception handlers that
turn domain errors and validation errors into batchserve's `{"error", "code"}` answers."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.connections import CONNECTION_GONE
from app.api.context import DEADLINE_HEADER, check_bearer, deadline_from
from app.api.http import JsonBytes, content_coding, error_body, refuse_too_many_values
from app.errors import (
    ClientDisconnected,
    InvalidInput,
    MalformedRequest,
    ServiceError,
    ShuttingDown,
    UnsupportedMediaType,
)
from app.serving.context import RequestContext
from app.serving.dataplane import DataPlane
from app.serving.servables import json_type_name

log = logging.getLogger("batchserve")

CONTEXT = "batchserve.context"  # the ASGI scope key of the request's RequestContext
ErrorFormat = Callable[[str, str], bytes]
T = TypeVar("T")
# Bodies at least this large are validated in a worker thread: the event loop then gets the GIL
# back every switch interval (5 ms) instead of waiting out a parse of 100 ms or more.
OFF_LOOP_BYTES = 256 * 1024
# Names of the union members in an error's location (see app.api.v1.schemas.Item): not fields.
UNION_TAGS = frozenset({"text", "numbers", "rows"})
SHOWN_NAME = 40  # characters of an unknown field's name that an error message repeats
EXPECTED = {
    "string_type": "a string",
    "float_type": "a number",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
}


class ServiceRoute(APIRoute):
    """A batchserve path operation. Before FastAPI solves its parameters: refuse while the
    server drains (unless the operation is a probe or the metrics), and refuse a body that is
    declared as something else than JSON (415) or in an unknown coding (415)."""

    error_format: ErrorFormat = staticmethod(error_body)
    invalid_input_status = InvalidInput.status

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        self.direct = False
        super().__init__(path, endpoint, **kwargs)
        if self.direct and kwargs.get("max_body_size") is None:
            self.app = self._direct_app(self.get_route_handler())

    def _direct_app(self, handler: Callable[[Request], Coroutine[Any, Any, Response]]) -> ASGIApp:
        """The route's ASGI app for an operation `_direct_handler` serves: the Request, the
        handler, its Response, without FastAPI's request_response wrapper (two AsyncExitStacks
        for dependencies with yield, which these operations have none of, and a second
        exception-handling pass). An exception goes up to the app's ExceptionMiddleware, which
        maps it with the same handlers."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await handler(Request(scope, receive, send))
            await response(scope, receive, send)

        return app

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        direct = self._direct_handler()
        self.direct = direct is not None
        handler = direct or super().get_route_handler()
        takes_body = "POST" in (self.methods or ())
        binary = bool(getattr(self.endpoint, "binary_body", False))
        while_draining = bool(getattr(self.endpoint, "served_while_draining", False))

        async def serve(request: Request) -> Response:
            plane: DataPlane = request.app.state.plane
            if plane.lifecycle.draining and not while_draining:
                raise ShuttingDown("the server is shutting down", headers={"Connection": "close"})
            if takes_body:
                declared = coding = None
                for name, value in request.scope["headers"]:
                    if name == b"content-type":
                        declared = value.decode("latin-1")
                    elif name == b"content-encoding":
                        coding = value.decode("latin-1")
                _check_content_type(declared, binary)
                content_coding(coding)
            return await handler(request)

        return serve

    def _direct_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
        """The operation called with its parameters read straight from the request, for the
        parameters batchserve's hot paths have: the Request, path parameters (strings), header
        parameters (strings, with a pattern), and bearer-key dependencies. FastAPI's own
        handler (solve_dependencies and its exit stacks) measured tens of microseconds more per
        request in-process, on a predict of ~300 us; any other operation gets FastAPI's. What is
        declared (and so documented) and what is checked stay the same parameters."""
        dependant = self.dependant
        if (
            dependant.body_params
            or dependant.query_params
            or dependant.cookie_params
            or dependant.background_tasks_param_name
            or dependant.response_param_name
            or dependant.websocket_param_name
            or dependant.security_scopes_param_name
        ):
            return None
        guards: list[tuple[bytes, ...]] = []
        for dependency in dependant.dependencies:
            keys = getattr(dependency.call, "bearer_keys", None)
            if keys is None:
                return None
            guards.append(keys)
        paths = [(p.name, p.alias) for p in dependant.path_params]
        headers: list[tuple[str, bytes, re.Pattern[str] | None]] = []
        for param in dependant.header_params:
            if param.field_info.annotation not in (str, str | None):
                return None
            pattern = None
            for meta in param.field_info.metadata:
                if getattr(meta, "pattern", None):
                    pattern = re.compile(meta.pattern)
            headers.append((param.name, param.alias.lower().encode("latin-1"), pattern))
        if any(p.field_info.annotation is not str for p in dependant.path_params):
            return None
        request_name = dependant.request_param_name
        call = dependant.call
        assert call is not None

        async def direct(request: Request) -> Response:
            values: dict[str, Any] = {}
            if request_name:
                values[request_name] = request
            if paths:
                found = request.scope["path_params"]
                for name, alias in paths:
                    values[name] = found[alias]
            if headers or guards:
                raw = request.scope["headers"]
                for name, key, pattern in headers:
                    text = _header(raw, key)
                    if text is not None and pattern is not None and not pattern.search(text):
                        raise RequestValidationError(
                            [{"type": "string_pattern_mismatch", "loc": ("header", key.decode()),
                              "msg": "String does not match the pattern", "input": text}]
                        )  # fmt: skip
                    values[name] = text
                for keys in guards:
                    check_bearer(_header(raw, b"authorization"), keys)
            response: Response = await call(**values)
            return response

        return direct


def _header(raw: list[tuple[bytes, bytes]], key: bytes) -> str | None:
    for name, value in raw:
        if name == key:
            return value.decode("latin-1")
    return None


class OpenProtocolRoute(ServiceRoute):
    """KServe's V1 and the Open Inference Protocol answer invalid input with 400."""

    invalid_input_status = 400


def served_while_draining(endpoint: T) -> T:
    """Mark a path operation (health, metrics) that answers during shutdown."""
    endpoint.served_while_draining = True  # type: ignore[attr-defined]
    return endpoint


def binary_body(endpoint: T) -> T:
    """Mark a path operation that takes application/octet-stream beside JSON."""
    endpoint.binary_body = True  # type: ignore[attr-defined]
    return endpoint


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


# -- the request's context ----------------------------------------------------------------------


def context(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope[CONTEXT]
    return ctx


def inference(request: Request, endpoint: str, timeout_ms: str | None) -> RequestContext:
    """The context of an inference request: counted under `endpoint` (even if the model turns
    out unknown), with its deadline, and a way to learn that the client left."""
    ctx = context(request)
    ctx.endpoint = endpoint
    ctx.deadline = deadline_from(timeout_ms)
    # batchserve's own connections can be asked whether the client left; under another ASGI
    # server a task has to wait for http.disconnect instead.
    scope = request.scope
    gone = scope.get("extensions", {}).get(CONNECTION_GONE, {}).get("gone")
    if gone is not None:
        ctx.client_gone = gone
    else:
        receive = request.receive

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        ctx.disconnected = disconnected
    return ctx


DEADLINE_DESCRIPTION = (
    "A deadline in milliseconds (ASCII decimals, below one day): work that has not started by "
    "then is answered 504 instead."
)
DEADLINE_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,9})?$"
# What a header's text must look like, said in the error when it does not.
HEADER_FORMATS = {
    DEADLINE_HEADER.lower(): (
        DEADLINE_HEADER,
        "expected a positive number of milliseconds below one day, in ASCII digits (e.g. 250 "
        "or 12.5)",
    ),
    "inference-header-content-length": (
        "Inference-Header-Content-Length",
        "expected the JSON header's length in bytes, in ASCII digits",
    ),
}


# -- bodies ---------------------------------------------------------------------------------------


async def json_body(
    request: Request,
    adapter: TypeAdapter[T],
    max_values: int | None = None,
    shapes: Mapping[str, str] | None = None,
    raw: bytes | None = None,
) -> T:
    """The body (or `raw`), validated by `adapter` from its bytes; a body with more than
    `max_values` JSON values is refused before it is parsed. `shapes` words the problem of a
    field of several accepted shapes once instead of once per shape."""
    if raw is None:
        raw = await request.body()
    return await validate_json(raw, adapter, max_values, shapes)


async def validate_json(
    raw: bytes,
    adapter: TypeAdapter[T],
    max_values: int | None = None,
    shapes: Mapping[str, str] | None = None,
    first: TypeAdapter[T] | None = None,
) -> T:
    """`raw` validated by `adapter`. `first`, when given, is a faster adapter that accepts the
    same bodies into the same values: it is tried first, and `adapter` validates (and words
    the errors of) only a body that it refuses."""
    if max_values is not None:
        refuse_too_many_values(raw, max_values)
    if not raw.strip():
        raise MalformedRequest("body: empty; expected a JSON object")
    validate = adapter.validate_json if first is None else _first_then(first, adapter)
    try:
        if len(raw) >= OFF_LOOP_BYTES:
            return await anyio.to_thread.run_sync(validate, raw)
        return validate(raw)
    except ValidationError as exc:
        raise invalid_body(exc, shapes) from None


def _first_then(first: TypeAdapter[T], adapter: TypeAdapter[T]) -> Callable[[bytes], T]:
    def validate(raw: bytes) -> T:
        try:
            return first.validate_json(raw)
        except ValidationError:
            return adapter.validate_json(raw)

    return validate


def invalid_body(exc: ValidationError, shapes: Mapping[str, str] | None = None) -> ServiceError:
    errors = exc.errors(include_url=False)
    for error in errors:
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            return MalformedRequest(f"body: malformed JSON: {reason}")
    return InvalidInput(describe(errors, shapes or {}))


# pydantic's error types for a value of the right type past a bound.
BOUND_ERRORS = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "finite_number",
        "too_long",
        "too_short",
        "string_too_long",
        "string_too_short",
    }
)


def describe(errors: list[Any], shapes: Mapping[str, str], most: int = 3) -> str:
    """The first problem of each of the first `most` fields, each named by its path. A value past
    a bound says the bound, before the shapes (of a field of several) it did not match."""
    problems: dict[str, str] = {}
    shaped: set[str] = set()
    for error in sorted(errors, key=lambda e: e["type"] not in BOUND_ERRORS):
        path = field_path(error["loc"])
        top = path.partition(".")[0].partition("[")[0]
        if top in shapes and error["type"] != "missing":
            if top in shaped:
                continue
            shaped.add(top)
            if error["type"] in BOUND_ERRORS:
                problems[top] = _problem(error)
            else:
                problems[top] = shapes[top]
        elif path not in problems:
            problems[path] = _problem(error)
        if len(problems) == most:
            break
    return "; ".join(f"{path}: {problem}" for path, problem in problems.items())


def field_path(loc: tuple[Any, ...], skip: int = 0) -> str:
    """('pairs', 0, 'context') as pairs[0].context; () as body."""
    path = ""
    for part in loc[skip:]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in UNION_TAGS:
            name = _shown(str(part))
            path += f".{name}" if path else name
    return path or "body"


def _shown(name: str) -> str:
    return name if len(name) <= SHOWN_NAME else name[:SHOWN_NAME] + "..."


def _problem(error: Any) -> str:
    kind: str = error["type"]
    ctx = error.get("ctx", {})
    found = json_type_name(type(error.get("input")))
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown field; see the schema for the fields this body takes"
    if kind == "too_long" and "actual_length" in ctx:
        return f"{ctx['actual_length']} items; the limit is {ctx['max_length']} per request"
    if kind == "too_short" and ctx.get("actual_length") == 0:
        return "the array is empty; send at least one item"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "the string is empty; at least 1 character"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind in EXPECTED:
        return f"expected {EXPECTED[kind]}, found {found}"
    message = str(error["msg"])
    message = message[:1].lower() + message[1:]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{message}; found {found}"
    return message


# -- keys -----------------------------------------------------------------------------------------


def bearer_key(keys: tuple[bytes, ...], scheme_name: str, description: str) -> Any:
    """A dependency that admits a request with one of `keys` as its bearer token (compared in
    constant time, never echoed); documented as the security scheme `scheme_name`."""
    scheme = HTTPBearer(auto_error=False, scheme_name=scheme_name, description=description)

    # The scheme as a default value: annotations are strings here, and `scheme` is local.
    async def require_key(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(scheme),  # noqa: B008
    ) -> None:
        check_bearer(request.headers.get("authorization"), keys)

    require_key.bearer_keys = keys  # type: ignore[attr-defined]  # ServiceRoute calls it directly
    return Depends(require_key)


# -- exception handlers ---------------------------------------------------------------------------


def _route_format(request: Request) -> tuple[ErrorFormat, int]:
    route = request.scope.get("route")
    if isinstance(route, ServiceRoute):
        return route.error_format, route.invalid_input_status
    return error_body, InvalidInput.status


def _answer(request: Request, exc: ServiceError) -> Response:
    shape, invalid_status = _route_format(request)
    status = invalid_status if isinstance(exc, InvalidInput) else exc.status
    ctx = request.scope.get(CONTEXT)
    if ctx is not None:
        ctx.error = exc.code
    return JsonBytes(shape(exc.message, exc.code), status, dict(exc.headers) or None)


async def service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return _answer(request, exc)


async def parameter_error(request: Request, exc: Exception) -> Response:
    """A path, query or header parameter that does not fit its declared type (400)."""
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors()[:3]:
        loc = error["loc"]
        where = loc[0] if loc else ""
        name = str(loc[1]) if len(loc) > 1 else "request"
        if where == "header" and name.lower() in HEADER_FORMATS:
            header, text = HEADER_FORMATS[name.lower()]
            problems.append(f"{header}: {text}")
        elif where == "body":
            problems.append(f"{field_path(loc, 1)}: {_problem(error)}")
        else:
            problems.append(f"{name}: {_problem(error)}")
    return _answer(request, MalformedRequest("; ".join(problems)))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    detail = str(exc.detail)
    if exc.status_code == 405 and exc.headers:
        detail = f"{request.method} is not allowed here; allowed: {exc.headers.get('Allow')}"
    ctx = request.scope.get(CONTEXT)
    if ctx is not None:
        ctx.error = code
    return JsonBytes(error_body(detail, code), exc.status_code, exc.headers)


async def client_disconnect(request: Request, exc: Exception) -> Response:
    return _answer(request, ClientDisconnected("the client disconnected while sending its body"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, parameter_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_disconnect)
