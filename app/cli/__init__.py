"""The `batchserve` command: serve a model repository, train a recipe, import a Keras or PyTorch
model, check a repository before deploying it."""

# One module per command; this one only assembles them.

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from importlib import metadata

from app.cli import check, imports, serve, train

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"batchserve {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (serve, train, imports, check):
        command.add(commands)
    return parser


def _version() -> str:
    try:
        return metadata.version("batchserve")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"
