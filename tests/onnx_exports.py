"""Tiny real models exported to ONNX the ways users export them: torch.onnx.export(dynamo=True)
with dynamic shapes, and Keras 3's model.export(format="onnx") on the torch backend (in its own
Python: Keras picks its backend at import). Each comes with its framework's own forward pass,
the reference the served answers are compared with."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
ROOT = Path(__file__).resolve().parent.parent


class GruClassifier(nn.Module):
    """Token ids -> embedding -> GRU -> the hidden state at each item's last real step -> 4
    classes: padding after an item's end cannot reach its answer."""

    def __init__(self, vocab: int = len(ALPHABET), labels: int = 4) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.out = nn.Linear(16, labels)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps, _ = self.gru(self.embedding(tokens))
        last = steps[torch.arange(steps.shape[0]), lengths - 1]
        return torch.log_softmax(self.out(last), dim=-1)


class LastStepGru(nn.Module):
    """The same, reading the last step of the tensor: it has no lengths input, so padding would
    change its answers; the server must group its items by length."""

    def __init__(self, vocab: int = len(ALPHABET), labels: int = 3) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.out = nn.Linear(12, labels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        steps, _ = self.gru(self.embedding(tokens))
        return self.out(steps[:, -1])


class DigitCnn(nn.Module):
    """A small CNN over [1, 28, 28] images: an architecture no native family has."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.out = nn.Linear(4 * 14 * 14, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(torch.relu(self.conv(images)))
        return self.out(features.flatten(1))


def export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: list[str],
    dynamic: tuple[dict[int, Any], ...],
    output: str = "logits",
) -> Path:
    """torch.onnx.export(dynamo=True) with the given dynamic dimensions, quietly."""
    module.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=names,
            output_names=[output],
            verbose=False,
        )
        assert program is not None
        program.save(str(path))
    return path


EXPORT_SCRIPT = """
import json, sys
import torch
from tests.onnx_exports import CLASSES, export
spec = json.loads(sys.argv[1])
module = CLASSES[spec["class"]]()
module.load_state_dict(torch.load(spec["state"], weights_only=True))
args = tuple(
    torch.tensor(a["values"]) if "values" in a else torch.zeros(a["zeros"], dtype=torch.long)
    for a in spec["args"]
)
dims = {name: torch.export.Dim(name) for axes in spec["dynamic"] for name in axes.values()}
dynamic = tuple({int(axis): dims[name] for axis, name in axes.items()} for axes in spec["dynamic"])
export(module, args, spec["path"], spec["names"], dynamic, spec["output"])
"""


def export_fresh(
    module: nn.Module,
    args: list[dict[str, Any]],
    path: Path,
    names: list[str],
    dynamic: list[dict[int, str]],
    output: str = "logits",
) -> Path:
    """`export` in a new Python: after one recurrent model has been exported, torch 2.13's
    exporter fixes the sequence length of the next ones in the same process (silently; the
    importer refuses such a graph). `args`: {"zeros": shape} (int64) or {"values": [...]};
    `dynamic`: per input, axis -> a dimension name (the same name: the same dimension)."""
    state = path.with_suffix(".state.pt")
    torch.save(module.state_dict(), state)
    spec = {
        "class": type(module).__name__,
        "state": str(state),
        "args": args,
        "path": str(path),
        "names": names,
        "dynamic": dynamic,
        "output": output,
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", EXPORT_SCRIPT, json.dumps(spec)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return path


def batch_dim() -> Any:
    return torch.export.Dim("batch")


def tokens_of(text: str) -> list[int]:
    return [ALPHABET.index(c) for c in text]


KERAS_SCRIPT = """
import sys
import keras
import numpy as np

out, inputs = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((20,)),
    keras.layers.Dense(16, activation="relu"),
    keras.layers.Dense(5, activation="softmax"),
])
x = np.load(inputs)
model(x[:1])
model.export(out, format="onnx", verbose=False)
np.save(out + ".predict.npy", model.predict(x, verbose=0))
"""


def export_keras(path: Path, inputs: np.ndarray) -> np.ndarray:
    """A Keras 3 Dense model (20 -> 16 relu -> 5 softmax) exported to `path`; returns Keras'
    own predict() of `inputs`."""
    np.save(path.with_suffix(".inputs.npy"), inputs)
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    script = [sys.executable, "-c", KERAS_SCRIPT, str(path), str(path.with_suffix(".inputs.npy"))]
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    predicted: np.ndarray = np.load(str(path) + ".predict.npy")
    return predicted


class TinyLM(nn.Module):
    """A character language model over the alphabet, BOS and EOS: token ids [B, T] in,
    next-token logits [B, T, V] out; no lengths input (causal: padding after an item's end
    cannot reach its steps, but the server groups by length all the same)."""

    def __init__(self, vocab: int = len(ALPHABET) + 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        steps, _ = self.gru(self.embedding(tokens))
        return self.head(steps)


CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (GruClassifier, LastStepGru, DigitCnn, TinyLM)
}
