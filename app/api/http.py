"""Raw ASGI plumbing for the HTTP transport: headers, bodies, JSON in and out. Raw ASGI because
it sits on the hot path, in front of FastAPI's own stack."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Receive, Send

from app.errors import (
    ClientDisconnected,
    MalformedRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)

JSON = b"application/json"


@dataclass(slots=True)
class HttpResponse:
    body: bytes
    status: int = 200
    content_type: bytes = JSON
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class HttpStream:
    """A response whose body is sent as it is produced (server-sent events, say). Its status is
    200 once the first byte is out: a failure later must be told in the body."""

    chunks: AsyncIterator[bytes]
    content_type: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


ErrorFormat = Callable[[str, str], bytes]


def json_response(
    content: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return HttpResponse(body, status, JSON, headers or {})


def error_body(message: str, code: str) -> bytes:
    return orjson.dumps({"error": message, "code": code})


class Headers:
    """A request's headers by (lower-case) name, first value first, decoded on lookup: one pass
    over the ASGI list instead of one per header read."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = dict(reversed(raw))

    def get(self, name: bytes) -> str | None:
        value = self._raw.get(name)
        return None if value is None else value.decode("latin-1")


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """A request header from the raw ASGI scope's list (names are lower-case there)."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def send_response(
    send: Send,
    response: HttpResponse,
    extra: list[tuple[bytes, bytes]],
    with_body: bool = True,
) -> None:
    """A whole response; `with_body=False` answers a HEAD request (same headers, no body)."""
    raw = [
        (b"content-type", response.content_type),
        (b"content-length", str(len(response.body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in response.headers.items()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": raw})
    await send({"type": "http.response.body", "body": response.body if with_body else b""})


async def send_stream(send: Send, stream: HttpStream, extra: list[tuple[bytes, bytes]]) -> None:
    """Start the response, then send each chunk as it comes; the producer is closed whatever
    happens (a client that leaves makes `send` raise), so it can stop its work."""
    raw = [
        (b"content-type", stream.content_type),
        (b"cache-control", b"no-cache"),
        *((k.lower().encode(), v.encode()) for k, v in stream.headers.items()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": raw})
    chunks = stream.chunks
    try:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def receive_body(receive: Receive, max_bytes: int, coding: str | None = None) -> bytes:
    """The body, refused with 413 as soon as it passes `max_bytes` (even without Content-Length).
    With a `coding` (gzip or deflate) it is decompressed as it arrives, and the limit applies to
    the decompressed bytes too: a small body that inflates to gigabytes is refused at
    `max_bytes`, having used no more memory than that."""
    inflater = _Inflater(coding, max_bytes) if coding else None
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
        chunks.append(inflater.feed(chunk) if inflater else chunk)
        if not message.get("more_body", False):
            if inflater:
                inflater.finish()
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# -- compression (Content-Encoding / Accept-Encoding) --------------------------------------------

CODINGS = ("gzip", "deflate")  # deflate: the zlib format (RFC 1950), as HTTP and Triton mean it
COMPRESS_FROM_BYTES = 1024  # smaller answers are sent as they are: compressing would cost more


def content_coding(declared: str | None) -> str | None:
    """The request body's coding: gzip, deflate, or None for none; anything else is a 415."""
    value = (declared or "").strip().lower()
    if value in ("", "identity"):
        return None
    if value in CODINGS:
        return value
    raise UnsupportedMediaType(
        f"Content-Encoding: {declared!r} is not supported; send gzip, deflate or identity",
        headers={"Accept-Encoding": "gzip, deflate"},
    )


class _Inflater:
    """Decompresses a body chunk by chunk, never producing more than `max_bytes` in all."""

    def __init__(self, coding: str, max_bytes: int) -> None:
        self._coding = coding
        self._stream = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # gzip or zlib header
        self._room = max_bytes
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> bytes:
        pieces: list[bytes] = []
        while data:
            if self._stream.eof:
                raise MalformedRequest(f"body: data after the end of the {self._coding} stream")
            try:
                piece = self._stream.decompress(data, self._room + 1)
            except zlib.error as exc:
                raise MalformedRequest(f"body: not valid {self._coding} data ({exc})") from None
            self._room -= len(piece)
            if self._room < 0:
                raise PayloadTooLarge(
                    f"body: the decompressed request body exceeds the limit of "
                    f"{self._max_bytes} bytes"
                )
            pieces.append(piece)
            rest = self._stream.unconsumed_tail or self._stream.unused_data
            if rest == data and not piece:
                break  # no progress: cannot happen with room left, but never spin
            data = rest
        return b"".join(pieces)

    def finish(self) -> None:
        if not self._stream.eof:
            raise MalformedRequest(f"body: the {self._coding} data ends before its stream does")


def compress(response: HttpResponse, accept_encoding: str | None) -> HttpResponse:
    """The response in the coding the client prefers (gzip or deflate), if it is worth it."""
    if len(response.body) < COMPRESS_FROM_BYTES:
        return response
    headers = {**response.headers, "Vary": "Accept-Encoding"}
    coding = _preferred_coding(accept_encoding)
    if coding is None:
        return HttpResponse(response.body, response.status, response.content_type, headers)
    if coding == "gzip":
        body = gzip.compress(response.body, compresslevel=6, mtime=0)
    else:
        body = zlib.compress(response.body)
    headers["Content-Encoding"] = coding
    return HttpResponse(body, response.status, response.content_type, headers)


def _preferred_coding(accept_encoding: str | None) -> str | None:
    """gzip or deflate, whichever Accept-Encoding weighs highest (gzip on a tie), when it
    weighs at least as much as identity; None otherwise."""
    if not accept_encoding:
        return None
    weights: dict[str, float] = {}
    for item in accept_encoding.split(",")[:32]:
        name, _, parameters = item.partition(";")
        weights[name.strip().lower()] = _quality(parameters)
    anything = weights.get("*")
    identity = weights.get("identity", 1.0 if anything is None else max(anything, 0.001))
    best = max(CODINGS, key=lambda c: weights.get(c, anything or 0.0))
    weight = weights.get(best, anything or 0.0)
    return best if weight > 0 and weight >= identity else None


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def only_numbers(raw: bytes, body: Any) -> bool:
    """Whether every value of a parsed JSON object `body` other than its keys is a number (or an
    array of them), told from its bytes in a few C passes: no true/false/null literal, and no
    quote but the keys' own. It spares the per-element type checks of large numeric arrays."""
    if not isinstance(body, dict) or any(word in raw for word in (b"true", b"false", b"null")):
        return False
    return raw.count(b'"') == 2 * len(body)  # a string value brings two more


def ascii_uint(text: str) -> int | None:
    """A header's non-negative integer, written in ASCII digits only (str.isdigit and int()
    also take superscripts and other scripts' digits); None when it is not one."""
    if 0 < len(text) <= 18 and text.isascii() and text.isdigit():
        return int(text)
    return None


# Keys and parameters around the items: room for them in a request's count of JSON values.
ENVELOPE_VALUES = 64


def parse_json(body: bytes, max_values: int | None = None) -> Any:
    """The body's JSON. With `max_values`, a body that holds more values (counted by their
    separators and brackets, in one pass that costs ~1 ms per MiB) is refused before it is
    parsed: parsing millions of tiny values takes seconds on the event loop."""
    if max_values is not None:
        found = body.count(b",") + body.count(b"[") + body.count(b"{")
        if found > max_values + ENVELOPE_VALUES:
            raise PayloadTooLarge(
                f"body: holds about {found} JSON values; a request to this model holds at most "
                f"{max_values + ENVELOPE_VALUES}"
            )
    if not body:
        raise MalformedRequest("body: empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body: malformed JSON: {exc}") from None


def disconnect_waiter(receive: Receive) -> Callable[[], Awaitable[None]]:
    """A coroutine function that completes when the client goes away (after the body is read,
    the next ASGI message is http.disconnect, or nothing)."""

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return wait
