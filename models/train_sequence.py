"""`batchserve train sequence --data FILE`: a recurrent classifier (the `rnn` family) on the user's
sequences: a CSV of `text,label` rows becomes a word-level LSTM over a vocabulary built from the
training split (lowercased, split at white space, `<unk>` for the rest); a JSON-lines file of
`{"steps": [[...], ...], "label": ...}` (numeric steps, [T, F] with T varying) becomes a GRU over
them. Batches are padded and packed with their lengths, as the server runs them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from models.checkpoint import ModelConfig, RNNArchitecture, SequenceInput, WordsInput, build_model
from models.data import DataError
from models.train import Recipe, TrainOptions, _fit, _training_record
from models.userdata import check_labels, label_names, read_labelled_text, split_rows

SEQUENCE_RECIPE = Recipe(epochs=15, batch_size=32, learning_rate=3e-3)
UNKNOWN = "<unk>"
MIN_MAX_LENGTH = 32
EVAL_BATCH = 512


def _read_steps(path: Path) -> list[tuple[np.ndarray, str]]:
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it: {exc}") from None
    width = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            steps = np.asarray(row["steps"], dtype=np.float32)
            label = str(row["label"])
        except (ValueError, KeyError, TypeError):
            raise DataError(
                f'{path}: line {number} is not {{"steps": [[numbers...], ...], "label": ...}}'
            ) from None
        if steps.ndim != 2 or len(steps) == 0 or not np.isfinite(steps).all():
            raise DataError(f"{path}: line {number}: steps must be a non-empty [T, F] of numbers")
        if width is not None and steps.shape[1] != width:
            raise DataError(f"{path}: line {number} has {steps.shape[1]} features, not {width}")
        width = steps.shape[1]
        items.append((steps, label))
    if not items:
        raise DataError(f"{path}: no sequences")
    return items


def train_sequence(
    name: str, path: Path, fractions: tuple[float, float], options: TrainOptions, seed: int
) -> tuple[nn.Module, ModelConfig]:
    numeric = path.suffix.lower() in (".jsonl", ".json")
    if numeric:
        rows: list[Any] = _read_steps(path)
    else:
        rows = [(text.lower().split(), label) for text, label in read_labelled_text(path)]
        if any(not words for words, _ in rows):
            raise DataError(f"{path}: a text has no words")
    labels_per_row = [label for _, label in rows]
    check_labels(labels_per_row, path)
    labels = label_names(labels_per_row)
    index = {label: i for i, label in enumerate(labels)}
    split = split_rows(labels_per_row, fractions, seed, path)
    parts = [
        rows_ if options.limit is None else rows_[: options.limit]
        for rows_ in (split.train, split.valid, split.test)
    ]
    y = torch.tensor([index[label] for label in labels_per_row])
    longest = max(len(item) for item, _ in rows)
    model_input: WordsInput | SequenceInput
    if numeric:
        features = int(rows[0][0].shape[1])
        model_input = SequenceInput(features=features, max_steps=max(longest, MIN_MAX_LENGTH))
        arch = RNNArchitecture(cell="gru", hidden_size=64)
        encoded = [torch.from_numpy(steps) for steps, _ in rows]
    else:
        seen = sorted({w for i in parts[0] for w in rows[i][0]})
        vocabulary = [UNKNOWN, *(w for w in seen if w != UNKNOWN)]
        word_index = {w: i for i, w in enumerate(vocabulary)}
        model_input = WordsInput(
            vocabulary=vocabulary, unknown=UNKNOWN, max_length=max(longest, MIN_MAX_LENGTH)
        )
        arch = RNNArchitecture(cell="lstm", hidden_size=64, embedding_dim=32)
        encoded = [torch.tensor([word_index.get(w, 0) for w in words]) for words, _ in rows]
    config = ModelConfig(
        name=name,
        task="classify",
        description=f"Recurrent classifier trained with batchserve train on {path.name}.",
        architecture=arch,
        input=model_input,
        labels=labels,
        data={"file": path.name, "splits": dict(zip(
            ("train", "valid", "test"), map(len, parts), strict=True))},
    )  # fmt: skip
    torch.manual_seed(options.seed)
    model = build_model(config)
    train = parts[0]

    def batch(rows_: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [encoded[i] for i in rows_]
        lengths = torch.tensor([len(item) for item in items])
        return pad_sequence(items, batch_first=True), lengths

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        chosen = [train[i] for i in idx.tolist()]
        loss: torch.Tensor = nn.functional.cross_entropy(model(*batch(chosen)), y[chosen])
        return loss

    def accuracy(rows_: list[int]) -> float:
        with torch.inference_mode():
            right = 0
            for start in range(0, len(rows_), EVAL_BATCH):
                chunk = rows_[start : start + EVAL_BATCH]
                right += int((model(*batch(chunk)).argmax(-1) == y[chunk]).sum())
        return right / len(rows_)

    fit = _fit(
        name, SEQUENCE_RECIPE, model, batch_loss, len(train), lambda: accuracy(parts[1]), options
    )
    test = parts[2]
    majority = int(torch.bincount(y[test]).max()) / len(test)
    metrics = {
        "test_accuracy": accuracy(test),
        "valid_accuracy": fit.valid_score,
        "majority_class_baseline": majority,
    }
    training = _training_record(SEQUENCE_RECIPE, fit, options)
    return model, config.model_copy(update={"metrics": metrics, "training": training})
