"""`batchserve check`: every version of a repository loaded as the server would, with a warm-up
pass; a table with the reason per failed version and exit status 1, for CI before a deploy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.clitools import cli, command
from tests.conftest import SHIPPED, write_tiny_repository


def _edit(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _row(out: str, name: str, version: str) -> str:
    rows = [line for line in out.splitlines() if line.split()[:2] == [name, version]]
    assert len(rows) == 1, out
    return rows[0]


def _broken_repository(root: Path) -> Path:
    write_tiny_repository(root)
    rnn = root / "names-rnn"
    # 2: the weights changed after config.json recorded their sha256
    shutil.copytree(rnn / "1", rnn / "2")
    state = load_file(rnn / "2" / "model.safetensors")
    state["i2o.bias"] = state["i2o.bias"] + 1
    save_file(state, rnn / "2" / "model.safetensors")
    # 3: config.json names another model
    shutil.copytree(rnn / "1", rnn / "3")
    _edit(rnn / "3", name="names-cnn")
    # 4: weights that overflow in the forward pass (each one finite)
    shutil.copytree(rnn / "1", rnn / "4")
    state = {
        k: torch.full_like(v, 1e38) for k, v in load_file(rnn / "1" / "model.safetensors").items()
    }
    save_file(state, rnn / "4" / "model.safetensors")
    _edit(rnn / "4", weights_sha256=None)
    # 2 of the mlp: a config asking for other layer sizes than the weights have
    mlp = root / "mnist-mlp"
    shutil.copytree(mlp / "1", mlp / "2")
    _edit(mlp / "2", architecture={"type": "mlp", "layer_sizes": [784, 5, 10]}, weights_sha256=None)
    # a model whose files lie in the model directory, not in a version directory
    shutil.copytree(mlp / "1", root / "flat")
    # a version policy naming versions that do not exist
    (root / "names-lm" / "model.json").write_text(
        '{"version_policy": {"specific": {"versions": [9]}}}'
    )
    return root


def test_a_sound_repository_passes_with_one_row_per_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "check", write_tiny_repository(tmp_path / "repo"))
    assert run.code == 0, run.out
    for name in ("mnist-mlp", "names-rnn", "names-lm"):
        assert " ok " in _row(run.out, name, "1")
    assert "3 version(s) checked" in run.out and "0 problem(s)" in run.out


def test_a_broken_repository_fails_with_the_reason_for_each_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "check", _broken_repository(tmp_path / "repo"))
    assert run.code == 1
    assert " ok " in _row(run.out, "names-rnn", "1")
    assert "does not match weights_sha256" in _row(run.out, "names-rnn", "2")
    assert "names the model 'names-cnn'" in _row(run.out, "names-rnn", "3")
    assert "non-finite outputs" in _row(run.out, "names-rnn", "4")
    assert "weight shapes do not match" in _row(run.out, "mnist-mlp", "2")
    assert "move it and the weights into <name>/1/" in _row(run.out, "flat", "-")
    assert "matches its version_policy" in _row(run.out, "names-lm", "model.json")
    assert "6 problem(s)" in run.out


def test_the_bundled_models_pass_by_default_as_the_installed_command() -> None:
    run = command("check", env={"BATCHSERVE_MODEL_REPOSITORY": ""})
    assert run.code == 0, run.out + run.err
    assert str(SHIPPED) in run.out and "0 problem(s)" in run.out


def test_an_empty_repository_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = cli(capsys, "check", tmp_path)
    assert run.code == 1 and "no model versions found" in run.err


def test_a_missing_repository_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "check", tmp_path / "absent")
    assert run.code == 2 and "is not a directory" in run.err
