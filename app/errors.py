"""Typed domain errors. Each carries the HTTP status and a stable machine-readable code; the
transports map them to their own answers in one place each (`app.api.routing` for HTTP)."""

from __future__ import annotations

from collections.abc import Mapping


class ServiceError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: Mapping[str, str] = headers or {}


class InvalidInput(ServiceError):
    """An item or field the model cannot take; the message names the field."""

    status = 422
    code = "invalid_input"


class MalformedRequest(ServiceError):
    """A request that is not well-formed at all: bad JSON, a bad header, a bad control body."""

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


class DeadlineTooShort(ServiceError):
    """A deadline that no work could meet, however idle the server: retrying cannot help."""

    status = 504
    code = "deadline_too_short"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class NotFound(ServiceError):
    """No such path (as opposed to no such model)."""

    status = 404
    code = "not_found"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class MethodNotAllowed(ServiceError):
    status = 405
    code = "method_not_allowed"


class NotImplementedHere(ServiceError):
    """An operation of a protocol that batchserve does not offer (shared memory, tracing, ...)."""

    status = 501
    code = "not_implemented"


class ItemFailed(ServiceError):
    """The model raised on this item (and only on it: its batch neighbours were answered)."""

    status = 422
    code = "item_failed"


class ResultNotFinite(ServiceError):
    """The model's output for this item is NaN or infinite, or a number derived from it (a
    perplexity) overflows: JSON has no such numbers, and the input was not at fault."""

    status = 422
    code = "result_not_finite"


class ClientDisconnected(ServiceError):
    status = 499
    code = "client_disconnected"


class LoadRequestFailed(ServiceError):
    """A repository load request that could not be carried out (a bad model.json, no version on
    disk, a checkpoint that failed to load); what served before still serves."""

    status = 400
    code = "load_failed"


class RepositoryUnavailable(ServiceError):
    """The model repository's directory cannot be read (gone, unmounted, no permission); what
    is loaded goes on serving."""

    status = 503
    code = "repository_unavailable"


DEADLINE_PASSED = "the request's deadline (X-Request-Timeout-Ms) passed before its work started"
