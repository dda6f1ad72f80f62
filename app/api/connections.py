"""HTTP/1.1 connections with limits: uvicorn's httptools protocol, plus what it does not bound.

- The header section: at most `max_header_bytes` (431), counted before httptools buffers it, and
  at most `max_headers` fields (431).
- Time: a request's headers must arrive within `header_timeout_s` of its first byte, and its body
  within `body_timeout_s` of its headers (408); a new connection that sends nothing is closed
  after the keep-alive timeout, as an idle kept-alive one is.
- Connections: beyond `max_connections` open at once, a new one is answered 503 and closed.

These answers are written here, on the connection, before any request reaches the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("batchserve")

END_OF_HEAD = b"\r\n\r\n"
# The ASGI scope extension whose "gone" a request calls to ask: has its client left?
CONNECTION_GONE = "batchserve.connection_gone"
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 2048
    retry_after_s: int = 1


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; carries the answer to write."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def limited_protocol(
    limits: ConnectionLimits, on_refused: Callable[[str], None] | None = None
) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http=`; `on_refused(code)` counts each refusal."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _in_head = True  # between requests, or reading one's request line and headers
        _head_bytes = 0
        _tail = b""  # the end of the last chunk, for a head end split across chunks
        _header_count = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            # A response goes out as two writes (head, body); with Nagle on, the body would wait
            # for the client's delayed ACK of the head: 40 ms per request on a kept-alive
            # connection. uvloop sets this already; asyncio's loop may not.
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.connections) > limits.max_connections:
                self._refuse(
                    _Refused(
                        503,
                        "too_many_connections",
                        f"the server has {limits.max_connections} connections open; retry later",
                    ),
                    retry=True,
                )
                return
            # Until its first byte a new connection is idle, like a kept-alive one.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            try:
                if self._in_head:
                    self._count_head(data)
                self.parser.feed_data(data)
                if not self._in_head:
                    self._ack_now()
            except _Refused as refused:
                self._refuse(refused)
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, _Refused):
                    self._refuse(cause)
                    return
                # uvicorn's callbacks raise on what httptools let through: a request target
                # it cannot parse (CONNECT's authority form, a bad absolute URL). An answer,
                # not a dropped connection and a "Fatal error on transport".
                if not isinstance(cause, httptools.HttpParserError):
                    log.warning("request refused: %s", cause, exc_info=cause)
                self._refuse(_Refused(400, "malformed_request", _malformed(cause)))
            except httptools.HttpParserError:
                self._refuse(_Refused(400, "malformed_request", "Invalid HTTP request received."))
            except httptools.HttpParserUpgrade:
                self._refuse(_Refused(400, "malformed_request", "Upgrades are not supported."))

        def _ack_now(self) -> None:
            """Headers in, body still to come: acknowledge at once. A client that wrote its
            headers and body separately (Python's http.client on a kept-alive connection) holds
            a small body back until the headers are acknowledged (Nagle), and the kernel delays
            that ACK by up to 40 ms: every such request would wait that long."""
            if _QUICKACK is None:
                return
            sock = self.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

        def _count_head(self, data: bytes) -> None:
            """Refuse a header section over the limit before httptools buffers it whole."""
            window = self._tail + data
            end = window.find(END_OF_HEAD)
            new = len(data) if end < 0 else end + len(END_OF_HEAD) - len(self._tail)
            if self._head_bytes + new > limits.max_header_bytes:
                raise _Refused(
                    431,
                    "headers_too_large",
                    f"the request line and headers exceed {limits.max_header_bytes} bytes",
                )
            self._head_bytes += new
            self._tail = window[-(len(END_OF_HEAD) - 1) :]

        # -- parser callbacks ----------------------------------------------------------------
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._start_timer(limits.header_timeout_s, "headers")

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > limits.max_headers:
                raise _Refused(
                    431, "headers_too_large", f"more than {limits.max_headers} header fields"
                )
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._start_timer(limits.body_timeout_s, "body")
            # Polled by the batcher before it computes an item, instead of a task per request
            # waiting for http.disconnect. uvicorn closes the transport when the peer leaves.
            self.scope["extensions"] = {CONNECTION_GONE: {"gone": self.transport.is_closing}}
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._stop_timer()
            self._in_head, self._head_bytes, self._tail, self._header_count = True, 0, b"", 0
            super().on_message_complete()

        # -- refusing ------------------------------------------------------------------------
        def _start_timer(self, seconds: float, part: str) -> None:
            self._stop_timer()
            self._timer = self.loop.call_later(seconds, self._timed_out, seconds, part)

        def _stop_timer(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _timed_out(self, seconds: float, part: str) -> None:
            self._timer = None
            message = f"the request's {part} did not arrive within {seconds:g} s"
            self._refuse(_Refused(408, "request_timeout", message))

        def _refuse(self, refused: _Refused, retry: bool = False) -> None:
            """Answer (unless a response already started on this connection) and close."""
            self._stop_timer()
            if on_refused is not None:
                on_refused(refused.code)
            if self.transport.is_closing():
                return
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(_answer(refused, limits.retry_after_s if retry else None))
            self.transport.close()

    return LimitedHttpToolsProtocol


def _malformed(cause: BaseException | None) -> str:
    if isinstance(cause, httptools.HttpParserInvalidURLError):
        return "Invalid HTTP request received: the request target is not a valid URL."
    return "Invalid HTTP request received."


def _answer(refused: _Refused, retry_after_s: int | None) -> bytes:
    body = orjson.dumps({"error": refused.message, "code": refused.code})
    lines = [
        STATUS_LINE[refused.status],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    if retry_after_s is not None:
        lines.append(b"retry-after: %d\r\n" % retry_after_s)
    return b"".join([*lines, b"\r\n", body])
