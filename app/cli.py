"""`batchserve serve [--host H] [--port P]`: run the server with uvicorn."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from types import FrameType

import uvicorn
from pydantic import ValidationError

from app.serving.dataplane import Lifecycle
from app.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the models of the repository")
    serve.add_argument("--host", help="address to bind (default BATCHSERVE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default BATCHSERVE_PORT or 8000)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            print(f"batchserve: BATCHSERVE_{field.upper()}: {error['msg']}", file=sys.stderr)
        return 2
    host = args.host or settings.host
    port = args.port or settings.port
    return serve_forever(settings, host, port)


def serve_forever(settings: Settings, host: str, port: int) -> int:
    from app.logs import configure_logging
    from app.main import create_app

    configure_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
    )
    logging.getLogger("batchserve").info("listening on http://%s:%d", host, port)
    GracefulServer(config, app.lifecycle, settings.shutdown_drain_s).run()
    return 0


class GracefulServer(uvicorn.Server):
    """uvicorn already stops accepting on SIGTERM and waits for the accepted requests. This adds:
    readiness turns false and new requests get 503 at once, for `drain_s` before the listener
    closes; and the process exits 0 rather than dying by the signal uvicorn re-raises."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_s = drain_s
        self.exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.draining = True
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)  # Ctrl+C keeps uvicorn's behaviour (twice forces)
        elif self.exit_at is None:
            # Not passed on: uvicorn would record it and re-raise it after a clean shutdown, and
            # an orchestrator would read exit status 143 as a crash.
            self.exit_at = time.monotonic() + self.drain_s

    async def on_tick(self, counter: int) -> bool:
        # Runs every 0.1 s in uvicorn's main loop: the place to end the drain without a task.
        if self.exit_at is not None and time.monotonic() >= self.exit_at:
            self.should_exit = True
        return await super().on_tick(counter)
