"""`batchserve train regress|multilabel --data FILE.csv --targets A,B`: an MLP on the numeric
columns of a CSV (a header row names them) predicting the `--targets` columns: real values
(regress; the targets are standardized for training and the scaling stored in the config, so
the server answers in the targets' units) or 0/1 labels (multilabel; a sigmoid per label)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.checkpoint import MLPArchitecture, ModelConfig, TargetScaling, VectorInput, build_model
from models.data import DataError
from models.train import Recipe, TrainOptions, _fit, _training_record
from models.userdata import split_rows

TABULAR_RECIPES = {
    "regress": Recipe(epochs=60, batch_size=64, learning_rate=3e-3),
    "multilabel": Recipe(epochs=40, batch_size=64, learning_rate=3e-3),
}
HIDDEN = 64
EVAL_BATCH = 4096


def read_table(path: Path, targets: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(feature names, features [N, F], targets [N, K]) of a CSV with a header row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it: {exc}") from None
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row naming the columns, then data rows")
    header = [h.strip() for h in rows[0]]
    missing = [t for t in targets if t not in header]
    if missing:
        raise DataError(f"{path}: no column(s) {missing} for --targets; the columns: {header}")
    features = [h for h in header if h not in targets]
    if not features:
        raise DataError(f"{path}: every column is a target; no features are left")
    values = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for i, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DataError(f"{path}: line {i + 2} has {len(row)} fields, the header {len(header)}")
        for j, field in enumerate(row):
            try:
                values[i, j] = float(field)
            except ValueError:
                raise DataError(
                    f"{path}: line {i + 2}, column {header[j]!r}: {field!r} is not a number"
                ) from None
    if not np.isfinite(values).all():
        line = int(np.argmin(np.isfinite(values).all(axis=1))) + 2
        raise DataError(f"{path}: line {line} has a NaN or infinite value")
    x = values[:, [header.index(f) for f in features]].astype(np.float32)
    y = values[:, [header.index(t) for t in targets]].astype(np.float32)
    return features, x, y


def train_tabular(
    task: str, name: str, path: Path, targets: list[str], fractions: tuple[float, float],
    options: TrainOptions, seed: int,
) -> tuple[nn.Module, ModelConfig]:  # fmt: skip
    if not targets:
        raise DataError(f"train {task} needs --targets: the CSV column(s) to predict")
    features, x_all, y_all = read_table(path, targets)
    if task == "multilabel" and not np.isin(y_all, (0.0, 1.0)).all():
        raise DataError(f"{path}: multilabel targets {targets} must be 0 or 1")
    split = split_rows(len(x_all), fractions, seed, path)
    parts = [
        rows if options.limit is None else rows[: options.limit]
        for rows in (split.train, split.valid, split.test)
    ]
    x, y = torch.from_numpy(x_all), torch.from_numpy(y_all)
    scaling = None
    if task == "regress":
        train_y = y_all[parts[0]]
        mean, std = train_y.mean(axis=0), train_y.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        scaling = TargetScaling(mean=mean.tolist(), std=std.tolist())
    config = ModelConfig(
        name=name,
        task=task,
        description=f"MLP ({task}) trained with batchserve train on {path.name}.",
        architecture=MLPArchitecture(
            layer_sizes=[x.shape[1], HIDDEN, HIDDEN, len(targets)],
            output="identity" if task == "regress" else "sigmoid",
        ),
        input=VectorInput(shape=[x.shape[1]]),
        labels=targets,
        target_scaling=scaling,
        data={"file": path.name, "features": features, "splits": dict(zip(
            ("train", "valid", "test"), map(len, parts), strict=True))},
    )  # fmt: skip
    torch.manual_seed(options.seed)
    model = build_model(config)
    shift = torch.tensor(scaling.mean) if scaling else torch.zeros(len(targets))
    scale = torch.tensor(scaling.std) if scaling else torch.ones(len(targets))
    train, valid, test = (torch.tensor(rows, dtype=torch.long) for rows in parts)
    loss_fn = nn.MSELoss() if task == "regress" else nn.BCEWithLogitsLoss()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        rows = train[idx]
        target = (y[rows] - shift) / scale if task == "regress" else y[rows]
        loss: torch.Tensor = loss_fn(model(x[rows]), target)
        return loss

    def predict(rows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = torch.cat([model(x[chunk]) for chunk in torch.split(rows, EVAL_BATCH)])
        return out * scale + shift if task == "regress" else torch.sigmoid(out)

    def score(rows: torch.Tensor) -> float:
        """Higher is better: -RMSE (regress), per-label accuracy at 0.5 (multilabel)."""
        if task == "regress":
            return -math.sqrt(float(((predict(rows) - y[rows]) ** 2).mean()))
        return float(((predict(rows) >= 0.5).float() == y[rows]).float().mean())

    recipe = TABULAR_RECIPES[task]
    fit = _fit(name, recipe, model, batch_loss, len(train), lambda: score(valid), options)
    if task == "regress":
        baseline = math.sqrt(float(((y[test] - shift) ** 2).mean()))
        metrics: dict[str, Any] = {
            "test_rmse": -score(test),
            "valid_rmse": -fit.valid_score,
            "mean_baseline_rmse": baseline,
        }
    else:
        majority = float(((y[train].mean(0) >= 0.5).float() == y[test]).float().mean())
        metrics = {
            "test_label_accuracy": score(test),
            "valid_label_accuracy": fit.valid_score,
            "majority_baseline_label_accuracy": majority,
        }
    training = _training_record(recipe, fit, options)
    return model, config.model_copy(update={"metrics": metrics, "training": training})
