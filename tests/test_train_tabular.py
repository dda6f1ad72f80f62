"""`batchserve train regress|multilabel --data FILE.csv --targets ...`: an MLP trained on a CSV's
columns, written with the target scaling (regress) or per-label sigmoid (multilabel) in its
config; it beats the baseline it reports, and the server answers what the checkpoint computes,
in the targets' units."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from tests.clitools import cli
from tests.conftest import live_server, settings_for


def _csv(path: Path, header: list[str], rows: np.ndarray) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([f"{v:.6f}" for v in row] for row in rows)
    return path


def test_regress_recipe_learns_in_the_targets_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 4))
    price = 1000 + 300 * x[:, 0] - 200 * x[:, 1] + rng.normal(0, 10, 400)
    data = _csv(tmp_path / "houses.csv", ["a", "b", "price", "c", "d"],
                np.column_stack([x[:, :2], price, x[:, 2:]]))  # fmt: skip
    run = cli(capsys, "train", "regress", "--data", data, "--targets", "price", "--epochs", "40",
              "--repository", tmp_path / "repo", "--no-progress")  # fmt: skip
    assert run.code == 0, run.err
    directory = tmp_path / "repo" / "houses" / "1"
    config = json.loads((directory / "config.json").read_text())
    assert config["task"] == "regress" and config["labels"] == ["price"]
    assert config["target_scaling"]["mean"][0] == pytest.approx(1000, abs=60)
    metrics = config["metrics"]
    assert metrics["test_rmse"] < metrics["mean_baseline_rmse"] / 3, metrics
    module, _ = load_checkpoint(directory)
    items = x[:5].astype(np.float32)
    with torch.no_grad():
        std, mean = config["target_scaling"]["std"][0], config["target_scaling"]["mean"][0]
        expected = (module(torch.from_numpy(items))[:, 0] * std + mean).tolist()
    with live_server(settings_for(tmp_path / "repo")) as url:
        body = {"inputs": items.tolist()}
        answer = httpx.post(f"{url}/v1/models/houses/predict", json=body).json()
    served = [p["values"]["price"] for p in answer["predictions"]]
    assert np.allclose(served, expected, rtol=1e-5, atol=1e-3)
    assert np.abs(np.asarray(served) - price[:5]).max() < 5 * metrics["test_rmse"] + 1


def test_multilabel_recipe_beats_the_majority_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 6))
    tags = np.column_stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] > 1]).astype(float)
    data = _csv(tmp_path / "tags.csv", [*"uvwxyz", "red", "green", "blue"], np.hstack([x, tags]))
    run = cli(capsys, "train", "multilabel", "--data", data, "--targets", "red,green,blue",
              "--epochs", "30", "--repository", tmp_path / "repo", "--no-progress")  # fmt: skip
    assert run.code == 0, run.err
    config = json.loads((tmp_path / "repo" / "tags" / "1" / "config.json").read_text())
    assert config["task"] == "multilabel" and config["architecture"]["output"] == "sigmoid"
    metrics = config["metrics"]
    assert metrics["test_label_accuracy"] > metrics["majority_baseline_label_accuracy"] + 0.1


def test_a_missing_target_column_is_refused_naming_the_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _csv(tmp_path / "t.csv", ["a", "b"], np.zeros((20, 2)))
    run = cli(capsys, "train", "regress", "--data", data, "--targets", "price",
              "--repository", tmp_path / "repo")  # fmt: skip
    assert run.code != 0 and "price" in run.err and "['a', 'b']" in run.err
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
