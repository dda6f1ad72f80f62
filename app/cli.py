"""`batchserve serve [--host H] [--port P]`: run the server with uvicorn."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from app import server
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
    return server.serve(settings, host, port)
