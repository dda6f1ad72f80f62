"""`batchserve --version` and `--help` answer without importing torch (or the models, or
pydantic): the command loads a subcommand's module only when that subcommand runs. How long
they take is measured by `python -m bench.cli_start`, not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.clitools import ENTRY_POINT, command

PROBE = """
import json, sys
from app.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = None
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "numpy", "pydantic", "models"}
               or m == "app.settings")
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def _loaded_by(*argv: str) -> tuple[object, list[str], str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return report["code"], report["heavy"], result.stdout


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["-h"]])
def test_version_and_help_import_nothing_heavy(argv: list[str]) -> None:
    code, heavy, out = _loaded_by(*argv)
    assert code == 0
    assert heavy == [], f"batchserve {' '.join(argv)} imported {heavy[:8]}"
    assert out.startswith("batchserve ") or "usage: batchserve" in out


def test_help_still_lists_every_command_with_its_summary() -> None:
    _, _, out = _loaded_by("--help")
    for name, summary in [
        ("serve", "serve the models of a repository over HTTP"),
        ("train", "train a recipe"),
        ("import", "make a checkpoint from a Keras file"),
        ("check", "validate every model version"),
    ]:
        line = next((line for line in out.splitlines() if line.strip().startswith(name)), "")
        assert summary in " ".join(out.split()), f"{name}: {line!r}"


def test_a_command_still_gets_its_own_options() -> None:
    # Only the named command's module loads; its options must all be there.
    code, heavy, out = _loaded_by("serve", "--help")
    assert code == 0
    assert "--max-batch-size" in out and "--model_name" in out
    assert "torch" not in heavy  # serve --help needs the settings, not the models
    code, heavy, out = _loaded_by("import", "torch", "--help")
    assert code == 0 and "--arch" in out


def test_the_installed_command_answers_version() -> None:
    assert ENTRY_POINT.exists()
    run = command("--version")
    assert run.code == 0 and run.out.startswith("batchserve 0.")


def test_an_unknown_command_is_a_usage_error_naming_the_choices() -> None:
    code, _, _ = _loaded_by("bogus")
    assert code == 2
    run = command("bogus")
    assert run.code == 2 and "invalid choice: 'bogus'" in run.err and "serve" in run.err
