"""`batchserve import keras` of recurrent models and normalized MLPs: Keras (on the torch backend)
trains an Embedding + LSTM + Dense word classifier, an Embedding + 2 Bidirectional GRUs + Dense
one, a SimpleRNN over numeric steps pooled by GlobalAveragePooling1D into a multi-label Dense,
and a Dense/BatchNormalization/Dropout/LayerNormalization multi-label MLP; each is saved as .keras
and .h5, imported with the CLI, served, and its /v1, /v2 HTTP and gRPC answers equal Keras'
`predict` on each item alone within 1e-5 (Keras' GRU gate order and reset_after biases, its
LSTM's single bias, converted to PyTorch's cells)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.clitools import cli
from tests.conftest import live_app, settings_for
from tests.test_families import TOLERANCE, Served, _grpc_rows, _v1_rows, _v2_rows

VOCABULARY = ["<pad>", "<unk>", "good", "great", "fine", "bad", "awful", "poor", "film", "very"]
TEXTS = ["very good film", "awful", "bad bad film", "great unseen film very fine"]
SERIES = [np.linspace(-1, 1, 3 * t, dtype=np.float32).reshape(t, 3) for t in (1, 3, 6)]

KERAS_SCRIPT = """
import json, sys
import keras
import numpy as np
from keras import layers

out = sys.argv[1]
keras.utils.set_random_seed(0)
vocabulary, texts, series = json.loads(open(f"{out}/data.json").read())
index = {w: i for i, w in enumerate(vocabulary)}
ids = lambda text: [index.get(w, 1) for w in text.lower().split()]
rng = np.random.default_rng(0)
x = rng.integers(2, len(vocabulary), (64, 5))
y = (x[:, 0] < 5).astype(np.int64)

def save(model, name, items):
    model.save(f"{out}/{name}.keras")
    model.save(f"{out}/{name}.h5")
    rows = [model.predict(np.asarray([item]), verbose=0)[0].tolist() for item in items]
    json.dump(rows, open(f"{out}/{name}.expected.json", "w"))

words = keras.Sequential([
    keras.Input((None,), dtype="int32"),
    layers.Embedding(len(vocabulary), 8),
    layers.LSTM(6),
    layers.Dropout(0.2),
    layers.Dense(2, activation="softmax"),
])
words.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
words.fit(x, y, epochs=2, verbose=0)
save(words, "words", [ids(t) for t in texts])

bigru = keras.Sequential([
    keras.Input((None,), dtype="int32"),
    layers.Embedding(len(vocabulary), 8),
    layers.Bidirectional(layers.GRU(5, return_sequences=True)),
    layers.Bidirectional(layers.GRU(5)),
    layers.Dense(3, activation="softmax"),
])
bigru.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
bigru.fit(x, x[:, 1] % 3, epochs=2, verbose=0)
save(bigru, "bigru", [ids(t) for t in texts])

steps = keras.Sequential([
    keras.Input((None, 3)),
    layers.SimpleRNN(4, return_sequences=True),
    layers.GlobalAveragePooling1D(),
    layers.Dense(2, activation="sigmoid"),
])
steps.compile(optimizer="adam", loss="binary_crossentropy")
z = rng.standard_normal((32, 4, 3)).astype("float32")
steps.fit(z, (z.sum(axis=1)[:, :2] > 0).astype("float32"), epochs=2, verbose=0)
save(steps, "steps", [np.asarray(s, dtype="float32") for s in series])

vectors = rng.standard_normal((64, 20)).astype("float32")
normed = keras.Sequential([
    keras.Input((20,)),
    layers.Dense(16),
    layers.BatchNormalization(),
    layers.Activation("relu"),
    layers.Dropout(0.3),
    layers.Dense(8, activation="gelu"),
    layers.LayerNormalization(),
    layers.Dense(5, activation="sigmoid"),
])
normed.compile(optimizer="adam", loss="binary_crossentropy")
normed.fit(vectors, (vectors[:, :5] > 0).astype("float32"), epochs=3, verbose=0)
save(normed, "normed", list(vectors[:6]))
json.dump(vectors[:6].tolist(), open(f"{out}/normed.inputs.json", "w"))
"""


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keras-sequences")
    data = [VOCABULARY, TEXTS, [s.tolist() for s in SERIES]]
    (out / "data.json").write_text(json.dumps(data))
    (out / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n")
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-c", KERAS_SCRIPT, str(out)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


MODELS: dict[str, tuple[str, list[str], list[Any], list[str]]] = {
    # name: (task, labels, inputs, import flags)
    "words": ("classify", ["neg", "pos"], TEXTS, ["--vocabulary", "vocab.txt"]),
    "bigru": ("classify", ["a", "b", "c"], TEXTS, ["--vocabulary", "vocab.txt"]),
    "steps": ("multilabel", ["x", "y"], [s.tolist() for s in SERIES], []),
    "normed": ("multilabel", list("abcde"), [], []),  # inputs: normed.inputs.json
}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_recurrent_models_answer_what_keras_predicts_on_every_protocol(
    tmp_path: Path, keras_files: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    repository = tmp_path / "repository"
    served = {}
    for name, (task, labels, inputs, flags) in MODELS.items():
        extra = [keras_files / f if f.endswith(".txt") else f for f in flags]
        run = cli(capsys, "import", "keras", keras_files / f"{name}{suffix}", "--name", name,
                  "--labels", ",".join(labels), *extra, "--repository", repository)  # fmt: skip
        assert run.code == 0, run.err
        expected = np.asarray(json.loads((keras_files / f"{name}.expected.json").read_text()))
        if name == "normed":
            inputs = json.loads((keras_files / "normed.inputs.json").read_text())
        sequence = name == "steps"
        served[name] = Served(name, task, labels, inputs, expected, numeric_sequence=sequence)
    config = json.loads((repository / "bigru" / "1" / "config.json").read_text())
    assert config["architecture"]["num_layers"] == 2 and config["architecture"]["bidirectional"]
    steps_config = json.loads((repository / "steps" / "1" / "config.json").read_text())
    assert steps_config["architecture"]["readout"] == "mean"
    normed = json.loads((repository / "normed" / "1" / "config.json").read_text())["architecture"]
    kinds = [layer["kind"] for layer in normed["layers"]]
    assert kinds == ["linear", "batch_norm", "activation", "dropout", "linear", "activation",
                     "layer_norm", "linear"]  # fmt: skip
    assert normed["layers"][1]["eps"] == pytest.approx(1e-3)  # Keras' default, not PyTorch's
    with live_app(settings_for(repository, grpc_port=0)) as (url, app):
        target = f"127.0.0.1:{app.grpc_port}"
        for name, model in served.items():
            for protocol, rows in (
                ("/v1", _v1_rows(url, model, model.inputs)),
                ("/v2", _v2_rows(url, model)),
                ("gRPC", _grpc_rows(target, model)),
            ):
                assert rows.shape == model.expected.shape, (name, protocol)
                worst = np.abs(rows - model.expected).max()
                assert worst <= TOLERANCE, (name, protocol, rows, model.expected)
