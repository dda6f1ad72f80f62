"""`batchserve train sequence --data FILE`: a word-level LSTM from a CSV of text,label, and a GRU
over numeric steps from JSON lines; each beats its majority baseline, and the server answers what
the written checkpoint computes on each item alone (items of different lengths in one request)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from tests.clitools import cli
from tests.conftest import live_server, settings_for
from tests.numbers import PROBABILITY_TOLERANCE

GOOD, BAD = ["good", "great", "lovely", "fine"], ["bad", "awful", "poor", "dull"]
FILLER = ["the", "film", "was", "a", "story", "very", "and"]


def _reviews(path: Path) -> Path:
    rng = random.Random(0)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(160):
            label = "pos" if i % 2 else "neg"
            words = rng.choices(FILLER, k=rng.randint(1, 6))
            words.insert(rng.randint(0, len(words)), rng.choice(GOOD if i % 2 else BAD))
            writer.writerow([" ".join(words), label])
    return path


def _series(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(160):
        steps = rng.standard_normal((int(rng.integers(1, 9)), 2)) * 0.3
        steps[:, 0] += 1.0 if i % 2 else -1.0
        lines.append(json.dumps({"steps": steps.tolist(), "label": "up" if i % 2 else "down"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _served_vs_module(repository: Path, name: str, items: list[Any], args: Any) -> None:
    module, config = load_checkpoint(repository / name / "1")
    with torch.no_grad():
        expected = [torch.softmax(module(*a), -1)[0].tolist() for a in args]
    with live_server(settings_for(repository)) as url:
        body = {"inputs": items, "top_k": len(config.labels)}
        predictions = httpx.post(f"{url}/v1/models/{name}/predict", json=body).json()["predictions"]
    for prediction, row in zip(predictions, expected, strict=True):
        for ranked in prediction["top_k"]:
            assert abs(ranked["probability"] - row[ranked["index"]]) <= PROBABILITY_TOLERANCE


def test_a_word_classifier_trains_on_a_text_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "train", "sequence", "--data", _reviews(tmp_path / "reviews.csv"),
              "--epochs", "8", "--repository", tmp_path / "repo", "--no-progress")  # fmt: skip
    assert run.code == 0, run.err
    config = json.loads((tmp_path / "repo" / "reviews" / "1" / "config.json").read_text())
    assert config["input"]["kind"] == "words" and config["input"]["unknown"] == "<unk>"
    assert config["architecture"]["cell"] == "lstm"
    metrics = config["metrics"]
    assert metrics["test_accuracy"] > metrics["majority_class_baseline"] + 0.2, metrics
    texts = ["a good film", "the story was very awful and dull", "unseen words only"]
    vocabulary = config["input"]["vocabulary"]
    ids = [[vocabulary.index(w) if w in vocabulary else 0 for w in t.split()] for t in texts]
    args = [(torch.tensor([row]), torch.tensor([len(row)])) for row in ids]
    _served_vs_module(tmp_path / "repo", "reviews", texts, args)


def test_a_numeric_sequence_classifier_trains_on_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "train", "sequence", "--data", _series(tmp_path / "series.jsonl"),
              "--epochs", "8", "--repository", tmp_path / "repo", "--no-progress")  # fmt: skip
    assert run.code == 0, run.err
    config = json.loads((tmp_path / "repo" / "series" / "1" / "config.json").read_text())
    assert config["input"] == {**config["input"], "kind": "sequence", "features": 2}
    metrics = config["metrics"]
    assert metrics["test_accuracy"] > metrics["majority_class_baseline"] + 0.2, metrics
    items = [[[1.0, 0.0]], [[-1.0, 0.2], [-0.8, 0.1], [-1.2, 0.0]], [[0.9, 0.1]] * 7]
    args = [(torch.tensor([item]), torch.tensor([len(item)])) for item in items]
    _served_vs_module(tmp_path / "repo", "series", items, args)
