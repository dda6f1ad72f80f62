"""What the commands share: their summaries, how they fail, and the names of the settings'
variables. It imports nothing heavy: `batchserve --help` reads it."""

from __future__ import annotations

import sys

ENV_PREFIX = "BATCHSERVE_"

# Each command's line in `batchserve --help`.
SUMMARIES = {
    "serve": "serve the models of a repository over HTTP",
    "train": "train a recipe on a bundled data set or your own data",
    "import": "make a checkpoint from a Keras file or a PyTorch state_dict",
    "check": "validate every model version of a repository (exit 1 on any failure)",
}


class UsageError(Exception):
    """An option value the command cannot use; the message names the option."""


def fail(command: str, message: object) -> int:
    """Say what went wrong on one line of stderr; exit code 2."""
    print(f"batchserve {command}: error: {message}", file=sys.stderr)
    return 2


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"
