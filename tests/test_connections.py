"""Connections held open or filled by a client that means harm: oversized and overlong headers,
headers or bodies that trickle in, connections that say nothing, too many connections. Raw
sockets, because a well-behaved HTTP client would not send these."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from tests.conftest import live_server, settings_for, write_tiny_repository

LIMITS = {
    "max_header_bytes": 4096,
    "max_headers": 20,
    "header_timeout_s": 0.5,
    "body_timeout_s": 0.5,
    "keep_alive_timeout_s": 1,
    "max_connections": 8,
}
WAIT_S = 10  # far longer than any limit above: a connection the server keeps open is a failure


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("connections") / "repository")
    with live_server(settings_for(repository, **LIMITS)) as base:
        yield base


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _response(sock: socket.socket) -> bytes:
    """One whole response on a kept-alive connection (headers and Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer else 0


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
        + b"X-Part: "
        + b"b" * 3000
        + b"\r\n" * 1
        + b"X-More: "
        + b"c" * 3000
        + b"\r\n\r\n",
        b"GET /v2/health/live?" + b"q" * 8192 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(40))
        + b"\r\n",
    ],
    ids=["one-big-header", "several-headers", "long-url", "too-many-fields"],
)
def test_a_header_section_over_the_limits_is_a_431(url: str, head: bytes) -> None:
    with _connect(url) as sock:
        sock.sendall(head)
        answer = _answer(sock)
    assert _status(answer) == 431 and b"headers_too_large" in answer


def test_a_huge_header_is_refused_while_it_is_still_arriving(url: str) -> None:
    """64 MB announced, 16 KiB sent: the 431 comes without waiting for (or buffering) the rest."""
    with _connect(url) as sock:
        sock.sendall(b"POST /v1/models/names-rnn/predict HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sock.sendall(b"z" * 16384)
        answer = _answer(sock)
    assert _status(answer) == 431


def test_headers_that_trickle_in_get_a_408_and_the_connection_is_closed(url: str) -> None:
    with _connect(url) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # never finished
        answer = _answer(sock)
    assert _status(answer) == 408 and b"headers did not arrive" in answer


def test_a_body_that_trickles_in_gets_a_408_and_the_connection_is_closed(url: str) -> None:
    head = (
        b"POST /v1/models/names-rnn/predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with _connect(url) as sock:
        sock.sendall(head + b'{"inputs": ["K')  # 86 bytes never come
        answer = _answer(sock)
    assert _status(answer) == 408 and b"body did not arrive" in answer


def test_a_connection_that_sends_nothing_is_closed(url: str) -> None:
    with _connect(url) as sock:
        started = time.monotonic()
        answer = _answer(sock)
        waited = time.monotonic() - started
    assert answer == b"" and waited < WAIT_S


def test_a_kept_alive_connection_is_served_again_and_then_closed_when_idle(url: str) -> None:
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(url) as sock:
        sock.sendall(request)
        first = _response(sock)
        sock.sendall(request)
        second = _response(sock)
        rest = _answer(sock)
    assert _status(first) == _status(second) == 200 and rest == b""


def test_connections_beyond_the_limit_are_answered_503_and_closed(url: str) -> None:
    limit = int(LIMITS["max_connections"])
    with ExitStack() as stack:
        held = [stack.enter_context(_connect(url)) for _ in range(limit)]
        held[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(_response(held[0])) == 200
        with _connect(url) as extra:
            answer = _answer(extra)
    assert _status(answer) == 503 and b"retry-after: 1" in answer.lower()
    # Once they are gone, the server takes new connections again.
    assert httpx.get(f"{url}/v2/health/live").status_code == 200


@pytest.mark.parametrize(
    "line",
    [
        b"CONNECT example.com:443 HTTP/1.1",
        b"CONNECT 127.0.0.1:8000 HTTP/1.1",
        b"GET http://[::1/x HTTP/1.1",
        b"GET http://a:99999999/x HTTP/1.1",
        b"POST http://[zz]/v1/completions HTTP/1.1",
    ],
)
def test_a_request_target_that_does_not_parse_is_answered_400(
    url: str, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Not zero bytes and a "Fatal error on transport" traceback: a 400, then the close."""
    with caplog.at_level("ERROR"), _connect(url) as sock:
        sock.sendall(line + b"\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        answer = _answer(sock)
    assert _status(answer) == 400, answer
    assert b"malformed_request" in answer and b"connection: close" in answer.lower()
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage()]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'batchserve_rejected_requests_total{reason="malformed_request"}' in metrics


def test_refusals_on_connections_are_counted_by_reason(url: str) -> None:
    with _connect(url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX: " + b"y" * 8192 + b"\r\n\r\n")
        _answer(sock)
    metrics = httpx.get(f"{url}/metrics").text
    assert 'batchserve_rejected_requests_total{reason="headers_too_large"}' in metrics


def test_the_server_still_serves_after_all_of_the_above(url: str) -> None:
    response = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": ["Kim"]})
    assert response.status_code == 200 and response.json()["predictions"][0]["label"]
