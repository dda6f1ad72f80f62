"""An optional second listener for the liveness and readiness probes, served by a thread of its
own: under a flood of requests the event loop can leave a new connection waiting for seconds,
and an orchestrator that cannot reach its probe restarts a server that is in fact fine."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from app.serving.dataplane import DataPlane

log = logging.getLogger("batchserve")
PATHS = ("/v2/health/live", "/v2/health/ready")


class HealthServer:
    """`GET /v2/health/live` and `/v2/health/ready` on `host:port`, as on the main port; or on
    `listening`, a socket already bound and listening (one that several workers share)."""

    def __init__(
        self, plane: DataPlane, host: str, port: int, listening: socket.socket | None = None
    ) -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(plane), listening is None)
        if listening is not None:
            self._server.socket.close()
            self._server.socket = listening
            self._server.server_address = listening.getsockname()
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("health probes also on port %d", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(plane: DataPlane) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # seconds; an idle or trickling probe connection holds a thread no longer

        def do_GET(self) -> None:
            if self.path == PATHS[0]:
                self._answer(200, {"live": True})
            elif self.path == PATHS[1]:
                ready = _ready(plane)
                self._answer(200 if ready else 503, {"ready": ready})
            else:
                self._answer(404, {"error": f"only {', '.join(PATHS)} are served on this port"})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            payload = orjson.dumps(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the access log

    return Handler


def _ready(plane: DataPlane) -> bool:
    # Read from this thread while the event loop may be loading a model: a dict that changes
    # size under the iteration raises, and "not ready this instant" is the honest answer.
    try:
        return plane.readiness().ready
    except RuntimeError:
        return False
