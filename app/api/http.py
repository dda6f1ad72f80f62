"""HTTP pieces below the routes: pre-encoded JSON answers, the server-sent event stream, body
codings (bounded inflation) and the cheap byte-level limits that run before a body is parsed."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.errors import MalformedRequest, PayloadTooLarge, UnsupportedMediaType

JSON = "application/json"


class JsonBytes(Response):
    """An answer already encoded (by orjson, numpy arrays included): FastAPI sends it as it is."""

    media_type = JSON


def json_response(
    content: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return JsonBytes(body, status, headers)


def error_body(message: str, code: str) -> bytes:
    return orjson.dumps({"error": message, "code": code})


class EventStream(Response):
    """Server-sent events sent as they are produced. Its status is 200 once the first byte is
    out, so a failure later must be told in the body; the producer is closed whatever happens
    (a client that leaves makes `send` raise), so that it can stop its work."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], background: BackgroundTask | None = None):
        super().__init__(None, 200, {"Cache-Control": "no-cache"}, background=background)
        del self.headers["content-length"]
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        chunks = self.chunks
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]


# -- request bodies ----------------------------------------------------------------------------

CODINGS = ("gzip", "deflate")  # deflate: the zlib format (RFC 1950), as HTTP and Triton mean it


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


class Inflater:
    """Decompresses a body chunk by chunk, never producing more than `max_bytes` in all. A gzip
    body may hold several members one after another (RFC 1952), as `cat a.gz b.gz` makes."""

    def __init__(self, coding: str, max_bytes: int) -> None:
        self._coding = coding
        self._stream = self._new()
        self._room = max_bytes
        self._max_bytes = max_bytes

    @staticmethod
    def _new() -> Any:
        return zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # a gzip or a zlib header

    def feed(self, data: bytes) -> bytes:
        pieces: list[bytes] = []
        while data:
            if self._stream.eof:
                if self._coding != "gzip":
                    raise MalformedRequest(f"body: data after the end of the {self._coding} stream")
                self._stream = self._new()  # the next gzip member
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


def preferred_coding(accept_encoding: str | None) -> str | None:
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


def ascii_uint(text: str) -> int | None:
    """A header's non-negative integer, written in ASCII digits only (str.isdigit and int()
    also take superscripts and other scripts' digits); None when it is not one."""
    if 0 < len(text) <= 18 and text.isascii() and text.isdigit():
        return int(text)
    return None


# Keys and parameters around the items: room for them in a request's count of JSON values.
ENVELOPE_VALUES = 64


def refuse_too_many_values(body: bytes, max_values: int) -> None:
    """A body that holds more JSON values than `max_values` (counted by their separators and
    brackets, in one pass that costs ~1 ms per MiB) is refused before it is parsed: parsing
    millions of tiny values takes seconds."""
    found = body.count(b",") + body.count(b"[") + body.count(b"{")
    if found > max_values + ENVELOPE_VALUES:
        raise PayloadTooLarge(
            f"body: holds about {found} JSON values; a request to this model holds at most "
            f"{max_values + ENVELOPE_VALUES}"
        )
