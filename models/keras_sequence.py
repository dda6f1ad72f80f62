"""Reading a Keras recurrent sequence classifier (a `.keras` archive or a legacy `.h5` file, with
h5py alone) into batchserve's `rnn` family: an optional Embedding, one or more SimpleRNN, GRU or
LSTM layers of one kind and width (each optionally in a Bidirectional wrapper, merge_mode concat),
an optional GlobalAveragePooling1D/GlobalMaxPooling1D readout, Dropout anywhere, and one Dense
head.

Conversions to PyTorch's cells: kernels are transposed; Keras' single bias becomes bias_ih (with a
zero bias_hh). LSTM gates are i, f, c, o in both. GRU gates are z, r, h in Keras and r, z, n in
PyTorch, so the blocks are reordered; a GRU with reset_after=True (Keras 3's default) has the
two biases PyTorch has (input, recurrent), while reset_after=False applies the reset gate
before the recurrent matmul, which PyTorch's GRU cannot compute: it is refused."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import CheckpointError
from models.keras_file import PASSIVE_LAYERS, opened

RECURRENT = {"SimpleRNN": "rnn", "GRU": "gru", "LSTM": "lstm"}
SEQUENCE_LAYERS = {"Embedding", "Bidirectional", *RECURRENT}
POOLING = {"GlobalAveragePooling1D": "mean", "GlobalMaxPooling1D": "max"}
HEADS = {"softmax": "classify", "sigmoid": "multilabel", "linear": "regress"}


@dataclass(frozen=True)
class KerasSequence:
    state: dict[str, torch.Tensor]
    facts: dict[str, Any]  # cell, hidden_size, num_layers, bidirectional, readout, embedding...


def is_sequence_model(model: dict[str, Any]) -> bool:
    layers = (model.get("config") or {}).get("layers") or []
    return any(isinstance(x, dict) and x.get("class_name") in SEQUENCE_LAYERS for x in layers)


def read_keras_config(path: Path) -> dict[str, Any]:
    with opened(path) as (model, _):
        return model


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower().replace("simple_r_n_n", "simple_rnn")


@dataclass(frozen=True)
class _Layer:
    kind: str
    config: dict[str, Any]
    key: str  # a .keras archive's layers/<key>: class name in snake case, numbered per class


def read_keras_sequence(path: Path) -> KerasSequence:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with opened(path) as (model, variables_of):
        layers = _layers(model, path)
        return _convert(layers, variables_of, path)


def _layers(model: dict[str, Any], path: Path) -> list[_Layer]:
    if model.get("class_name") != "Sequential":
        raise CheckpointError(f"{path}: batchserve imports keras.Sequential models")
    counts: dict[str, int] = {}
    found = []
    for layer in (model.get("config") or {}).get("layers") or []:
        kind, config = str(layer.get("class_name")), layer.get("config") or {}
        snake = "simple_rnn" if kind == "SimpleRNN" else _snake(kind)
        position = counts.get(snake, 0)
        counts[snake] = position + 1
        found.append(_Layer(kind, config, snake if position == 0 else f"{snake}_{position}"))
    return found


def _convert(layers: list[_Layer], variables_of: Any, path: Path) -> KerasSequence:
    state: dict[str, torch.Tensor] = {}
    facts: dict[str, Any] = {"embedding": None, "readout": "last", "mask_zero": False}
    recurrent: list[_Layer] = []
    refused: list[str] = []
    dense: _Layer | None = None
    for layer in layers:
        name = f"{layer.config.get('name', '?')} ({layer.kind})"
        if layer.kind == "InputLayer":
            shape = layer.config.get("batch_shape") or layer.config.get("batch_input_shape")
            if isinstance(shape, list) and len(shape) == 3 and isinstance(shape[2], int):
                facts["features"] = shape[2]
        elif layer.kind == "Embedding" and not recurrent and facts["embedding"] is None:
            (table,) = _arrays(_variables(variables_of, layer), layer, ["embeddings"], path)
            state["embedding.weight"] = table
            facts["embedding"] = (int(table.shape[0]), int(table.shape[1]))
            facts["mask_zero"] = bool(layer.config.get("mask_zero", False))
        elif (layer.kind in RECURRENT or layer.kind == "Bidirectional") and dense is None:
            recurrent.append(layer)
        elif layer.kind in POOLING and recurrent and dense is None:
            facts["readout"] = POOLING[layer.kind]
        elif layer.kind == "Dense" and recurrent and dense is None:
            dense = layer
        elif layer.kind not in PASSIVE_LAYERS or layer.kind == "Flatten":
            refused.append(name)
    if refused or not recurrent or dense is None:
        shown = ", ".join(refused) or "no recurrent layer and Dense head"
        raise CheckpointError(
            f"{path}: cannot import {shown}: batchserve's rnn takes an optional Embedding, "
            "SimpleRNN/GRU/LSTM layers (or Bidirectional ones), an optional "
            "GlobalAveragePooling1D/GlobalMaxPooling1D, Dropout, and one Dense layer"
        )
    cells = {_inner(layer)[0] for layer in recurrent}
    widths = {int(_inner(layer)[1]["units"]) for layer in recurrent}
    wrapped = {layer.kind == "Bidirectional" for layer in recurrent}
    if len(cells) > 1 or len(widths) > 1 or len(wrapped) > 1:
        raise CheckpointError(
            f"{path}: the recurrent layers must be of one kind and width, all bidirectional or "
            "none (batchserve's rnn stacks num_layers of one cell)"
        )
    facts.update(
        cell=RECURRENT[cells.pop()],
        hidden_size=widths.pop(),
        num_layers=len(recurrent),
        bidirectional=wrapped.pop(),
    )
    _check_sequences(recurrent, facts["readout"], path)
    nonlinearity = set()
    for index, layer in enumerate(recurrent):
        directions = (
            [("forward_layer", ""), ("backward_layer", "_reverse")]
            if layer.kind == "Bidirectional"
            else [("", "")]
        )
        kind, config = _inner(layer)
        nonlinearity.add(_check_activations(kind, config, layer, path))
        for part, suffix in directions:
            arrays = _cell_arrays(_variables(variables_of, layer, part), layer, config, path)
            for key, tensor in _torch_cell(kind, config, arrays, layer, path).items():
                state[f"rnn.{key}_l{index}{suffix}"] = tensor
    facts["nonlinearity"] = nonlinearity.pop()
    activation = str(dense.config.get("activation", "linear"))
    if activation not in HEADS:
        raise CheckpointError(
            f"{path}: Dense layer {dense.config.get('name')} has activation {activation}; the "
            "head is softmax (classify), sigmoid (multilabel) or linear (regress)"
        )
    facts["task"] = HEADS[activation]
    kernel, *bias = _arrays(_variables(variables_of, dense), dense, ["kernel", "bias"], path)
    state["head.weight"] = kernel.T.contiguous()
    state["head.bias"] = bias[0] if bias else torch.zeros(kernel.shape[1])
    facts["num_outputs"] = int(kernel.shape[1])
    return KerasSequence(state, facts)


def _variables(variables_of: Any, layer: _Layer, part: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = variables_of(layer.key, str(layer.config.get("name")), part)
    return found


def _inner(layer: _Layer) -> tuple[str, dict[str, Any]]:
    """The recurrent layer's class and config (inside a Bidirectional: the wrapped layer's)."""
    if layer.kind != "Bidirectional":
        return layer.kind, layer.config
    inner = layer.config.get("layer") or {}
    kind = str(inner.get("class_name"))
    if kind not in RECURRENT or layer.config.get("merge_mode", "concat") != "concat":
        raise CheckpointError(
            f"Bidirectional {layer.config.get('name')}: batchserve takes a SimpleRNN, GRU or "
            "LSTM with merge_mode 'concat'"
        )
    return kind, inner.get("config") or {}


def _check_sequences(recurrent: list[_Layer], readout: str, path: Path) -> None:
    for i, layer in enumerate(recurrent):
        config = _inner(layer)[1]
        want = i < len(recurrent) - 1 or readout != "last"
        if bool(config.get("return_sequences", False)) != want:
            raise CheckpointError(
                f"{path}: layer {layer.config.get('name')}: return_sequences must be {want} "
                "(every recurrent layer but the last returns sequences, and the last too when "
                "a pooling layer reads them)"
            )
        if config.get("go_backwards") or config.get("stateful"):
            raise CheckpointError(
                f"{path}: layer {layer.config.get('name')} is go_backwards or stateful"
            )


def _check_activations(kind: str, config: dict[str, Any], layer: _Layer, path: Path) -> str:
    activation = str(config.get("activation", "tanh"))
    recurrent = str(config.get("recurrent_activation", "sigmoid"))
    allowed = ("tanh", "relu") if kind == "SimpleRNN" else ("tanh",)
    if activation not in allowed or (kind != "SimpleRNN" and recurrent != "sigmoid"):
        raise CheckpointError(
            f"{path}: layer {layer.config.get('name')}: activation {activation} / "
            f"recurrent_activation {recurrent}; PyTorch's {kind} cell computes tanh and sigmoid"
        )
    if kind == "GRU" and not config.get("reset_after", True):
        raise CheckpointError(
            f"{path}: layer {layer.config.get('name')} is a GRU with reset_after=False: its reset "
            "gate acts before the recurrent matmul, which PyTorch's GRU cannot compute (retrain "
            "with reset_after=True, Keras 3's default)"
        )
    return activation


def _cell_arrays(
    variables: list[tuple[str, Any]], layer: _Layer, config: dict[str, Any], path: Path
) -> list[torch.Tensor]:
    roles = ["kernel", "recurrent_kernel", "bias"] if config.get("use_bias", True) else [
        "kernel", "recurrent_kernel"
    ]  # fmt: skip
    return _arrays(variables, layer, roles, path)


def _arrays(
    variables: list[tuple[str, Any]], layer: _Layer, roles: list[str], path: Path
) -> list[torch.Tensor]:
    """The layer's weight arrays in `roles` order: by name in .h5 files, by position (the same
    order) in .keras archives; optional trailing roles (a bias) may be missing."""
    named = {name.rsplit("/", 1)[-1].split(":")[0]: data for name, data in variables}
    if set(named) <= set(roles) and len(named) == len(variables):
        ordered = [named[r] for r in roles if r in named]
    else:
        ordered = [data for _, data in variables]
    if not roles[0:1] or len(ordered) not in (len(roles), len(roles) - (roles[-1] == "bias")):
        raise CheckpointError(
            f"{path}: layer {layer.config.get('name')} has {len(ordered)} weight arrays; "
            f"expected {', '.join(roles)}"
        )
    out = []
    for data in ordered:
        array = np.asarray(data[()])
        if array.dtype.kind != "f":
            raise CheckpointError(f"{path}: layer {layer.config.get('name')} holds {array.dtype}")
        out.append(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    return out


def _torch_cell(
    kind: str,
    config: dict[str, Any],
    arrays: list[torch.Tensor],
    layer: _Layer,
    path: Path,
) -> dict[str, torch.Tensor]:
    kernel, recurrent, *rest = arrays
    units = int(config["units"])
    gates = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}[kind]
    if kernel.shape[1] != gates * units or recurrent.shape != (units, gates * units):
        raise CheckpointError(
            f"{path}: layer {layer.config.get('name')}: kernels {list(kernel.shape)} and "
            f"{list(recurrent.shape)} do not fit {units} units of a {kind}"
        )
    bias = rest[0] if rest else torch.zeros(gates * units)
    if kind == "GRU":
        bias_ih, bias_hh = (bias[0], bias[1]) if bias.dim() == 2 else (bias, torch.zeros_like(bias))
        # Keras' gate blocks z, r, h; PyTorch's r, z, n.
        order = torch.cat(
            [
                torch.arange(units, 2 * units),
                torch.arange(units),
                torch.arange(2 * units, 3 * units),
            ]
        )
        return {
            "weight_ih": kernel.T[order].contiguous(),
            "weight_hh": recurrent.T[order].contiguous(),
            "bias_ih": bias_ih[order].contiguous(),
            "bias_hh": bias_hh[order].contiguous(),
        }
    return {
        "weight_ih": kernel.T.contiguous(),
        "weight_hh": recurrent.T.contiguous(),
        "bias_ih": bias.reshape(-1).contiguous(),
        "bias_hh": torch.zeros(gates * units),
    }
