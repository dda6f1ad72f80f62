"""Reading a Keras model of Dense layers (a Keras 3 `.keras` archive or a legacy `.h5` file) with
h5py alone, no TensorFlow, into batchserve's `mlp`: kernels transposed into `layers.{2i}.weight`,
activations mapped, anything else refused with the layer names listed."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import MAX_PARAMETERS, CheckpointError

HIDDEN_ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")
OUTPUT_ACTIVATIONS = ("softmax", "linear")  # batchserve serves softmax(last layer) either way
PASSIVE_LAYERS = ("InputLayer", "Dropout", "Flatten")  # nothing to compute at inference
MAX_ARCHIVE_MEMBER_BYTES = 4 * MAX_PARAMETERS + (64 << 20)


@dataclass(frozen=True)
class DenseLayer:
    name: str
    units: int
    activation: str
    use_bias: bool
    position: int  # among the model's Dense layers: how a .keras archive finds its weights


@dataclass(frozen=True)
class KerasMLP:
    """What batchserve needs from the file: sizes, activations, the weights as a state_dict, and
    the input's shape as Keras saw it (e.g. [28, 28] before a Flatten)."""

    layer_sizes: list[int]
    activation: str
    output_activation: str
    input_shape: list[int]
    state: dict[str, torch.Tensor]
    # An mlp's `layers` stack, when the model has normalization layers or activations that
    # differ from layer to layer (None: Dense layers with one activation).
    stack: list[dict[str, Any]] | None = None


NORMS = ("BatchNormalization", "LayerNormalization")
KERAS_ACTIVATIONS = {
    "relu": "relu", "gelu": "gelu", "silu": "silu", "swish": "silu", "tanh": "tanh",
    "sigmoid": "sigmoid", "elu": "elu", "softplus": "softplus", "leaky_relu": "leaky_relu",
    "linear": "none",
}  # fmt: skip


def read_keras(path: Path) -> KerasMLP:
    """Read `path` (.keras or .h5/.hdf5); CheckpointError says what cannot be imported."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with opened(path) as (model_config, variables):
        if _needs_stack(model_config):
            return _read_stack(model_config, variables, path)
    with _opened(path) as (model_config, weights_of):
        layers, input_shape = _dense_layers(model_config, path)
        sizes = _layer_sizes(layers, input_shape, path)
        activation, output = _activations(layers, path)
        state = _state_dict(layers, sizes, weights_of, path)
    return KerasMLP(sizes, activation, output, input_shape, state)


def _needs_stack(model: dict[str, Any]) -> bool:
    layers = (model.get("config") or {}).get("layers") or []
    kinds = [layer.get("class_name") for layer in layers if isinstance(layer, dict)]
    if any(kind in NORMS or kind == "LeakyReLU" for kind in kinds):
        return True
    activations = [
        _activation_name(layer.get("config") or {})
        for layer in layers
        if isinstance(layer, dict) and layer.get("class_name") == "Dense"
    ]
    return len(set(activations[:-1])) > 1


def _read_stack(model: dict[str, Any], variables: Any, path: Path) -> KerasMLP:
    """Dense, BatchNormalization, LayerNormalization, activations (of Dense layers, Activation
    and LeakyReLU layers) and Dropout in order, as an mlp `layers` stack; the last Dense's
    activation is the head's."""
    if model.get("class_name") != "Sequential":
        raise CheckpointError(f"{path}: batchserve imports keras.Sequential models")
    entries: list[dict[str, Any]] = []
    state: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    refused: list[str] = []
    input_shape: list[int] | None = None
    width: int | None = None
    sizes: list[int] = []
    raw = (model.get("config") or {}).get("layers") or []
    for layer in raw:
        kind, config = str(layer.get("class_name")), layer.get("config") or {}
        name = str(config.get("name", "?"))
        snake = {"BatchNormalization": "batch_normalization",
                 "LayerNormalization": "layer_normalization"}.get(kind, kind.lower())  # fmt: skip
        position = counts.get(snake, 0)
        counts[snake] = position + 1
        key = snake if position == 0 else f"{snake}_{position}"
        input_shape = input_shape or _declared_shape(config)
        if width is None and input_shape is not None:
            width = 1
            for n in input_shape:
                width *= n
            sizes = [width]
        if kind in ("InputLayer", "Flatten", "Dropout"):
            if kind == "Dropout":
                entries.append({"kind": "dropout", "p": float(config.get("rate", 0.5))})
            continue
        if width is None:
            refused.append(f"{name} ({kind}) before a known input shape")
            continue
        here = f"layers.{len(entries)}"
        arrays = [np.asarray(d[()], dtype=np.float32) for _, d in variables(key, name)]
        if kind == "Dense":
            units = int(config["units"])
            kernel, *bias = arrays
            if kernel.shape != (width, units):
                raise CheckpointError(f"{path}: layer {name} has a kernel {list(kernel.shape)}")
            state[f"{here}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
            state[f"{here}.bias"] = torch.from_numpy(bias[0]) if bias else torch.zeros(units)
            entries.append({"kind": "linear", "out_features": units})
            width = units
            sizes.append(units)
            activation = _activation_name(config)
            if activation != "linear":
                entries.append(_keras_activation(activation, config, name, path))
        elif kind in ("Activation", "LeakyReLU"):
            activation = "leaky_relu" if kind == "LeakyReLU" else _activation_name(config)
            entries.append(_keras_activation(activation, config, name, path))
        elif kind in NORMS and config.get("axis", -1) in (-1, [-1], 1, [1]):
            if config.get("rms_scaling"):
                refused.append(f"{name} ({kind}, rms_scaling)")
                continue
            center, scale = bool(config.get("center", True)), bool(config.get("scale", True))
            roles = [r for r, on in (("gamma", scale), ("beta", center)) if on]
            if kind == "BatchNormalization":
                roles += ["moving_mean", "moving_variance"]
            if len(arrays) != len(roles):
                raise CheckpointError(f"{path}: layer {name} has {len(arrays)} weight arrays")
            found = dict(zip(roles, arrays, strict=True))
            ones, zeros = np.ones(width, np.float32), np.zeros(width, np.float32)
            state[f"{here}.weight"] = torch.from_numpy(found.get("gamma", ones))
            state[f"{here}.bias"] = torch.from_numpy(found.get("beta", zeros))
            eps = float(config.get("epsilon", 1e-3))
            if kind == "BatchNormalization":
                state[f"{here}.running_mean"] = torch.from_numpy(found["moving_mean"])
                state[f"{here}.running_var"] = torch.from_numpy(found["moving_variance"])
                state[f"{here}.num_batches_tracked"] = torch.tensor(0)
                entries.append({"kind": "batch_norm", "eps": eps})
            else:
                entries.append({"kind": "layer_norm", "eps": eps})
        else:
            refused.append(f"{name} ({kind})")
    if refused:
        raise CheckpointError(
            f"{path}: cannot import layers {', '.join(refused)}: batchserve's mlp takes Dense, "
            "BatchNormalization, LayerNormalization, Activation, LeakyReLU, Dropout (and "
            "InputLayer, Flatten first)"
        )
    if input_shape is None or len(sizes) < 2:
        raise CheckpointError(f"{path}: no Dense layers with a known input shape")
    output = "linear"
    if (
        entries
        and entries[-1]["kind"] == "activation"
        and entries[-1]["name"] in ("sigmoid", "softmax")
    ):
        output = entries.pop()["name"]
    if entries[-1]["kind"] != "linear":
        raise CheckpointError(f"{path}: the last layer must be Dense (then its head's activation)")
    return KerasMLP(sizes, "relu", output, input_shape, state, entries)


def _keras_activation(
    activation: str, config: dict[str, Any], name: str, path: Path
) -> dict[str, Any]:
    if activation == "softmax":
        return {"kind": "activation", "name": "softmax"}  # the head's: only last (checked)
    mapped = KERAS_ACTIVATIONS.get(activation)
    if mapped is None:
        raise CheckpointError(
            f"{path}: layer {name}: activation {activation} is not one batchserve has"
        )
    layer: dict[str, Any] = {"kind": "activation", "name": mapped}
    if mapped == "leaky_relu":
        layer["negative_slope"] = float(config.get("negative_slope", config.get("alpha", 0.3)))
    return layer


# --------------------------------------------------------------------------- the two file layouts

WeightReader = Any  # (DenseLayer) -> list of (variable name, h5py.Dataset)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise CheckpointError(
            "reading Keras files needs h5py: pip install -c constraints.txt -e '.[keras]' in "
            "batchserve's checkout (the keras extra), or pip install h5py"
        ) from None
    return h5py


@contextmanager
def _opened(path: Path) -> Iterator[tuple[dict[str, Any], WeightReader]]:
    """The model config and a reader of a Dense layer's variables."""
    with opened(path) as (config, variables):
        yield config, lambda layer: variables(_dense_key(layer), layer.name)


def _dense_key(layer: DenseLayer) -> str:
    # Keras 3 keeps the variables of a model's n-th Dense layer as layers/dense_n/vars/0 (kernel)
    # and /1 (bias), "dense" for the first: by class and position, not by the layer's name.
    return "dense" if layer.position == 0 else f"dense_{layer.position}"


@contextmanager
def opened(path: Path) -> Iterator[tuple[dict[str, Any], Any]]:
    """The model config, and `variables(key, name, part="")`: a layer's (name, dataset) pairs,
    found by its archive key (class in snake case, numbered per class: "lstm_1") in a .keras
    archive and by its name in a legacy .h5 file; `part` "forward_layer"/"backward_layer" picks
    one direction of a Bidirectional layer."""
    h5py = _h5py()
    if zipfile.is_zipfile(path):
        config, weights = _keras_archive(path)
        with h5py.File(io.BytesIO(weights), "r") as h5:
            yield config, lambda key, name, part="": _archive_variables(h5, key, part)
        return
    try:
        h5 = h5py.File(path, "r")
    except OSError:
        raise CheckpointError(f"{path}: neither a .keras archive nor an HDF5 (.h5) file") from None
    with h5:
        raw = h5.attrs.get("model_config")
        if raw is None:
            raise CheckpointError(
                f"{path}: holds weights but no model config (saved with save_weights?); "
                "save the whole model with model.save(...)"
            )
        config = _json(raw.decode() if isinstance(raw, bytes) else str(raw), path)
        group = h5["model_weights"] if "model_weights" in h5 else h5
        yield config, lambda key, name, part="": _legacy_variables(group, name, part)


def _keras_archive(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {"config.json", "model.weights.h5"} <= names:
                raise CheckpointError(
                    f"{path}: a zip without config.json and model.weights.h5 is not a .keras file"
                )
            if archive.getinfo("model.weights.h5").file_size > MAX_ARCHIVE_MEMBER_BYTES:
                raise CheckpointError(f"{path}: model.weights.h5 is larger than any mlp allowed")
            config = _json(archive.read("config.json").decode("utf-8"), path)
            return config, archive.read("model.weights.h5")
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable .keras archive: {exc}") from None


def _json(text: str, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the model config is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the model config is not a JSON object")
    return value


def _archive_variables(h5: Any, key: str, part: str = "") -> list[tuple[str, Any]]:
    # Keras 3: layers/<key>/vars/0, 1...; a recurrent layer's under layers/<key>/cell/vars, and
    # a Bidirectional's under layers/<key>/forward_layer/cell/vars (and backward_layer).
    base = f"layers/{key}/{part}/" if part else f"layers/{key}/"
    group = h5.get(f"{base}cell/vars")
    if group is None or not len(group):
        group = h5.get(f"{base}vars")
    if group is None:
        return []
    return [(name, group[name]) for name in sorted(group.keys(), key=int)]


def _legacy_variables(group: Any, layer: str, part: str = "") -> list[tuple[str, Any]]:
    # Legacy HDF5: model_weights/<name> lists its datasets in the attribute weight_names; a
    # Bidirectional's are .../forward_<cell>/... and .../backward_<cell>/...
    if layer not in group:
        return []
    names = [
        n.decode() if isinstance(n, bytes) else str(n)
        for n in group[layer].attrs.get("weight_names", [])
    ]
    if part:
        direction = "/" + part.removesuffix("_layer") + "_"
        names = [n for n in names if direction in n]
    return [(n, group[layer][n]) for n in names]


# --------------------------------------------------------------------------- the model config


def _dense_layers(model: dict[str, Any], path: Path) -> tuple[list[DenseLayer], list[int]]:
    """The Dense layers in order and the input shape; unsupported layers are refused together."""
    kind = model.get("class_name")
    layers = (model.get("config") or {}).get("layers")
    if kind != "Sequential" or not isinstance(layers, list):
        raise CheckpointError(
            f"{path}: a {kind} model; batchserve imports keras.Sequential models of Dense layers"
        )
    dense: list[DenseLayer] = []
    input_shape: list[int] | None = None
    refused: list[str] = []
    for layer in layers:
        kind, config = layer.get("class_name"), layer.get("config") or {}
        name = str(config.get("name", "?"))
        input_shape = input_shape or _declared_shape(config)
        if (
            kind == "Dense"
            and not config.get("quantization_config")
            and not config.get("lora_rank")
        ):
            activation = _activation_name(config)
            use_bias = bool(config.get("use_bias", True))
            dense.append(DenseLayer(name, int(config["units"]), activation, use_bias, len(dense)))
        elif kind == "Activation" and dense and dense[-1].activation == "linear":
            last = dense[-1]
            dense[-1] = replace(last, activation=_activation_name(config))
        elif kind == "Flatten" and not dense:
            continue
        elif kind not in PASSIVE_LAYERS or kind == "Flatten":
            refused.append(f"{name} ({kind})")
    if refused:
        raise CheckpointError(
            f"{path}: cannot import layers {', '.join(refused)}: batchserve's mlp takes Dense "
            "layers (with InputLayer, Flatten first, Dropout, Activation)"
        )
    input_shape = input_shape or _built_shape(model) or _built_shape(layers[0] if layers else {})
    if not dense or input_shape is None:
        raise CheckpointError(f"{path}: no Dense layers with a known input shape")
    flattened = any(layer.get("class_name") == "Flatten" for layer in layers)
    if len(input_shape) > 1 and not flattened:
        raise CheckpointError(
            f"{path}: Dense layers on a {input_shape} input act on its last axis only; "
            "add a Flatten layer to make it an mlp"
        )
    return dense, input_shape


def _declared_shape(config: dict[str, Any]) -> list[int] | None:
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if (
        not isinstance(shape, list)
        or len(shape) < 2
        or not all(isinstance(n, int) and n > 0 for n in shape[1:])
    ):
        return None
    return [int(n) for n in shape[1:]]


def _built_shape(entry: dict[str, Any]) -> list[int] | None:
    # A model built by calling it on data has no InputLayer; Keras 3 records the shape it saw.
    shape = (entry.get("build_config") or {}).get("input_shape")
    return _declared_shape({"batch_shape": shape})


def _activation_name(config: dict[str, Any]) -> str:
    activation = config.get("activation", "linear")
    if isinstance(activation, dict):  # a serialised activation object: use its registered name
        activation = activation.get("config", {}).get("name") or activation.get("class_name")
    return str(activation or "linear")


def _layer_sizes(layers: list[DenseLayer], input_shape: list[int], path: Path) -> list[int]:
    width = 1
    for n in input_shape:
        width *= n
    sizes = [width, *(layer.units for layer in layers)]
    count = sum(a * b + b for a, b in pairwise(sizes))
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: {count:,} parameters (limit {MAX_PARAMETERS:,})")
    return sizes


def _activations(layers: list[DenseLayer], path: Path) -> tuple[str, str]:
    hidden, last = layers[:-1], layers[-1]
    kinds = sorted({layer.activation for layer in hidden})
    if len(kinds) > 1 or (kinds and kinds[0] not in HIDDEN_ACTIVATIONS):
        shown = ", ".join(f"{layer.name} ({layer.activation})" for layer in hidden)
        raise CheckpointError(
            f"{path}: hidden layers {shown}: batchserve's mlp needs one activation for all of "
            f"them, one of {', '.join(HIDDEN_ACTIVATIONS)}"
        )
    if last.activation not in OUTPUT_ACTIVATIONS:
        raise CheckpointError(
            f"{path}: output layer {last.name} has activation {last.activation}; batchserve "
            "classifies with softmax (or linear logits, which it serves through softmax)"
        )
    return (kinds[0] if kinds else "relu"), last.activation


# --------------------------------------------------------------------------- the weights


def _state_dict(
    layers: list[DenseLayer], sizes: list[int], weights_of: WeightReader, path: Path
) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        kernel, bias = _kernel_and_bias(layer, weights_of(layer), path)
        expected = (sizes[i], sizes[i + 1])
        if tuple(kernel.shape) != expected or (bias is not None and bias.shape != expected[1:]):
            found = [list(kernel.shape), None if bias is None else list(bias.shape)]
            raise CheckpointError(
                f"{path}: layer {layer.name} has weights of shapes {found}; expected "
                f"{list(expected)} and [{expected[1]}]"
            )
        state[f"layers.{2 * i}.weight"] = _tensor(kernel[()].T, layer, path)
        state[f"layers.{2 * i}.bias"] = (
            _tensor(bias[()], layer, path)
            if bias is not None
            else torch.zeros(expected[1], dtype=torch.float32)
        )
    return state


def _kernel_and_bias(layer: DenseLayer, variables: list[tuple[str, Any]], path: Path) -> Any:
    wanted = 2 if layer.use_bias else 1
    if len(variables) != wanted:
        raise CheckpointError(
            f"{path}: layer {layer.name} has {len(variables)} weight arrays; a Dense layer "
            f"{'with' if layer.use_bias else 'without'} bias has {wanted}"
        )
    by_role = {("bias" if "bias" in name else "kernel"): data for name, data in variables}
    if len(by_role) != wanted:  # Keras 3 archives name them 0 and 1: kernel first
        by_role = dict(zip(("kernel", "bias"), (data for _, data in variables), strict=False))
    return by_role["kernel"], by_role.get("bias")


def _tensor(array: np.ndarray, layer: DenseLayer, path: Path) -> torch.Tensor:
    if array.dtype.kind != "f":
        raise CheckpointError(f"{path}: layer {layer.name} holds {array.dtype} weights, not floats")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
