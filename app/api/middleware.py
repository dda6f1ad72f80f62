"""What wraps every HTTP request, as ASGI middleware: the request id and the accounting (metrics
and access log) of every answer, the early refusal of a declared body over the limit, HEAD as
GET without its body, encoded slashes kept inside their path segment, the bounded inflation of
compressed bodies (off the event loop), and compressed answers (Starlette's GZipMiddleware for
gzip; deflate, which tritonclient asks for, the same way)."""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any
from urllib.parse import unquote

import anyio.to_thread
from starlette.middleware.gzip import GZipMiddleware, GZipResponder, IdentityResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.context import Accounting, RequestIds
from app.api.http import CODINGS, Inflater, ascii_uint, error_body, preferred_coding
from app.api.routing import CONTEXT
from app.errors import MalformedRequest, PayloadTooLarge, ServiceError
from app.serving.context import RequestContext

log = logging.getLogger("batchserve")

COMPRESS_FROM_BYTES = 1024  # smaller answers are sent as they are: compressing would cost more
# A compressed chunk smaller than this inflates (at deflate's ~1000:1 at most) in a millisecond
# or so on the event loop; a larger one is inflated in a worker thread.
INFLATE_ON_LOOP_BYTES = 1024


class RequestMiddleware:
    """The one layer around every request, in one pass (one scan of the headers, one wrapper
    of receive and of send): a request id for every request (echoed as X-Request-ID), its
    context in the scope, one line in the access log and the metrics for every answer, a JSON
    500 for a bug (logged with its trace) instead of a dropped connection; the body's limit and
    inflation (`limited_body`), and the answer's compression (`compressed`)."""

    def __init__(
        self, app: ASGIApp, accounting: Accounting, max_body_bytes: int, level: int = 6
    ) -> None:
        self.app = app
        self.accounting = accounting
        self.max_body_bytes = max_body_bytes
        self.level = level
        self.ids = RequestIds()
        self.gzip = GZipMiddleware(app, COMPRESS_FROM_BYTES, compresslevel=level)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        supplied = declared = coding = accept = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if supplied is None:
                    supplied = value.decode("latin-1")
            elif name == b"content-length":
                if declared is None:
                    declared = value.decode("latin-1")
            elif name == b"content-encoding":
                if coding is None:
                    coding = value.decode("latin-1")
            elif name == b"accept-encoding" and accept is None:
                accept = value.decode("latin-1")
        ctx = RequestContext(self.ids.take(supplied))
        scope[CONTEXT] = ctx
        status = 0
        request_id = (b"x-request-id", ctx.request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id]
            await send(message)

        try:
            refused = self._refused(declared)
            if refused is not None:
                ctx.error = refused.code
                await _send_error(send_with_id, refused, refused.status)
                return
            if scope["method"] not in ("GET", "HEAD"):
                receive = limited_body(receive, coding, self.max_body_bytes)
            routed = _routed_scope(scope)
            if accept is None:
                await self.app(routed, receive, send_with_id)
            else:
                await self.compressed(accept)(routed, receive, send_with_id)
        except Exception as exc:  # a bug; the answer must still be JSON
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            ctx.error = "internal"
            if status == 0:
                message = f"internal error: {type(exc).__name__}"
                await _send_error(send_with_id, ServiceError(message), 500)
        finally:
            seconds = time.perf_counter() - started
            self.accounting.record(
                ctx, scope["method"], scope["path"], status or 500, seconds, "http"
            )

    def compressed(self, accept: str) -> ASGIApp:
        """The app with answers of COMPRESS_FROM_BYTES or more in the coding Accept-Encoding
        weighs highest: gzip by Starlette's GZipMiddleware, deflate by the same responder in the
        zlib format."""
        coding = preferred_coding(accept)
        if coding == "gzip":
            return self.gzip
        if coding == "deflate":
            return DeflateResponder(self.app, COMPRESS_FROM_BYTES, compresslevel=self.level)
        return IdentityResponder(self.app, COMPRESS_FROM_BYTES)

    def _refused(self, declared: str | None) -> ServiceError | None:
        """Before any routing: a declared body over the limit (413), or no number (400)."""
        if declared is None:
            return None
        length, limit = ascii_uint(declared), self.max_body_bytes
        if length is None:
            return MalformedRequest(
                "Content-Length: expected a number of bytes in ASCII digits",
                headers={"Connection": "close"},
            )
        if length > limit:
            return PayloadTooLarge(
                f"body: the request body exceeds the limit of {limit} bytes",
                headers={"Connection": "close"},
            )
        return None


def _routed_scope(scope: Scope) -> Scope:
    """The scope the routes see: HEAD as GET (uvicorn, which keeps the original scope, sends
    no body for it), and the path with its encoded slashes still encoded, so that an encoded
    slash stays inside its segment, as the proxies in front assume."""
    raw: bytes | None = scope.get("raw_path")
    encoded_slash = raw is not None and b"%2" in raw and (b"%2F" in raw or b"%2f" in raw)
    if scope["method"] != "HEAD" and not encoded_slash:
        return scope
    routed = dict(scope)
    if scope["method"] == "HEAD":
        routed["method"] = "GET"
    if encoded_slash:
        assert raw is not None
        segments = raw.split(b"?", 1)[0].decode("latin-1").split("/")
        path = "/".join(
            unquote(s.replace("%2F", "%252F").replace("%2f", "%252F")) for s in segments
        )
        root = scope.get("root_path", "")
        routed["path"] = path if path.startswith(root) else root + path
    return routed


async def _send_error(send: Send, exc: ServiceError, status: int) -> None:
    body = error_body(exc.message, exc.code)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def limited_body(receive: Receive, coding: str | None, limit: int) -> Receive:
    """The request body as the routes read it: refused with 413 as soon as it passes `limit`
    (even without Content-Length), and decompressed as its Content-Encoding says, the limit
    applying to the decompressed bytes too: a small body that inflates to gigabytes is refused
    at the limit, having used no more memory than that. Large chunks inflate in a worker
    thread, so that the event loop goes on serving meanwhile."""
    if coding is not None:
        coding = coding.strip().lower()
    inflater = Inflater(coding, limit) if coding in CODINGS else None
    size = 0

    async def limited() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body: the request body exceeds the limit of {limit} bytes")
        if inflater is None:
            return message
        more = message.get("more_body", False)
        if len(chunk) > INFLATE_ON_LOOP_BYTES:
            chunk = await anyio.to_thread.run_sync(inflater.feed, chunk)
        else:
            chunk = inflater.feed(chunk)
        if not more:
            inflater.finish()
        return {"type": "http.request", "body": chunk, "more_body": more}

    return limited


class DeflateResponder(GZipResponder):
    """GZipResponder's streaming compression in the zlib format (HTTP's deflate)."""

    content_encoding = "deflate"

    @property
    def compressor(self) -> Any:
        if self._compressor is None:
            self._compressor = zlib.compressobj(self.compresslevel, zlib.DEFLATED, zlib.MAX_WBITS)
        return self._compressor
