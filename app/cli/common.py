"""What the commands share: how they fail, and the names of the settings' variables."""

from __future__ import annotations

import sys

ENV_PREFIX = "BATCHSERVE_"


class UsageError(Exception):
    """An option value the command cannot use; the message names the option."""


def fail(command: str, message: object) -> int:
    """Say what went wrong on one line of stderr; exit code 2."""
    print(f"batchserve {command}: error: {message}", file=sys.stderr)
    return 2


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"
