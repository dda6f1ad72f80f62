"""`batchserve serve`: every setting is an option (generated from Settings, so new ones appear by
themselves) that wins over its variable; PORT and KServe's appended flags; `--version`."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.clitools import cli, command, serving
from tests.conftest import free_port, write_tiny_repository

QUIET = {"BATCHSERVE_ACCESS_LOG": "false", "BATCHSERVE_DEVICE": "cpu"}


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*Settings.model_fields, "port"]:
        monkeypatch.delenv(f"BATCHSERVE_{name.upper()}", raising=False)
    monkeypatch.delenv("PORT", raising=False)


def test_help_lists_every_setting_as_an_option_with_its_variable() -> None:
    run = command("serve", "--help")
    assert run.code == 0
    text = " ".join(run.out.split())  # argparse wraps lines
    for name, info in Settings.model_fields.items():
        assert f"BATCHSERVE_{name.upper()}" in text, name
        secret = "SecretStr" in str(info.annotation)
        assert (f"--{name.replace('_', '-')}" in text) != secret, name  # secrets: env only
    for flag in ("--model_name", "--http_port", "--workers", "PORT"):
        assert flag in text


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    run = cli(capsys, "--version")
    assert run.code == 0 and run.out.strip() == f"batchserve {version('batchserve')}"


def test_an_option_wins_over_its_variable(tmp_path: Path) -> None:
    repository, port = write_tiny_repository(tmp_path / "repo"), free_port()
    env = {**QUIET, "BATCHSERVE_MAX_TOP_K": "2", "BATCHSERVE_PORT": "1"}
    argv = ["--model-repository", str(repository), "--port", str(port), "--max-top-k", "3",
            "--host", "127.0.0.1"]  # fmt: skip
    with serving(argv, port, env, tmp_path / "log") as (url, _):
        path = f"{url}/v1/models/names-rnn/predict"
        allowed = httpx.post(path, json={"inputs": ["Rossi"], "top_k": 3})
        refused = httpx.post(path, json={"inputs": ["Rossi"], "top_k": 4})
    assert allowed.status_code == 200, allowed.text
    assert (
        refused.status_code == 422
        and "top_k: input should be less than or equal to 3" in refused.text
    )


def test_port_is_honoured_when_batchserve_port_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATCHSERVE_PORT", raising=False)  # the server inherits this environment
    repository, port = write_tiny_repository(tmp_path / "repo"), free_port()
    env = {**QUIET, "PORT": str(port), "BATCHSERVE_MODEL_REPOSITORY": str(repository)}
    with serving(["--host", "127.0.0.1"], port, env, tmp_path / "log") as (url, _):
        assert httpx.get(f"{url}/v1/models").status_code == 200


def test_kserve_flags_set_the_port_and_log_the_model_name(tmp_path: Path) -> None:
    repository, port = write_tiny_repository(tmp_path / "repo"), free_port()
    env = {**QUIET, "BATCHSERVE_MODEL_REPOSITORY": str(repository), "PORT": "1"}
    argv = ["--host", "127.0.0.1", "--model_name=digits", f"--http_port={port}", "--workers", "1"]
    with serving(argv, port, env, tmp_path / "log") as (url, _):
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert "digits" in (tmp_path / "log").read_text()


@pytest.mark.parametrize(
    ("argv", "env", "problem"),
    [
        (["--workers", "0"], {}, "--workers: Input should be greater than or equal to 1"),
        (["--workers", "two"], {}, "--workers: Input should be a valid integer"),
        ([], {"BATCHSERVE_WORKERS": "-1"}, "BATCHSERVE_WORKERS: Input should be greater than"),
        (["--workers", "2", "--grpc-port", "0"], {}, "--grpc-port: Value error, 0 (any free"),
        (["--workers", "2"], {"BATCHSERVE_ADMIN_API_KEY": "k"}, "BATCHSERVE_ADMIN_API_KEY: Value"),
    ],
    ids=["zero", "word", "variable", "grpc-port-0", "admin-api"],
)
def test_workers_nonsense_or_a_setting_they_cannot_share_stops_with_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    problem: str,
) -> None:
    _clean_env(monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = cli(capsys, "serve", *argv)
    assert run.code == 2
    assert run.err.startswith(f"batchserve: {problem}"), run.err


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--max-batch-size", "0"], {}, "--max-batch-size"),
        (["--port", "http"], {}, "--port"),
        (["--model-repository", "/nonexistent/repository"], {}, "--model-repository"),
        ([], {"PORT": "99999"}, "PORT"),
        (["--port", "8000"], {"BATCHSERVE_MAX_QUEUE_SIZE": "0"}, "BATCHSERVE_MAX_QUEUE_SIZE"),
    ],
    ids=["flag", "flag-type", "repository", "PORT", "variable-beside-flags"],
)
def test_nonsense_stops_with_exit_2_naming_the_option_or_variable(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    named: str,
) -> None:
    _clean_env(monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = cli(capsys, "serve", *argv)
    assert run.code == 2
    assert run.err.startswith(f"batchserve: {named}:"), run.err


def test_a_log_level_outside_the_choices_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = cli(capsys, "serve", "--log-level", "loud")
    assert run.code == 2 and "--log-level" in run.err
