"""The `batchserve` command: serve a model repository, train a recipe, import a Keras or PyTorch
model, check a repository before deploying it."""

# One module per command; this one only assembles them. A command's module (and with it torch,
# pydantic, the models) is imported only when that command runs or is asked for its --help, so
# `batchserve --version` and `batchserve --help` answer at once.

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from app.cli.common import SUMMARIES

Handler = Callable[[argparse.Namespace], int]

# command -> its module under app.cli
MODULES = {"serve": "serve", "train": "train", "import": "imports", "check": "check"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line, with the options of the command named in `argv` only (every
    command's when `argv` is None: the full parser, for documentation)."""
    parser = argparse.ArgumentParser(prog="batchserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"batchserve {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = _command_in(argv) if argv is not None else None
    for name, module in MODULES.items():
        if argv is None or name == wanted:
            importlib.import_module(f"app.cli.{module}").add(commands)
        else:  # listed in --help; its options are not needed in this run
            commands.add_parser(name, help=SUMMARIES[name], add_help=False)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word: the first argument that is not an option (the top level's options,
    --help and --version, take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _version() -> str:
    try:
        return metadata.version("batchserve")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"
