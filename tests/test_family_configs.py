"""The family contract at the config and importer level: the `architecture` union is the table's,
each family's config and the head's fields are checked (an inconsistent config is refused naming
the field; a one-label classifier is refused), and `batchserve check` loads and probes the new
families as the server would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.checkpoint import (
    CheckpointError,
    ModelConfig,
    build_model,
    read_config,
    save_checkpoint,
)
from models.families import FAMILIES
from models.families.mlp import MLPArchitecture
from tests.clitools import cli

VECTOR = {"kind": "vector", "shape": [8]}
WORDS = {"kind": "words", "vocabulary": ["<unk>", "good", "bad"]}
SEQUENCE = {"kind": "sequence", "features": 3, "max_steps": 16}


def _config(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "m",
        "task": "classify",
        "architecture": {"type": "mlp", "layer_sizes": [8, 4, 2]},
        "input": VECTOR,
        "labels": ["a", "b"],
    }
    return {**base, **fields}


def _refused(directory: Path, config: dict[str, Any], *words: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as refused:
        read_config(directory)
    message = str(refused.value)
    assert all(word in message for word in words), message
    return message


def test_the_architecture_union_is_the_family_table() -> None:
    schema = ModelConfig.model_json_schema()
    mapping = schema["properties"]["architecture"]["discriminator"]["mapping"]
    assert set(mapping) == set(FAMILIES) == {"mlp", "char_rnn_classifier", "char_lm", "rnn", "onnx"}


def test_a_one_label_classifier_is_refused_naming_labels(tmp_path: Path) -> None:
    config = _config(architecture={"type": "mlp", "layer_sizes": [8, 4, 1]}, labels=["price"])
    _refused(tmp_path / "one", config, "labels", "at least 2 labels", "regress")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"threshold": 0.3}, ("threshold", "multilabel")),
        ({"task": "regress", "labels": ["a", "b"]}, ("architecture.output", "identity")),
        (
            {
                "task": "regress",
                "labels": ["a", "b"],
                "architecture": {"type": "mlp", "layer_sizes": [8, 2], "output": "identity"},
                "target_scaling": {"mean": [1.0], "std": [2.0, 3.0]},
            },
            ("target_scaling", "1 means and 2 stds for 2 outputs"),
        ),
        ({"labels": ["a", "b", "c"]}, ("labels", "3 labels for 2 outputs")),
        ({"labels": ["a", "a"]}, ("labels", "repeated")),
        (
            {
                "architecture": {
                    "type": "mlp",
                    "layer_sizes": [8, 4, 2],
                    "layers": [{"kind": "linear", "out_features": 4}, {"kind": "batch_norm"}],
                }
            },
            ("architecture.layers", "[4]", "[4, 2]"),
        ),
        (
            {"architecture": {"type": "rnn", "hidden_size": 4}, "input": WORDS},
            ("embedding_dim", "words input needs an embedding"),
        ),
        (
            {
                "architecture": {"type": "rnn", "hidden_size": 4, "embedding_dim": 3},
                "input": SEQUENCE,
            },
            ("embedding_dim", "not embedded"),
        ),
        (
            {"architecture": {"type": "rnn", "hidden_size": 4}, "input": VECTOR},
            ("input.kind", "text or words or sequence"),
        ),
        (
            {
                "architecture": {"type": "char_lm", "embedding_dim": 2, "hidden_size": 2},
                "input": {"kind": "text", "alphabet": "ab", "max_length": 4},
            },
            ("task", "score"),
        ),
        ({"input": {**WORDS, "unknown": "<oov>"}}, ("input.unknown", "not in input.vocabulary")),
    ],
    ids=[
        "threshold-of-a-classifier",
        "regress-through-softmax",
        "scaling-lengths",
        "labels-vs-outputs",
        "repeated-label",
        "stack-vs-sizes",
        "words-without-embedding",
        "embedded-numbers",
        "rnn-over-a-vector",
        "lm-as-classifier",
        "unknown-not-in-vocabulary",
    ],
)
def test_an_inconsistent_config_is_refused_naming_the_field(
    tmp_path: Path, fields: dict[str, Any], words: tuple[str, ...]
) -> None:
    _refused(tmp_path / "m", _config(**fields), *words)


def _save(root: Path, config: dict[str, Any]) -> Path:
    parsed = ModelConfig.model_validate(config)
    directory = root / parsed.name / "1"
    save_checkpoint(directory, build_model(parsed), parsed)
    return directory


def test_check_loads_and_probes_each_new_family(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repository"
    torch.manual_seed(0)
    stack = [
        {"kind": "linear", "out_features": 4}, {"kind": "batch_norm"},
        {"kind": "activation", "name": "elu"}, {"kind": "dropout", "p": 0.3},
        {"kind": "linear", "out_features": 3}, {"kind": "layer_norm"},
        {"kind": "activation", "name": "softplus"}, {"kind": "linear", "out_features": 2},
    ]  # fmt: skip
    mlp = MLPArchitecture(layer_sizes=[8, 4, 3, 2], layers=stack, output="identity")
    _save(root, _config(name="reg", task="regress", architecture=mlp.model_dump(),
                        target_scaling={"mean": [1.0, 2.0], "std": [3.0, 4.0]}))  # fmt: skip
    rnn = {"type": "rnn", "cell": "lstm", "hidden_size": 3, "embedding_dim": 2, "num_layers": 2,
           "bidirectional": True, "readout": "max"}  # fmt: skip
    _save(root, _config(name="words", architecture=rnn, input=WORDS))
    series = {"type": "rnn", "cell": "rnn", "nonlinearity": "relu", "hidden_size": 3}
    _save(root, _config(name="series", task="multilabel", architecture=series, input=SEQUENCE,
                        threshold=0.7))  # fmt: skip
    # Weights that overflow in the forward pass: refused by the probe, not served.
    broken = _save(root, _config(name="broken", architecture=series, input=SEQUENCE))
    weights = load_file(broken / "model.safetensors")
    weights = {k: torch.full_like(v, 1e30) for k, v in weights.items()}
    save_file(weights, broken / "model.safetensors")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "weights_sha256": None}))
    run = cli(capsys, "check", root)
    assert run.code == 1, run.out
    rows = {line.split()[0]: line for line in run.out.splitlines() if line.split()}
    for name in ("reg", "words", "series"):
        assert name in rows and "ok" in rows[name].split(), run.out
    assert "non-finite" in rows["broken"], run.out


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(5, 3)
        self.conv = nn.Conv1d(3, 3, 2)
        self.gru = nn.GRU(3, 4)
        self.fc = nn.Linear(4, 2)


def test_rnn_keys_that_cannot_be_mapped_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(_Conv().state_dict(), tmp_path / "conv.pt")
    run = cli(capsys, "import", "torch", tmp_path / "conv.pt", "--arch", "rnn", "--alphabet",
              "abcde", "--labels", "x,y", "--repository", tmp_path / "repo")  # fmt: skip
    assert run.code != 0
    assert "conv.weight" in run.err and "conv.bias" in run.err
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_an_mlp_with_one_output_imported_as_a_classifier_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1)).state_dict(),
               tmp_path / "price.pt")  # fmt: skip
    run = cli(capsys, "import", "torch", tmp_path / "price.pt", "--arch", "mlp",
              "--activation", "relu", "--repository", tmp_path / "repo")  # fmt: skip
    assert run.code != 0 and "labels" in run.err and "regress" in run.err
