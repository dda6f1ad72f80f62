"""`batchserve check [REPOSITORY]`: every model version loaded, probed and tabulated; exit 1 on
any failure, for a CI pipeline before deploy."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.cli.common import SUMMARIES, env_name, fail
from app.settings import DEFAULT_REPOSITORY
from models.checkpoint import is_version


def add(commands: Any) -> None:
    check = commands.add_parser(
        "check",
        help=SUMMARIES["check"],
        description="Load every version as the server would (config, name, weights, sha256, "
        "shapes, model.json) and run a warm-up forward pass whose outputs must be finite; "
        "print one line per version. Exit status 1 when any fails: run it in CI before deploy.",
    )
    check.add_argument(
        "repository",
        nargs="?",
        type=Path,
        help=f"default: ${env_name('model_repository')} if set, else the bundled models",
    )
    check.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from models.repository_check import check_repository

    configured = os.environ.get(env_name("model_repository"))
    root = args.repository or (Path(configured) if configured else DEFAULT_REPOSITORY)
    if not root.is_dir():
        return fail("check", f"{root} is not a directory")
    device_problem = _device_problem(args.device)
    if device_problem:
        return fail("check", device_problem)
    results = [*check_repository(root, args.device), *_model_json_checks(root)]
    results.sort(
        key=lambda r: (
            r.name,
            is_version(r.version),
            int(r.version) if is_version(r.version) else 0,
        )
    )
    _print_table(results)
    failed = [r for r in results if not r.ok]
    versions = [r for r in results if is_version(r.version)]
    print(f"{len(versions)} version(s) checked in {root}: {len(failed)} problem(s)")
    if not versions:
        print("no model versions found: expected <name>/<version>/config.json", file=sys.stderr)
    return 1 if failed or not versions else 0


def _model_json_checks(root: Path) -> list[Any]:
    """The version policy of each model (app/serving/repository.py): invalid, or matching no
    version."""
    from app.errors import LoadRequestFailed
    from app.serving.repository import Repository
    from models.repository_check import VersionCheck

    repository = Repository(root)
    results = []
    for name in repository.scan():
        try:
            repository.wanted_versions(name)
        except LoadRequestFailed as exc:
            results.append(VersionCheck(name, "model.json", exc.message))
    return results


def _device_problem(device: str) -> str | None:
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        return f"--device {device!r}: expected cpu, cuda or cuda:N"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: CUDA is not available"
    return None


def _print_table(results: Sequence[Any]) -> None:
    rows = [("MODEL", "VERSION", "RESULT", "DETAIL")]
    rows += [
        (r.name, r.version, "ok" if r.ok else "FAILED", r.detail if r.ok else r.problem)
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]))
