"""`batchserve train`: the recipes of models.train_cli, on bundled or the user's data."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import SUMMARIES, fail


def add(commands: Any) -> None:
    from models import train_cli

    train = commands.add_parser(
        "train",
        help=SUMMARIES["train"],
        description=train_cli.__doc__,
    )
    train_cli.add_arguments(train)
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from models import train_cli

    try:
        train_cli.report(train_cli.run(args))
    except train_cli.USER_ERRORS as exc:
        return fail("train", exc)
    return 0
