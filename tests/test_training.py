"""Data fetching and checking, the training entry points, and the checkpoints committed in
models/repository."""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import ModelConfig, load_checkpoint
from models.data import (
    DATA_DIR_ENV,
    NUMPY_ARRAY_GLOBALS,
    DataError,
    MnistData,
    SurnameData,
    data_dir,
    fetch_wheel,
    read_member,
    restricted_loads,
)
from models.text import CharVocab, normalize
from models.train import (
    TrainOptions,
    encode_batch,
    sequence_log_probs,
    train_mnist_mlp,
    train_names_lm,
    train_names_rnn,
    translate,
)

REPOSITORY = Path(__file__).resolve().parents[1] / "models" / "repository"


# --------------------------------------------------------------------------- safe unpickling


class _RunsAShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_a_pickle_that_calls_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps([_RunsAShellCommand(f"touch {marker}")], protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        restricted_loads(payload, NUMPY_ARRAY_GLOBALS, encoding="latin1")
    assert not marker.exists()


def test_restricted_unpickler_loads_numpy_arrays_when_allowed() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    loaded = restricted_loads(pickle.dumps((array, "x"), protocol=4), NUMPY_ARRAY_GLOBALS)
    np.testing.assert_array_equal(loaded[0], array)


def test_restricted_unpickler_with_no_allowed_globals_refuses_numpy() -> None:
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        restricted_loads(pickle.dumps(np.zeros(2), protocol=2))


# --------------------------------------------------------------------------- wheels and checksums


def _fake_wheel(directory: Path, name: str, member: str, content: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / name
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, content)
    return wheel


def test_sha256_check_rejects_a_tampered_file(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, "pkg-1.0-py3-none-any.whl", "pkg/data.bin", b"tampered")
    expected = "0" * 64
    with pytest.raises(DataError, match="sha256"):
        read_member(wheel, "pkg/data.bin", expected)


def test_sha256_check_accepts_the_pinned_bytes(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, "pkg-1.0-py3-none-any.whl", "pkg/data.bin", b"data")
    digest = "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
    assert read_member(wheel, "pkg/data.bin", digest) == b"data"


def test_a_cached_wheel_is_used_without_downloading(tmp_path: Path) -> None:
    # No such project exists on PyPI: only the cached file can satisfy the request.
    name = "batchserve_no_such_project-9.9.9-py3-none-any.whl"
    wheel = _fake_wheel(tmp_path, name, "x", b"")
    assert fetch_wheel("batchserve-no-such-project", "9.9.9", tmp_path) == wheel


def test_data_dir_comes_from_the_argument_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "arg") == tmp_path / "arg"


# --------------------------------------------------------------------------- training entry points


def test_mnist_augmentation_moves_each_image_by_whole_pixels_only() -> None:
    image = torch.zeros(1, 28, 28)
    image[0, 10, 12] = 1.0
    moved = translate(image.repeat(200, 1, 1).view(200, 784), torch.Generator().manual_seed(0), 1)
    rows, cols = (moved.view(200, 28, 28) == 1.0).nonzero()[:, 1:].T
    assert moved.sum().item() == 200  # one lit pixel per image, nothing blurred
    assert set(rows.tolist()) == {9, 10, 11} and set(cols.tolist()) == {11, 12, 13}


def _tiny(tmp_path: Path, seed: int = 0) -> TrainOptions:
    return TrainOptions(out=tmp_path, epochs=1, seed=seed, limit=300, progress=False)


def test_tiny_mnist_training_writes_a_checkpoint_that_reproduces_its_metrics(
    tmp_path: Path, mnist: MnistData
) -> None:
    config = train_mnist_mlp(_tiny(tmp_path), mnist)
    model, loaded = load_checkpoint(tmp_path / "mnist-mlp" / "1")
    x, y = torch.from_numpy(mnist.test.images[:300]), torch.from_numpy(mnist.test.labels[:300])
    with torch.inference_mode():
        accuracy = (model(x).argmax(-1) == y).double().mean().item()
    assert loaded == config
    assert accuracy == config.metrics["test_accuracy"]


def test_tiny_names_rnn_training_writes_a_checkpoint_that_reproduces_its_metrics(
    tmp_path: Path, surnames: SurnameData
) -> None:
    config = train_names_rnn(_tiny(tmp_path), surnames)
    model, loaded = load_checkpoint(tmp_path / "names-rnn" / "1")
    test = surnames.test[:300]
    y = torch.tensor([config.labels.index(country) for _, country in test])
    with torch.inference_mode():
        predicted = model(*encode_batch([n for n, _ in test], CharVocab(loaded_alphabet(loaded))))
    assert loaded == config
    assert (predicted.argmax(-1) == y).double().mean().item() == config.metrics["test_accuracy"]


def test_tiny_names_lm_training_writes_a_checkpoint_that_reproduces_its_metrics(
    tmp_path: Path, surnames: SurnameData
) -> None:
    config = train_names_lm(_tiny(tmp_path), surnames)
    model, loaded = load_checkpoint(tmp_path / "names-lm" / "1")
    test = [name for name, _ in surnames.test[:300]]
    log_prob = sequence_log_probs(model, test, CharVocab(loaded_alphabet(loaded))).sum().item()
    perplexity = math.exp(-log_prob / sum(len(n) + 1 for n in test))
    assert loaded == config
    assert perplexity == pytest.approx(config.metrics["test_perplexity"], rel=1e-9)


def loaded_alphabet(config: ModelConfig) -> str:
    return config.input.alphabet  # type: ignore[union-attr]


Trainer = Callable[[TrainOptions, SurnameData], ModelConfig]


@pytest.mark.parametrize("trainer", [train_names_rnn, train_names_lm], ids=["rnn", "lm"])
def test_training_with_the_same_seed_gives_identical_weights(
    tmp_path: Path, surnames: SurnameData, trainer: Trainer
) -> None:
    first = trainer(_tiny(tmp_path / "a"), surnames)
    second = trainer(_tiny(tmp_path / "b"), surnames)
    other_seed = trainer(_tiny(tmp_path / "c", seed=1), surnames)
    assert first.weights_sha256 == second.weights_sha256
    assert other_seed.weights_sha256 != first.weights_sha256


# --------------------------------------------------------------------------- committed checkpoints


def committed(name: str) -> tuple[torch.nn.Module, ModelConfig]:
    return load_checkpoint(REPOSITORY / name / "1")


def test_committed_mnist_mlp_reports_test_accuracy_of_at_least_0_975() -> None:
    _, config = committed("mnist-mlp")
    assert config.metrics["test_accuracy"] >= 0.975
    assert config.data["sha256"] and config.data["splits"]["test"] == 10_000


def test_committed_mnist_mlp_achieves_its_reported_accuracy(mnist: MnistData) -> None:
    model, config = committed("mnist-mlp")
    x, y = torch.from_numpy(mnist.test.images), torch.from_numpy(mnist.test.labels)
    with torch.inference_mode():
        accuracy = (model(x).argmax(-1) == y).double().mean().item()
    # The metric was computed at training time, perhaps on another CPU: a digit whose two best
    # classes tie to the last bit may flip, so one digit of 10,000 is allowed.
    assert accuracy == pytest.approx(config.metrics["test_accuracy"], abs=1.5e-4)


def _predict_countries(names: list[str]) -> list[str]:
    model, config = committed("names-rnn")
    vocab = CharVocab(loaded_alphabet(config))
    chars, lengths = encode_batch([normalize(n, "ascii") for n in names], vocab)
    with torch.inference_mode():
        return [config.labels[i] for i in model(chars, lengths).argmax(-1).tolist()]


def test_committed_names_rnn_predicts_japan_for_nakamura_and_poland_for_kowalski() -> None:
    assert _predict_countries(["Nakamura", "Kowalski"]) == ["JP", "PL"]


def test_committed_names_rnn_beats_the_majority_class_baseline_by_far() -> None:
    _, config = committed("names-rnn")
    assert config.metrics["test_accuracy"] > 5 * config.metrics["majority_class_baseline"]


def test_committed_names_lm_scores_johnson_above_xqjzvbk() -> None:
    model, config = committed("names-lm")
    johnson, gibberish = sequence_log_probs(
        model, ["Johnson", "Xqjzvbk"], CharVocab(loaded_alphabet(config))
    ).tolist()
    assert johnson > gibberish


def test_committed_names_lm_beats_the_unigram_baseline() -> None:
    _, config = committed("names-lm")
    assert config.metrics["test_perplexity"] < config.metrics["unigram_baseline_perplexity"]
