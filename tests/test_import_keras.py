"""`batchserve import keras`: real `.keras` and `.h5` files written by Keras (on the torch backend)
are imported, served over HTTP and answer what `model.predict` answers; other layers are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.clitools import cli, files_in, v2_outputs
from tests.conftest import live_server, settings_for
from tests.numbers import assert_same_numbers

# Run by a separate Python: Keras picks its backend at import and sets global state.
KERAS_SCRIPT = """
import sys
import keras
import numpy as np
from keras import layers

out = sys.argv[1]
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.random((512, 784), dtype=np.float32)
y = rng.integers(0, 10, 512)

def save(model, name):
    model.save(f"{out}/{name}.keras")
    model.save(f"{out}/{name}.h5")
    np.save(f"{out}/{name}.predictions.npy", model.predict(x[:16], verbose=0))

# The seed's model: 784 -> Dense(64, relu) -> Dense(64, relu) -> Dense(10, softmax).
seed = keras.Sequential([
    keras.Input((784,)),
    layers.Dense(64, activation="relu"),
    layers.Dense(64, activation="relu"),
    layers.Dense(10, activation="softmax"),
])
seed.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
seed.fit(x, y, epochs=2, batch_size=64, verbose=0)
save(seed, "seed")

# 28x28 images through Flatten, tanh, Dropout and a linear output (logits).
images = keras.Sequential([
    keras.Input((28, 28)),
    layers.Flatten(),
    layers.Dense(32),
    layers.Activation("tanh"),
    layers.Dropout(0.5),
    layers.Dense(10),
])
images.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
images.fit(x.reshape(-1, 28, 28), y, epochs=1, verbose=0)
images.save(f"{out}/images.keras")
np.save(f"{out}/images.predictions.npy", images.predict(x[:16].reshape(-1, 28, 28), verbose=0))

conv = keras.Sequential([
    keras.Input((28, 28, 1)),
    layers.Conv2D(4, 3, activation="relu", name="conv"),
    layers.MaxPooling2D(name="pool"),
    layers.Flatten(),
    layers.Dense(10, activation="softmax"),
])
conv.save(f"{out}/conv.keras")
conv.save(f"{out}/conv.h5")

mixed = keras.Sequential([
    keras.Input((8,)),
    layers.Dense(4, activation="relu", name="first"),
    layers.Dense(4, activation="sigmoid", name="second"),
    layers.Dense(2, activation="softmax"),
])
mixed.save(f"{out}/mixed.keras")
np.save(f"{out}/mixed.predictions.npy", mixed.predict(x[:16, :8], verbose=0))
np.save(f"{out}/inputs.npy", x[:16])
"""


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keras")
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-c", KERAS_SCRIPT, str(out)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_the_seed_model_served_over_http_answers_what_keras_predicts(
    tmp_path: Path, keras_files: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    repository = tmp_path / "repo"
    labels = ",".join("zero one two three four five six seven eight nine".split())
    run = cli(capsys, "import", "keras", keras_files / f"seed{suffix}", "--name", "seed",
              "--labels", labels, "--input-range", "0,1", "--repository", repository)  # fmt: skip
    assert run.code == 0, run.err
    config = json.loads((repository / "seed" / "1" / "config.json").read_text())
    assert config["architecture"]["layer_sizes"] == [784, 64, 64, 10]
    assert config["architecture"]["activation"] == "relu"
    inputs = np.load(keras_files / "inputs.npy")
    with live_server(settings_for(repository)) as url:
        served = v2_outputs(url, "seed", inputs.tolist())
    expected = np.load(keras_files / "seed.predictions.npy").tolist()
    assert_same_numbers(served["probabilities"], expected, tolerance=1e-5)
    assert served["label"][0][0] == labels.split(",")[int(np.argmax(expected[0]))]


def test_keras_and_h5_files_of_one_model_give_the_same_weights(
    tmp_path: Path, keras_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for suffix in (".keras", ".h5"):
        args = ("import", "keras", keras_files / f"seed{suffix}", "--repository", tmp_path)
        assert cli(capsys, *args).code == 0
    sha = [json.loads((tmp_path / "seed" / v / "config.json").read_text())["weights_sha256"]
           for v in ("1", "2")]  # fmt: skip
    assert sha[0] == sha[1]


def test_flatten_activation_layers_and_logits_serve_as_softmax_of_keras_outputs(
    tmp_path: Path, keras_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "import", "keras", keras_files / "images.keras", "--repository", tmp_path)
    assert run.code == 0, run.err
    config = json.loads((tmp_path / "images" / "1" / "config.json").read_text())
    assert config["input"]["also_shapes"] == [[28, 28]]
    assert config["architecture"]["activation"] == "tanh"
    inputs = np.load(keras_files / "inputs.npy").reshape(-1, 28, 28)
    logits = np.load(keras_files / "images.predictions.npy").astype(np.float64)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    with live_server(settings_for(tmp_path)) as url:
        served = v2_outputs(url, "images", inputs.tolist())
    assert_same_numbers(served["probabilities"], expected.tolist(), tolerance=1e-5)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_conv_model_is_refused_naming_its_layers_and_nothing_is_written(
    tmp_path: Path, keras_files: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    run = cli(capsys, "import", "keras", keras_files / f"conv{suffix}", "--repository", tmp_path)
    assert run.code == 2
    assert "conv (Conv2D)" in run.err and "pool (MaxPooling2D)" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert files_in(tmp_path) == []


def test_hidden_layers_with_different_activations_serve_as_a_layer_stack(
    tmp_path: Path, keras_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "import", "keras", keras_files / "mixed.keras", "--repository", tmp_path)
    assert run.code == 0, run.err
    config = json.loads((tmp_path / "mixed" / "1" / "config.json").read_text())
    names = [layer.get("name") for layer in config["architecture"]["layers"]]
    assert names == [None, "relu", None, "sigmoid", None]
    inputs = np.load(keras_files / "inputs.npy")[:, :8]
    with live_server(settings_for(tmp_path)) as url:
        served = v2_outputs(url, "mixed", inputs.tolist())
    expected = np.load(keras_files / "mixed.predictions.npy").tolist()
    assert_same_numbers(served["probabilities"], expected, tolerance=1e-5)


def test_a_file_that_is_not_keras_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "model.h5"
    bogus.write_bytes(b"not an HDF5 file at all")
    run = cli(capsys, "import", "keras", bogus, "--repository", tmp_path / "repo")
    assert run.code == 2 and "neither a .keras archive nor an HDF5" in run.err
    assert files_in(tmp_path / "repo") == []


def test_wrong_number_of_labels_is_refused(
    tmp_path: Path, keras_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "import", "keras", keras_files / "seed.keras", "--labels", "a,b,c",
              "--repository", tmp_path)  # fmt: skip
    assert run.code == 2 and "3 labels given for the model's 10 outputs" in run.err
    assert files_in(tmp_path) == []


def test_without_h5py_the_error_says_how_to_install_it_in_a_checkout(tmp_path: Path) -> None:
    # An interpreter where `import h5py` fails, as in an install without the keras extra.
    (tmp_path / "digits.keras").write_bytes(b"not read: h5py is missing first")
    script = (
        "import sys; sys.modules['h5py'] = None\n"
        "from app.cli import main\n"
        f"sys.exit(main(['import', 'keras', {str(tmp_path / 'digits.keras')!r}, "
        f"'--repository', {str(tmp_path / 'repo')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "needs h5py" in result.stderr and "-e '.[keras]'" in result.stderr
    assert "'batchserve[keras]'" not in result.stderr  # batchserve is not on PyPI
    assert not (tmp_path / "repo").exists()
