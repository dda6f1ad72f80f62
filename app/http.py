"""HTTP plumbing shared by the `/v1` and `/v2` routes: auth, body reading, deadlines, JSON out."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.errors import ClientDisconnected, MalformedRequest, PayloadTooLarge, Unauthorized
from app.inference import RequestContext


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def header(scope: Scope, name: bytes) -> str | None:
    """A request header from the raw ASGI scope (for the layers that run before FastAPI)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def send_json(
    send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """A whole JSON response through raw ASGI."""
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def authorize(request: Request, keys: list[bytes]) -> None:
    check_bearer(request.headers.get("authorization"), keys)


def check_bearer(header: str | None, keys: list[bytes]) -> None:
    """Bearer auth; keys are compared in constant time and never echoed."""
    if not keys:
        return
    header = header or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        supplied = token.strip().encode()
        # Compare against every key so the time taken does not reveal which one matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(supplied, key)
        if matched:
            return
    problem = "missing" if not header else "wrong"
    raise Unauthorized(
        f"Authorization: {problem} API key; send 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": 'Bearer realm="batchserve"'},
    )


async def read_body(request: Request, max_bytes: int) -> bytes:
    return await receive_body(request.receive, max_bytes)


async def receive_body(receive: Receive, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes `max_bytes` (even without Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client disconnected while sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body: the request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise MalformedRequest("body: empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body: malformed JSON: {exc}") from None


def request_context(request: Request) -> RequestContext:
    timeout = request.headers.get("x-request-timeout-ms")
    return make_context(timeout, request.receive, request.scope["state"])


def make_context(
    timeout_ms_header: str | None, receive: Receive, state: dict[str, Any]
) -> RequestContext:
    """The deadline from X-Request-Timeout-Ms, and a waiter that completes if the client leaves."""
    deadline = None
    if timeout_ms_header is not None:
        try:
            timeout_ms = float(timeout_ms_header)
        except ValueError:
            timeout_ms = -1.0
        if not 0 < timeout_ms < 86_400_000:
            raise MalformedRequest(
                "X-Request-Timeout-Ms: expected a positive number of milliseconds below one day"
            )
        deadline = time.monotonic() + timeout_ms / 1000
    return RequestContext(deadline, _disconnect_waiter(receive), stats=state)


def _disconnect_waiter(receive: Receive) -> Any:
    async def wait() -> None:
        # Once the body is read, the next ASGI message is http.disconnect (or nothing).
        while (await receive())["type"] != "http.disconnect":
            pass

    return wait
