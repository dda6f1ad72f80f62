"""Turning a Keras file or a PyTorch state_dict into a batchserve checkpoint: the architecture comes
from the weights, the rest of config.json (labels, alphabet, input range...) from the user, and the
result must load and give finite outputs before anything is written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from models.checkpoint import (
    CheckpointError,
    ModelConfig,
    SubwordsInput,
    build_model,
    check_weights,
    load_tokenizer,
)
from models.keras_file import read_keras
from models.keras_sequence import (
    KerasSequence,
    is_sequence_model,
    read_keras_config,
    read_keras_sequence,
)
from models.probe import check_finite_outputs
from models.subwords import TokenizerFileError, read_tokenizer
from models.torch_file import (
    Mapped,
    is_plain_linear,
    map_char_lm,
    map_char_rnn,
    map_mlp,
    map_mlp_stack,
    map_sequence_classifier,
    read_state_dict,
)

DEFAULT_MAX_LENGTH = 32
NO_UNKNOWN = object()  # a words input without an unknown token (None means "not given")
FROM_THE_FILE = ("architecture", "weights_file", "weights_sha256", "format_version", "task")


@dataclass(frozen=True)
class UserFacts:
    """What a config needs that weights cannot say; None leaves it to `base` or the default."""

    name: str
    labels: list[str] | None = None
    description: str | None = None
    input_range: tuple[float, float] | None = None
    input_shape: list[int] | None = None  # another layout of a vector input, e.g. [28, 28]
    alphabet: str | None = None
    max_length: int | None = None
    normalize: str | None = None
    activation: str | None = None  # mlp from a state_dict: the layers' activation
    hidden_activation: str | None = None  # the i2h/i2o RNN: tanh or identity
    # The head: classify (default), multilabel (with threshold) or regress (with the targets'
    # training scaling: served = output * target_std + target_mean).
    task: str | None = None
    threshold: float | None = None
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    layers: list[str] | None = None  # mlp from an nn.Sequential: every layer, in order
    # rnn: the input is one of characters (alphabet), words (vocabulary) or numeric steps
    # (features); readout and the plain RNN's nonlinearity are not in the weights.
    vocabulary: list[str] | None = None
    lowercase: bool | None = None
    split: str | None = None
    unknown: str | None = None
    features: int | None = None
    max_steps: int | None = None
    readout: str | None = None
    nonlinearity: str | None = None
    # rnn or char_lm over subwords: a `tokenizers` file (copied into the version), and a
    # language model's start and end tokens (tokens of that file).
    tokenizer: Path | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    base: dict[str, Any] = field(default_factory=dict)  # a partial config.json (--config)


def read_base_config(path: Path) -> dict[str, Any]:
    """A partial config.json: any of its fields except those the imported file decides."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a JSON file: {exc}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object of config.json fields")
    fixed = sorted(set(value) & set(FROM_THE_FILE))
    if fixed:
        raise CheckpointError(f"{path}: sets {fixed}, which come from the imported weights")
    return value


# --------------------------------------------------------------------------- config assembly


def _config(
    facts: UserFacts,
    task: str,
    architecture: dict[str, Any],
    model_input: dict[str, Any],
    num_outputs: int | None,
) -> ModelConfig:
    data: dict[str, Any] = {**facts.base, "name": facts.name, "task": task}
    if facts.threshold is not None:
        data["threshold"] = facts.threshold
    if facts.target_mean is not None or facts.target_std is not None:
        count = num_outputs or 1
        data["target_scaling"] = {
            "mean": facts.target_mean or [0.0] * count,
            "std": facts.target_std or [1.0] * count,
        }
    data["architecture"] = architecture
    given = {k: None if v is NO_UNKNOWN else v for k, v in model_input.items() if v is not None}
    data["input"] = {**facts.base.get("input", {}), **given}
    if facts.description is not None:
        data["description"] = facts.description
    if facts.labels is not None:
        data["labels"] = facts.labels
    elif num_outputs is not None and "labels" not in data:
        data["labels"] = [str(i) for i in range(num_outputs)]
    if num_outputs is not None and len(data["labels"]) != num_outputs:
        raise CheckpointError(
            f"{len(data['labels'])} labels given for the model's {num_outputs} outputs"
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise CheckpointError(f"the config is invalid: {problems}") from None


def _vector_input(facts: UserFacts, width: int, file_shape: list[int]) -> dict[str, Any]:
    shape = facts.input_shape or (file_shape if len(file_shape) > 1 else None)
    low, high = facts.input_range or (None, None)
    return {
        "kind": "vector",
        "shape": [width],
        "also_shapes": [shape] if shape else None,
        "minimum": low,
        "maximum": high,
    }


def _text_input(facts: UserFacts, alphabet_size: int, arch: str) -> dict[str, Any]:
    alphabet = facts.alphabet or facts.base.get("input", {}).get("alphabet")
    if alphabet is None:
        raise CheckpointError(
            f"a {arch} needs its alphabet (--alphabet): the characters in one-hot order, "
            f"{alphabet_size} of them for these weights"
        )
    if len(alphabet) != alphabet_size:
        raise CheckpointError(
            f"the weights take a one-hot of {alphabet_size} characters; the alphabet has "
            f"{len(alphabet)}"
        )
    if len(set(alphabet)) != len(alphabet):
        raise CheckpointError("the alphabet repeats a character")
    base = facts.base.get("input", {})
    return {
        "kind": "text",
        "alphabet": alphabet,
        "max_length": facts.max_length or base.get("max_length", DEFAULT_MAX_LENGTH),
        "normalize": facts.normalize or base.get("normalize", "none"),
    }


def _words_input(facts: UserFacts, size: int) -> dict[str, Any]:
    vocabulary = facts.vocabulary or facts.base.get("input", {}).get("vocabulary", [])
    if len(vocabulary) != size:
        raise CheckpointError(
            f"the weights have {size} word rows; the vocabulary has {len(vocabulary)} words"
        )
    return {
        "kind": "words",
        "vocabulary": vocabulary,
        "lowercase": facts.lowercase,
        "split": facts.split,
        # "" (--unknown ''): no unknown token, words outside the vocabulary are refused.
        "unknown": NO_UNKNOWN if facts.unknown == "" else facts.unknown,
        "max_length": facts.max_length,
    }


def _subwords_input(facts: UserFacts, size: int, language_model: bool) -> dict[str, Any]:
    """A subwords input from --tokenizer, checked against the weights' `size` token rows."""
    if facts.tokenizer is None:
        raise CheckpointError("a subwords input needs its tokenizer file: --tokenizer FILE")
    base = facts.base.get("input", {})
    bos = facts.bos_token or base.get("bos_token")
    eos = facts.eos_token or base.get("eos_token")
    if language_model and (bos is None or eos is None):
        raise CheckpointError(
            "a char_lm over subwords needs its start and end tokens, tokens of the tokenizer "
            "file: --bos-token and --eos-token (e.g. '<s>' and '</s>')"
        )
    try:
        tokenizer = read_tokenizer(facts.tokenizer, None)
    except TokenizerFileError as exc:
        raise CheckpointError(str(exc)) from None
    if tokenizer.size != size:
        raise CheckpointError(
            f"the weights have {size} token rows; {facts.tokenizer.name} has {tokenizer.size} "
            "tokens (added tokens included)"
        )
    return {
        "kind": "subwords",
        "tokenizer_file": base.get("tokenizer_file", "tokenizer.json"),
        "vocab_size": size,
        "max_length": facts.max_length,
        "bos_token": bos,
        "eos_token": eos,
    }


def _attach_tokenizer(config: ModelConfig, facts: UserFacts) -> None:
    """Read --tokenizer against the config's subwords input (its tokens, start and end tokens);
    the version's copy is written with the checkpoint (`save_checkpoint`)."""
    spec = config.input
    if isinstance(spec, SubwordsInput):
        assert facts.tokenizer is not None
        spec.attach(load_tokenizer(facts.tokenizer, spec))


def _finish(config: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[nn.Module, ModelConfig]:
    model = build_model(config)
    check_weights(model, state)
    model.load_state_dict(state)
    model.eval()
    check_finite_outputs(model, config)
    return model, config


# --------------------------------------------------------------------------- the two importers


def import_keras(path: Path, facts: UserFacts) -> tuple[nn.Module, ModelConfig]:
    if path.is_file() and is_sequence_model(read_keras_config(path)):
        return _import_keras_sequence(read_keras_sequence(path), facts, path)
    keras = read_keras(path)
    head = {"sigmoid": "multilabel"}.get(keras.output_activation, "classify")
    task = facts.task or head
    if keras.output_activation in ("softmax", "sigmoid") and task != head:
        raise CheckpointError(
            f"{path}: the last Dense layer's {keras.output_activation} makes it a {head} model"
        )
    architecture: dict[str, Any] = {
        "type": "mlp",
        "layer_sizes": keras.layer_sizes,
        "activation": keras.activation,
        "output": HEAD_OUTPUT[task],
    }
    if keras.stack is not None:
        architecture["layers"] = keras.stack
        if any(layer.get("name") == "softmax" for layer in keras.stack):
            raise CheckpointError(f"{path}: softmax only on the last Dense layer")
    model_input = _vector_input(facts, keras.layer_sizes[0], keras.input_shape)
    config = _config(facts, task, architecture, model_input, keras.layer_sizes[-1])
    return _finish(config, keras.state)


def _import_keras_sequence(
    keras: KerasSequence, facts: UserFacts, path: Path
) -> tuple[nn.Module, ModelConfig]:
    found = dict(keras.facts)
    found["input_size"] = int(keras.state["rnn.weight_ih_l0"].shape[1])
    task = found.pop("task")
    if facts.task is not None and facts.task != task and task != "regress":
        raise CheckpointError(
            f"{path}: the Dense head's activation makes it a {task} model, not {facts.task}"
        )
    if task == "regress" and facts.task is None and facts.labels and len(facts.labels) > 1:
        task = "classify"  # a linear Dense over class labels: logits, served through softmax
    overrides: dict[str, Any] = {"task": facts.task or task, "readout": found["readout"]}
    if found["nonlinearity"] != "tanh":
        overrides["nonlinearity"] = found["nonlinearity"]
    if "features" in found and facts.features is None and found["embedding"] is None:
        overrides["features"] = found["features"]
    return _import_rnn(Mapped(keras.state, found), replace(facts, **overrides))


ARCHITECTURES = ("mlp", "char_rnn_classifier", "char_lm", "rnn")
HEAD_OUTPUT = {"classify": "softmax", "multilabel": "sigmoid", "regress": "identity"}


def import_state_dict(path: Path, arch: str, facts: UserFacts) -> tuple[nn.Module, ModelConfig]:
    state = read_state_dict(path)
    if arch == "mlp":
        if facts.layers is None and is_plain_linear(state):
            return _import_mlp(map_mlp(state), facts)
        return _import_mlp_stack(map_mlp_stack(state, facts.layers, facts.activation), facts)
    if arch == "rnn":
        return _import_rnn(map_sequence_classifier(state), facts)
    if arch == "char_rnn_classifier":
        return _import_char_rnn(map_char_rnn(state), facts)
    if arch == "char_lm":
        return _import_char_lm(map_char_lm(state), facts)
    raise CheckpointError(f"unknown architecture {arch!r}; one of {', '.join(ARCHITECTURES)}")


def _import_mlp(mapped: Mapped, facts: UserFacts) -> tuple[nn.Module, ModelConfig]:
    if facts.activation is None:
        raise CheckpointError(
            "a state_dict does not record activations: say which the Linear layers are "
            "followed by (--activation relu, tanh, sigmoid or gelu)"
        )
    sizes = mapped.facts["layer_sizes"]
    task = facts.task or "classify"
    architecture = {
        "type": "mlp",
        "layer_sizes": sizes,
        "activation": facts.activation,
        "output": HEAD_OUTPUT.get(task, "softmax"),
    }
    model_input = _vector_input(facts, sizes[0], [])
    config = _config(facts, task, architecture, model_input, sizes[-1])
    return _finish(config, mapped.state)


def _import_mlp_stack(mapped: Mapped, facts: UserFacts) -> tuple[nn.Module, ModelConfig]:
    sizes = mapped.facts["layer_sizes"]
    task = facts.task or "classify"
    final = mapped.facts["final"]
    if final in ("softmax", "log_softmax") and task != "classify":
        raise CheckpointError(f"--layers ends in {final}, which is a classify head, not {task}")
    if final == "sigmoid" and task not in ("multilabel", "regress"):
        raise CheckpointError("--layers ends in sigmoid: a multilabel head (--task multilabel)")
    layers = mapped.facts["layers"]
    if final == "sigmoid" and task == "regress":  # a regression onto (0, 1) keeps its sigmoid
        layers = [*layers, {"kind": "activation", "name": "sigmoid"}]
    architecture = {
        "type": "mlp",
        "layer_sizes": sizes,
        "layers": layers,
        "output": HEAD_OUTPUT.get(task, "softmax"),
    }
    model_input = _vector_input(facts, sizes[0], [])
    config = _config(facts, task, architecture, model_input, sizes[-1])
    return _finish(config, mapped.state)


def _import_rnn(mapped: Mapped, facts: UserFacts) -> tuple[nn.Module, ModelConfig]:
    found = mapped.facts
    embedding = found["embedding"]
    architecture: dict[str, Any] = {
        "type": "rnn",
        "cell": found["cell"],
        "hidden_size": found["hidden_size"],
        "num_layers": found["num_layers"],
        "bidirectional": found["bidirectional"],
        "readout": facts.readout or "last",
        "embedding_dim": None if embedding is None else embedding[1],
    }
    if facts.nonlinearity is not None:
        architecture["nonlinearity"] = facts.nonlinearity
    base = facts.base.get("input", {})
    size = found["input_size"] if embedding is None else embedding[0]
    model_input: dict[str, Any]
    if facts.features is not None or base.get("kind") == "sequence":
        if embedding is not None:
            raise CheckpointError("numeric steps (--features) are not embedded: drop the Embedding")
        features = facts.features or base.get("features")
        if features != size:
            raise CheckpointError(
                f"the recurrent layer takes {size} features per step, not {features}"
            )
        model_input = {"kind": "sequence", "features": features, "max_steps": facts.max_steps}
    elif facts.tokenizer is not None or base.get("kind") == "subwords":
        if embedding is None:
            raise CheckpointError("a subword tokenizer needs an nn.Embedding in the file")
        model_input = _subwords_input(facts, size, language_model=False)
    elif facts.vocabulary is not None or base.get("kind") == "words":
        if embedding is None:
            raise CheckpointError("a word vocabulary needs an nn.Embedding in the file")
        model_input = _words_input(facts, size)
    else:
        model_input = _text_input(facts, size, "rnn")
    task = facts.task or "classify"
    config = _config(facts, task, architecture, model_input, found["num_outputs"])
    _attach_tokenizer(config, facts)
    return _finish(config, mapped.state)


def _import_char_rnn(mapped: Mapped, facts: UserFacts) -> tuple[nn.Module, ModelConfig]:
    found = mapped.facts
    architecture: dict[str, Any] = {
        "type": "char_rnn_classifier",
        "cell": found["cell"],
        "hidden_size": found["hidden_size"],
    }
    if found["cell"] == "elman":
        if facts.hidden_activation is None:
            raise CheckpointError(
                "an i2h/i2o RNN: say whether its hidden state passes through tanh: "
                "--hidden-activation identity (the PyTorch tutorial as written) or tanh"
            )
        architecture["hidden_activation"] = facts.hidden_activation
    elif found.get("num_layers", 1) != 1:
        raise CheckpointError(
            f"a char_rnn_classifier has one recurrent layer, not {found['num_layers']}"
        )
    model_input = _text_input(facts, found["alphabet_size"], "char_rnn_classifier")
    config = _config(facts, "classify", architecture, model_input, found["num_classes"])
    return _finish(config, mapped.state)


def _import_char_lm(mapped: Mapped, facts: UserFacts) -> tuple[nn.Module, ModelConfig]:
    found = mapped.facts
    architecture = {
        "type": "char_lm",
        "cell": found["cell"],
        "embedding_dim": found["embedding_dim"],
        "hidden_size": found["hidden_size"],
        "num_layers": found["num_layers"],
    }
    # The vocabulary is the alphabet (or the words), then begin- and end-of-sequence tokens; a
    # tokenizer file's vocabulary holds its own.
    if facts.tokenizer is not None or facts.base.get("input", {}).get("kind") == "subwords":
        model_input = _subwords_input(facts, found["vocab_size"], language_model=True)
    elif facts.vocabulary is not None:
        model_input = _words_input(facts, found["vocab_size"] - 2)
    else:
        model_input = _text_input(facts, found["vocab_size"] - 2, "char_lm")
    config = _config(facts, "score", architecture, model_input, None)
    _attach_tokenizer(config, facts)
    return _finish(config, mapped.state)
