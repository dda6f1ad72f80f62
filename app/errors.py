"""Typed domain errors, each carrying its HTTP status; `install_error_handlers` is the one place
that turns them (and framework errors) into `{"error": ..., "code": ...}` responses."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("batchserve")


class ServiceError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ServiceError):
    status = 422
    code = "invalid_input"


class MalformedRequest(ServiceError):
    status = 400
    code = "malformed_request"


class WrongEndpoint(ServiceError):
    status = 400
    code = "wrong_endpoint"


class ModelNotFound(ServiceError):
    status = 404
    code = "model_not_found"


class ModelNotReady(ServiceError):
    status = 503
    code = "model_not_ready"


class QueueFull(ServiceError):
    status = 503
    code = "queue_full"


class ShuttingDown(ServiceError):
    status = 503
    code = "shutting_down"


class DeadlineExceeded(ServiceError):
    status = 504
    code = "deadline_exceeded"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class ItemFailed(ServiceError):
    """The model raised on this item (and only on it: its batch neighbours were answered)."""

    status = 422
    code = "item_failed"


class ClientDisconnected(ServiceError):
    status = 499
    code = "client_disconnected"


DEADLINE_PASSED = "the request's deadline (X-Request-Timeout-Ms) passed before its work started"


def error_body(message: str, code: str) -> bytes:
    return orjson.dumps({"error": message, "code": code})


def error_response(
    status: int, message: str, code: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = error_body(message, code)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def _noted(request: Request, code: str) -> str:
    # The access log and the rejected-requests metric read the error's code from here.
    request.scope.setdefault("state", {})["error"] = code
    return code


def install_error_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return error_response(exc.status, exc.message, _noted(request, exc.code), exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        return error_response(422, problems, _noted(request, "invalid_input"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _noted(request, "not_found" if exc.status_code == 404 else "http_error")
        return error_response(exc.status_code, str(exc.detail), code, exc.headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # The promise is "never a 500 for any input"; reaching here is a bug, logged with its trace.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", "internal")

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
