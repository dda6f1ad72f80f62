"""A Python client for the batchserve `/v1` API, sync (`Client`) and async (`AsyncClient`) on httpx.

Both share `_ClientCore`, which builds requests, decides on retries and parses responses; the two
clients differ only in how they send a request and how they sleep between attempts."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from app.api.v1.schemas import (
    ModelList,
    ModelMetadata,
    ModelSummary,
    PredictResponse,
    ScoreResponse,
)

__all__ = [
    "AsyncClient",
    "BatchserveError",
    "Client",
    "ModelInfo",
    "PredictResult",
    "ScoreResult",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# The HTTP timeout outlasts the deadline sent to the server, so that the server's 504 (which says
# what happened) arrives before the client gives up on its own.
_DEADLINE_GRACE_S = 1.0
# Errors where the request may have reached the server: retried only for idempotent calls.
_MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
# Errors where it certainly did not: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)

ModelInfo = ModelSummary


class PredictResult(PredictResponse):
    """A `predict` response plus the request id the server echoed."""

    request_id: str


class ScoreResult(ScoreResponse):
    """A `score` response plus the request id the server echoed."""

    request_id: str


class BatchserveError(Exception):
    """A call that failed: `status` is the HTTP status (None when no response came back)."""

    def __init__(self, status: int | None, code: str, message: str, request_id: str) -> None:
        super().__init__(f"{status or 'no response'} {code}: {message} (request id {request_id})")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


_Result = TypeVar("_Result", bound=BaseModel)


@dataclass(frozen=True)
class _Call:
    """One logical call; each attempt at it is built from this."""

    method: str
    path: str
    body: dict[str, Any] | None
    request_id: str
    deadline: float | None  # time.monotonic() by which the server must have started the work
    # Every /v1 call is idempotent (inference has no side effects), so a call that may have
    # reached the server is safe to repeat; a future mutating call would set this to False.
    idempotent: bool = True


class _ClientCore:
    """Everything but I/O: request building, the retry policy and response parsing."""

    def __init__(
        self,
        api_key: str | None,
        timeout_s: float | None,
        max_retries: int,
        backoff_s: float,
        backoff_max_s: float,
    ) -> None:
        if max_retries < 0 or backoff_s < 0 or backoff_max_s < 0:
            raise ValueError("max_retries, backoff_s and backoff_max_s must not be negative")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.retries = 0  # attempts repeated so far, over the client's life
        self._lock = threading.Lock()

    # -- building --------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        request_id: str | None = None,
        deadline_s: float | None = None,
    ) -> _Call:
        budget_s = deadline_s if deadline_s is not None else self.timeout_s
        deadline = None if budget_s is None else time.monotonic() + budget_s
        return _Call(method, path, body, request_id or uuid.uuid4().hex, deadline)

    def predict_call(
        self,
        model: str,
        inputs: Sequence[Any],
        top_k: int,
        version: str | None,
        request_id: str | None,
        deadline_s: float | None,
    ) -> _Call:
        body = {"inputs": _items(inputs), "top_k": top_k}
        path = _model_path(model, version, "predict")
        return self.call("POST", path, body, request_id, deadline_s)

    def score_call(
        self,
        model: str,
        body: dict[str, Any],
        version: str | None,
        request_id: str | None,
        deadline_s: float | None,
    ) -> _Call:
        path = _model_path(model, version, "score")
        return self.call("POST", path, body, request_id, deadline_s)

    def request_args(self, call: _Call) -> dict[str, Any]:
        """Keyword arguments for `httpx.(Async)Client.request` for the next attempt at `call`."""
        headers = {"X-Request-ID": call.request_id}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        timeout: float | None = self.timeout_s
        if call.deadline is not None:
            remaining_s = max(call.deadline - time.monotonic(), 0.001)
            headers["X-Request-Timeout-Ms"] = f"{remaining_s * 1000:.0f}"
            timeout = remaining_s + _DEADLINE_GRACE_S
        return {
            "method": call.method,
            "url": call.path,
            "json": call.body,
            "headers": headers,
            "timeout": timeout,
        }

    # -- retrying --------------------------------------------------------------------------

    def retry_delay(
        self, call: _Call, attempt: int, outcome: httpx.Response | httpx.TransportError
    ) -> float | None:
        """Seconds to wait before retrying `call`, or None when `outcome` is final."""
        if attempt >= self.max_retries or not self._retryable(call, outcome):
            return None
        delay = self._backoff(attempt)
        if isinstance(outcome, httpx.Response):
            delay = _retry_after_s(outcome) or delay
        if call.deadline is not None and time.monotonic() + delay >= call.deadline:
            return None  # the retry could not start before the deadline
        with self._lock:
            self.retries += 1
        return delay

    def _retryable(self, call: _Call, outcome: httpx.Response | httpx.TransportError) -> bool:
        if isinstance(outcome, httpx.Response):
            # A 503 means the work was refused before it started (full queue, model loading).
            return outcome.status_code == 503
        if isinstance(outcome, _NOT_SENT):
            return True
        return call.idempotent and isinstance(outcome, _MAYBE_SENT)

    def _backoff(self, attempt: int) -> float:
        # "Equal jitter": half the exponential step is fixed, half is random.
        step = min(self.backoff_max_s, self.backoff_s * 2.0**attempt)
        return step / 2 + random.uniform(0, step / 2)

    # -- parsing ---------------------------------------------------------------------------

    def finish(self, call: _Call, outcome: httpx.Response | httpx.TransportError) -> httpx.Response:
        """The successful response, or the BatchserveError that `outcome` amounts to."""
        if isinstance(outcome, httpx.TransportError):
            code = "timeout" if isinstance(outcome, httpx.TimeoutException) else "connection_error"
            raise BatchserveError(
                None, code, str(outcome) or type(outcome).__name__, call.request_id
            ) from outcome
        if outcome.is_success:
            return outcome
        raise _error_from(outcome, call.request_id)

    @staticmethod
    def parse(response: httpx.Response, result_type: type[_Result]) -> _Result:
        try:
            body = response.json()
            if "request_id" in result_type.model_fields:
                body = {**body, "request_id": _echoed_id(response)}
            return result_type.model_validate(body)
        except (ValueError, TypeError) as exc:  # not JSON, not an object, or the wrong shape
            raise BatchserveError(
                response.status_code, "invalid_response", str(exc), _echoed_id(response)
            ) from exc


def _retry_after_s(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: fall back to backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _echoed_id(response: httpx.Response) -> str:
    echoed: str = response.headers.get("x-request-id") or response.request.headers.get(
        "x-request-id", ""
    )
    return echoed


def _error_from(response: httpx.Response, request_id: str) -> BatchserveError:
    code, message = "http_error", response.text or response.reason_phrase
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        message = str(body["error"])
        code = str(body.get("code", code))
    echoed = response.headers.get("x-request-id") or request_id
    return BatchserveError(response.status_code, code, message, echoed)


def _model_path(model: str, version: str | None, action: str = "") -> str:
    path = f"/v1/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{quote(version, safe='')}"
    return f"{path}/{action}" if action else path


def _items(inputs: Sequence[Any]) -> list[Any]:
    # numpy arrays and torch tensors become plain lists; the JSON encoder knows no others.
    return [item.tolist() if hasattr(item, "tolist") else item for item in inputs]


def _score_body(inputs: Sequence[str], per_token: bool) -> dict[str, Any]:
    return {"inputs": list(inputs), "per_token": per_token}


def _pairs_body(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {"pairs": [{"context": c, "continuation": x} for c, x in pairs]}


class _Base:
    """Constructor arguments shared by both clients."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout_s: float | None = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        """`timeout_s` is also the deadline sent as `X-Request-Timeout-Ms` (a call's `deadline_s`
        overrides it); `max_retries` counts repeats after the first attempt, made on 503 (after
        `Retry-After` seconds when given, else exponential backoff with jitter capped at
        `backoff_max_s`) and on connection errors; a 4xx is never retried."""
        self.base_url = base_url.rstrip("/")
        self._core = _ClientCore(api_key, timeout_s, max_retries, backoff_s, backoff_max_s)

    @property
    def retries(self) -> int:
        """How many attempts this client has repeated after a 503 or a connection error."""
        return self._core.retries


class Client(_Base):
    """The synchronous client; use it as a context manager, or call `close()`."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, **options: Any) -> None:
        super().__init__(base_url, **options)
        self._http = httpx.Client(base_url=self.base_url)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def models(self, request_id: str | None = None) -> list[ModelInfo]:
        call = self._core.call("GET", "/v1/models", request_id=request_id)
        return self._core.parse(self._send(call), ModelList).models

    def model(
        self, name: str, version: str | None = None, request_id: str | None = None
    ) -> dict[str, Any]:
        """The model's metadata (task, architecture, input, labels, metrics, ...)."""
        call = self._core.call("GET", _model_path(name, version), request_id=request_id)
        response = self._send(call)
        self._core.parse(response, ModelMetadata)
        return dict(response.json())

    def predict(
        self,
        model: str,
        inputs: Sequence[Any],
        top_k: int = 1,
        version: str | None = None,
        *,
        request_id: str | None = None,
        deadline_s: float | None = None,
    ) -> PredictResult:
        call = self._core.predict_call(model, inputs, top_k, version, request_id, deadline_s)
        return self._core.parse(self._send(call), PredictResult)

    def score(
        self,
        model: str,
        inputs: Sequence[str],
        per_token: bool = False,
        version: str | None = None,
        *,
        request_id: str | None = None,
        deadline_s: float | None = None,
    ) -> ScoreResult:
        body = _score_body(inputs, per_token)
        call = self._core.score_call(model, body, version, request_id, deadline_s)
        return self._core.parse(self._send(call), ScoreResult)

    def score_pairs(
        self,
        model: str,
        pairs: Sequence[tuple[str, str]],
        version: str | None = None,
        *,
        request_id: str | None = None,
        deadline_s: float | None = None,
    ) -> ScoreResult:
        """ln P(continuation | context) for each (context, continuation), and `is_greedy`."""
        call = self._core.score_call(model, _pairs_body(pairs), version, request_id, deadline_s)
        return self._core.parse(self._send(call), ScoreResult)

    def _send(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            outcome = self._attempt(call)
            delay = self._core.retry_delay(call, attempt, outcome)
            if delay is None:
                return self._core.finish(call, outcome)
            time.sleep(delay)
            attempt += 1

    def _attempt(self, call: _Call) -> httpx.Response | httpx.TransportError:
        try:
            return self._http.request(**self._core.request_args(call))
        except httpx.TransportError as exc:
            return exc


class AsyncClient(_Base):
    """The asyncio client; use it as an async context manager, or await `aclose()`."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, **options: Any) -> None:
        super().__init__(base_url, **options)
        self._http = httpx.AsyncClient(base_url=self.base_url)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self, request_id: str | None = None) -> list[ModelInfo]:
        call = self._core.call("GET", "/v1/models", request_id=request_id)
        return self._core.parse(await self._send(call), ModelList).models

    async def model(
        self, name: str, version: str | None = None, request_id: str | None = None
    ) -> dict[str, Any]:
        """The model's metadata (task, architecture, input, labels, metrics, ...)."""
        call = self._core.call("GET", _model_path(name, version), request_id=request_id)
        response = await self._send(call)
        self._core.parse(response, ModelMetadata)
        return dict(response.json())

    async def predict(
        self,
        model: str,
        inputs: Sequence[Any],
        top_k: int = 1,
        version: str | None = None,
        *,
        request_id: str | None = None,
        deadline_s: float | None = None,
    ) -> PredictResult:
        call = self._core.predict_call(model, inputs, top_k, version, request_id, deadline_s)
        return self._core.parse(await self._send(call), PredictResult)

    async def score(
        self,
        model: str,
        inputs: Sequence[str],
        per_token: bool = False,
        version: str | None = None,
        *,
        request_id: str | None = None,
        deadline_s: float | None = None,
    ) -> ScoreResult:
        body = _score_body(inputs, per_token)
        call = self._core.score_call(model, body, version, request_id, deadline_s)
        return self._core.parse(await self._send(call), ScoreResult)

    async def score_pairs(
        self,
        model: str,
        pairs: Sequence[tuple[str, str]],
        version: str | None = None,
        *,
        request_id: str | None = None,
        deadline_s: float | None = None,
    ) -> ScoreResult:
        """ln P(continuation | context) for each (context, continuation), and `is_greedy`."""
        call = self._core.score_call(model, _pairs_body(pairs), version, request_id, deadline_s)
        return self._core.parse(await self._send(call), ScoreResult)

    async def _send(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            outcome = await self._attempt(call)
            delay = self._core.retry_delay(call, attempt, outcome)
            if delay is None:
                return self._core.finish(call, outcome)
            await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(self, call: _Call) -> httpx.Response | httpx.TransportError:
        try:
            return await self._http.request(**self._core.request_args(call))
        except httpx.TransportError as exc:
            return exc
