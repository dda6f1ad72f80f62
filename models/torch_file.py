"""Mapping a PyTorch `state_dict` of a compatible model onto batchserve's keys: an MLP of Linear
layers (an `nn.Sequential` or named modules), the PyTorch tutorial's character RNNs (`i2h`/`i2o`,
`i2h`/`h2h`/`h2o`, or `nn.RNN` + `h2o`) and a character language model (embedding, GRU/LSTM,
linear head). Files are read with `weights_only=True` (or as safetensors): nothing runs."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from models.checkpoint import CheckpointError, refusal_reason

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # common training-checkpoint layouts
GATES = {1: "rnn", 3: "gru", 4: "lstm"}  # rows of weight_ih per hidden unit


@dataclass(frozen=True)
class Mapped:
    """batchserve's state_dict and the architecture facts read off the weights' shapes."""

    state: dict[str, torch.Tensor]
    facts: dict[str, Any]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `torch.save`d state_dict (or a dict holding one under `state_dict`,
    `model_state_dict` or `model`), or of a safetensors file; a `module.` prefix is dropped."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path}: a TorchScript archive (torch.jit.save), not a state_dict; batchserve does "
            "not run a file's code. Save the weights instead: torch.save(model.state_dict(), "
            "'model.pt') (a scripted module has .state_dict() too)"
        )
    try:
        if path.suffix == ".safetensors":
            state: Any = _natural_order(load_file(path))
        else:
            # weights_only=True: the restricted unpickler admits tensors and plain containers only.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc}".splitlines()[0]) from None
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many types on hostile files
        raise CheckpointError(f"{path}: refused: {refusal_reason(exc)}") from None
    if isinstance(state, dict):
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: not a state_dict (a dict of tensors)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: not a state_dict: it holds values other than tensors")
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v.detach().float() if v.is_floating_point() else v for k, v in state.items()}


def _natural_order(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors stores keys sorted as strings ("10.weight" before "2.weight"); torch.save keeps
    # the modules' order, which is what an MLP's layer order is read from.
    def key(name: str) -> list[Any]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

    return {k: state[k] for k in sorted(state, key=key)}


def _unmappable(keys: list[str], arch: str, expected: str) -> CheckpointError:
    shown = ", ".join(keys[:12]) + (f" and {len(keys) - 12} more" if len(keys) > 12 else "")
    return CheckpointError(f"cannot map keys [{shown}] onto a {arch}; it takes {expected}")


def _is_torchscript(path: Path) -> bool:
    """torch.jit.save writes a zip like torch.save's, plus the module's code (`<name>/code/`) and
    `<name>/constants.pkl`; torch.load(weights_only=True) refuses it with advice to run it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):  # the legacy format, or not a zip at all
        return False
    return any(n.partition("/")[2] == "constants.pkl" or "/code/" in n for n in names)


# --------------------------------------------------------------------------- mlp


def map_mlp(state: dict[str, torch.Tensor]) -> Mapped:
    """Linear layers in the file's module order (weights [out, in], optional biases) chained into
    `layers.{2i}.weight` / `.bias`; activations and dropout have no weights and are not seen."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        groups.setdefault(module, {})[param] = tensor
    odd: list[str] = []
    for module, params in groups.items():
        weight = params.get("weight")
        if weight is None or weight.dim() != 2 or set(params) - {"weight", "bias"}:
            odd += [f"{module}.{param}" if module else param for param in params]
    if odd:
        raise _unmappable(
            odd, "mlp", "Linear layers only: <module>.weight [out, in], <module>.bias"
        )
    mapped: dict[str, torch.Tensor] = {}
    sizes = [next(iter(groups.values()))["weight"].shape[1]]
    for i, (module, params) in enumerate(groups.items()):
        weight = params["weight"]
        if weight.shape[1] != sizes[-1]:
            raise CheckpointError(
                f"{module}.weight has shape {list(weight.shape)}: it takes {weight.shape[1]} "
                f"inputs, but the layer before gives {sizes[-1]}"
            )
        sizes.append(weight.shape[0])
        bias = params.get("bias", torch.zeros(weight.shape[0]))
        if bias.shape != (weight.shape[0],):
            raise CheckpointError(
                f"{module}.bias has shape {list(bias.shape)}, not [{weight.shape[0]}]"
            )
        mapped[f"layers.{2 * i}.weight"], mapped[f"layers.{2 * i}.bias"] = weight, bias
    return Mapped(mapped, {"layer_sizes": [int(n) for n in sizes]})


# --------------------------------------------------------------------------- char RNN classifier

RNN_LAYOUTS = (
    "i2h.*+i2o.* (the PyTorch tutorial's RNN), i2h.*+h2h.*+h2o.* (its later version) or "
    "rnn.weight_ih_l0/rnn.weight_hh_l0/rnn.bias_*_l0 + h2o.* (nn.RNN, nn.GRU or nn.LSTM)"
)
_LINEAR = ("weight", "bias")


def _take(state: dict[str, torch.Tensor], *modules: str) -> dict[str, torch.Tensor] | None:
    keys = [f"{m}.{p}" for m in modules for p in _LINEAR]
    return {k: state[k] for k in keys} if all(k in state for k in keys) else None


def map_char_rnn(state: dict[str, torch.Tensor]) -> Mapped:
    """One of the RNN_LAYOUTS onto `i2h`/`i2o` (cell elman) or `rnn.*` + `i2o` (rnn, gru, lstm)."""
    keys = set(state)
    elman = _take(state, "i2h", "i2o")
    if elman is not None and keys == set(elman):
        hidden, combined = state["i2h.weight"].shape
        facts = {"cell": "elman", "hidden_size": hidden, "alphabet_size": combined - hidden}
        return Mapped(dict(elman), {**facts, "num_classes": state["i2o.weight"].shape[0]})
    split = _take(state, "i2h", "h2h", "h2o")
    if split is not None and keys == set(split):
        renamed = {
            "rnn.weight_ih_l0": state["i2h.weight"],
            "rnn.bias_ih_l0": state["i2h.bias"],
            "rnn.weight_hh_l0": state["h2h.weight"],
            "rnn.bias_hh_l0": state["h2h.bias"],
            "i2o.weight": state["h2o.weight"],
            "i2o.bias": state["h2o.bias"],
        }
        return _recurrent(renamed, "char_rnn_classifier")
    head = "h2o" if _take(state, "h2o") is not None else "i2o"
    recurrent = {k: v for k, v in state.items() if k.startswith("rnn.")}
    rest = keys - set(recurrent) - {f"{head}.weight", f"{head}.bias"}
    if recurrent and _take(state, head) is not None and not rest:
        renamed = {
            **recurrent,
            "i2o.weight": state[f"{head}.weight"],
            "i2o.bias": state[f"{head}.bias"],
        }
        return _recurrent(renamed, "char_rnn_classifier")
    raise _unmappable(sorted(keys), "char_rnn_classifier", RNN_LAYOUTS)


def _recurrent(state: dict[str, torch.Tensor], arch: str) -> Mapped:
    """Facts of an nn.RNN/GRU/LSTM's weights: cell (by the number of gates), sizes, layers."""
    weight_hh = state.get("rnn.weight_hh_l0")
    weight_ih = state.get("rnn.weight_ih_l0")
    if weight_hh is None or weight_ih is None or weight_hh.dim() != 2 or weight_ih.dim() != 2:
        raise _unmappable(sorted(state), arch, "rnn.weight_ih_l0 and rnn.weight_hh_l0 matrices")
    hidden = weight_hh.shape[1]
    cell = GATES.get(weight_hh.shape[0] // hidden) if weight_hh.shape[0] % hidden == 0 else None
    if cell is None:
        raise CheckpointError(
            f"rnn.weight_hh_l0 has shape {list(weight_hh.shape)}: not an RNN, GRU or LSTM"
        )
    layers = len([k for k in state if re.fullmatch(r"rnn\.weight_ih_l\d+", k)])
    facts: dict[str, Any] = {
        "cell": cell,
        "hidden_size": hidden,
        "alphabet_size": weight_ih.shape[1],
    }
    facts["num_layers"] = layers
    if "i2o.weight" in state:
        facts["num_classes"] = state["i2o.weight"].shape[0]
    return Mapped(state, facts)


# --------------------------------------------------------------------------- char LM

LM_LAYOUT = (
    "embedding.weight (or encoder.weight), rnn.* of an nn.GRU or nn.LSTM, and head.* (or "
    "decoder.*), as in batchserve's char_lm and PyTorch's word_language_model example"
)


def map_char_lm(state: dict[str, torch.Tensor]) -> Mapped:
    renames = {
        "encoder.weight": "embedding.weight",
        "decoder.weight": "head.weight",
        "decoder.bias": "head.bias",
    }
    renamed = {renames.get(k, k): v for k, v in state.items()}
    known = {"embedding.weight", "head.weight", "head.bias"}
    recurrent = {k: v for k, v in renamed.items() if k.startswith("rnn.")}
    if not known <= set(renamed) or not recurrent or set(renamed) - known - set(recurrent):
        raise _unmappable(sorted(state), "char_lm", LM_LAYOUT)
    mapped = _recurrent(renamed, "char_lm")
    if mapped.facts["cell"] == "rnn":
        raise CheckpointError("a char_lm takes an nn.GRU or nn.LSTM; rnn.* is a plain nn.RNN")
    vocab, embedding_dim = renamed["embedding.weight"].shape
    facts = {**mapped.facts, "embedding_dim": embedding_dim, "vocab_size": vocab}
    return Mapped(renamed, facts)


# --------------------------------------------------------------------------- mlp with layers

NORM_PARAMS = {"running_mean", "running_var", "num_batches_tracked"}
# Weightless layers of an nn.Sequential, as `--layers` names them (name or name:parameter).
WEIGHTLESS = (
    "relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "softplus", "none",
    "identity", "dropout", "softmax", "log_softmax",
)  # fmt: skip
STACK_LAYOUT = (
    "an nn.Sequential's <index>.weight/.bias (Linear, LayerNorm) and <index>.running_mean/"
    ".running_var/.num_batches_tracked (BatchNorm1d), under one common prefix"
)


def _sequential(state: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]] | None:
    """The file's modules by nn.Sequential index, when every key is `[prefix.]<index>.<param>`
    with one common prefix; else None."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    prefixes = set()
    for key, tensor in state.items():
        match = re.fullmatch(r"(?:(.*)\.)?(\d+)\.([A-Za-z_]+)", key)
        if match is None:
            return None
        prefixes.add(match.group(1))
        found.setdefault(int(match.group(2)), {})[match.group(3)] = tensor
    return found if len(prefixes) == 1 else None


def _kind(params: dict[str, torch.Tensor]) -> str | None:
    names = set(params)
    weight = params.get("weight")
    if weight is not None and weight.dim() == 2 and names <= {"weight", "bias"}:
        return "linear"
    if {"running_mean", "running_var"} <= names and names <= NORM_PARAMS | {"weight", "bias"}:
        return "batch_norm"
    if weight is not None and weight.dim() == 1 and names <= {"weight", "bias"}:
        return "layer_norm"
    return None


def _weightless(spec: str, index: int) -> dict[str, Any]:
    name, _, value = spec.partition(":")
    if name not in WEIGHTLESS:
        raise CheckpointError(
            f"--layers: layer {index} is {spec!r}; a layer without weights is one of "
            f"{', '.join(WEIGHTLESS)}"
        )
    if name == "dropout":
        return {"kind": "dropout", "p": float(value or 0.5)}
    layer: dict[str, Any] = {"kind": "activation", "name": "none" if name == "identity" else name}
    if value:
        key = {"leaky_relu": "negative_slope", "elu": "alpha", "softplus": "beta"}.get(name)
        if key is None:
            raise CheckpointError(f"--layers: {name} takes no parameter ({spec!r})")
        layer[key] = float(value)
    return layer


def map_mlp_stack(
    state: dict[str, torch.Tensor], layers: list[str] | None, activation: str | None
) -> Mapped:
    """An nn.Sequential of Linear, BatchNorm1d, LayerNorm and weightless layers onto
    `layers.<index>.*` (the same indices). `layers` names every layer in order (linear,
    batch_norm, layer_norm, or a weightless one: an activation, dropout, and a final softmax or
    sigmoid that the head applies anyway); without it each gap of one index between weighted
    layers is `activation`. Facts: layer_sizes, and the stack as config layers."""
    modules = _sequential(state)
    if modules is None:
        raise _unmappable(sorted(state), "mlp", STACK_LAYOUT)
    odd = [f"{i}.{p}" for i, params in modules.items() if _kind(params) is None for p in params]
    if odd:
        raise _unmappable(odd, "mlp", STACK_LAYOUT)
    last = max(modules)
    if layers is None:
        layers = []
        for i in range(last + 1):
            if i in modules:
                layers.append(str(_kind(modules[i])))
            elif activation is None or (i - 1 not in modules or i + 1 not in modules):
                raise CheckpointError(
                    f"layer {i} of the nn.Sequential has no weights: say what every layer is "
                    "(--layers linear,batch_norm,relu,dropout,linear,...)"
                )
            else:
                layers.append(activation)
    if len(layers) <= last:
        raise CheckpointError(
            f"--layers names {len(layers)} layers; the file has weights for layer {last}"
        )
    stack: list[dict[str, Any]] = []
    mapped: dict[str, torch.Tensor] = {}
    sizes: list[int] = []
    for i, spec in enumerate(layers):
        params = modules.get(i)
        kind = None if params is None else _kind(params)
        if spec in ("linear", "batch_norm", "layer_norm") or kind is not None:
            if spec != kind:
                found = "no weights" if kind is None else f"{kind} weights"
                raise CheckpointError(f"--layers: layer {i} is {spec!r} but the file has {found}")
            assert params is not None
            stack.append(_weighted(i, kind, params, sizes))
            for param, tensor in params.items():
                mapped[f"layers.{i}.{param}"] = tensor
            if kind == "batch_norm" and "num_batches_tracked" not in params:
                mapped[f"layers.{i}.num_batches_tracked"] = torch.tensor(0)
        else:
            stack.append(_weightless(spec, i))
    # A final softmax/sigmoid is the head's own, applied by the server.
    while stack and stack[-1].get("name") in ("softmax", "log_softmax", "sigmoid"):
        stack.pop()
    if any(layer.get("name") in ("softmax", "log_softmax") for layer in stack):
        raise CheckpointError("--layers: softmax only as the last layer")
    return Mapped(mapped, {"layer_sizes": sizes, "layers": stack, "final": layers[-1]})


def _weighted(
    index: int, kind: str, params: dict[str, torch.Tensor], sizes: list[int]
) -> dict[str, Any]:
    if kind == "linear":
        weight = params["weight"]
        if not sizes:
            sizes.append(int(weight.shape[1]))
        if weight.shape[1] != sizes[-1]:
            raise CheckpointError(
                f"{index}.weight has shape {list(weight.shape)}: it takes {weight.shape[1]} "
                f"inputs, but the layer before gives {sizes[-1]}"
            )
        sizes.append(int(weight.shape[0]))
        return {"kind": "linear", "out_features": int(weight.shape[0]), "bias": "bias" in params}
    width = int(params["running_mean" if kind == "batch_norm" else "weight"].shape[0])
    if not sizes or width != sizes[-1]:
        raise CheckpointError(f"layer {index} ({kind}) normalizes {width} values, not its input's")
    if kind == "batch_norm":
        return {"kind": "batch_norm", "affine": "weight" in params}
    return {"kind": "layer_norm", "elementwise_affine": True}


def is_plain_linear(state: dict[str, torch.Tensor]) -> bool:
    """Only Linear layers' weights and biases (the layout `map_mlp` takes)."""
    groups: dict[str, set[str]] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        groups.setdefault(module, set()).add(param)
        if param == "weight" and tensor.dim() != 2:
            return False
    return all(params <= {"weight", "bias"} and "weight" in params for params in groups.values())


# --------------------------------------------------------------------------- rnn classifier

SEQUENCE_LAYOUT = (
    "an optional nn.Embedding (<name>.weight), one nn.RNN/GRU/LSTM (<name>.weight_ih_l0 ..., any "
    "layers, bidirectional) and one nn.Linear (<name>.weight, <name>.bias) reading its hidden "
    "state"
)


def map_sequence_classifier(state: dict[str, torch.Tensor]) -> Mapped:
    """Embedding (optional) + RNN/GRU/LSTM + Linear, under any module names, onto `embedding`,
    `rnn` and `head`."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        groups.setdefault(module, {})[param] = tensor
    recurrent = [m for m, p in groups.items() if "weight_ih_l0" in p and "weight_hh_l0" in p]
    embeddings = [m for m, p in groups.items() if set(p) == {"weight"} and p["weight"].dim() == 2]
    linears = [
        m
        for m, p in groups.items()
        if set(p) == {"weight", "bias"} and p["weight"].dim() == 2 and m not in recurrent
    ]
    if len(recurrent) != 1 or len(embeddings) > 1 or len(linears) != 1:
        raise _unmappable(sorted(state), "rnn", SEQUENCE_LAYOUT)
    rnn_params = groups[recurrent[0]]
    allowed = re.compile(r"(weight|bias)_(ih|hh)_l\d+(_reverse)?")
    odd = [f"{recurrent[0]}.{p}" for p in rnn_params if not allowed.fullmatch(p)]
    known = {recurrent[0], linears[0], *embeddings}
    odd += [f"{m}.{p}" for m, params in groups.items() if m not in known for p in params]
    if odd:
        raise _unmappable(odd, "rnn", SEQUENCE_LAYOUT)
    renamed = {f"rnn.{p}": t for p, t in rnn_params.items()}
    mapped = _recurrent(renamed, "rnn")
    layers = mapped.facts["num_layers"]
    expected = {
        f"rnn.{w}_{g}_l{k}{suffix}"
        for w in ("weight", "bias")
        for g in ("ih", "hh")
        for k in range(layers)
        for suffix in ("", "_reverse")
        if suffix == "" or "rnn.weight_ih_l0_reverse" in renamed
    }
    missing = sorted(expected - set(renamed))
    if missing:
        raise CheckpointError(
            f"the recurrent layer {recurrent[0]} lacks {missing[:6]}: batchserve's RNN cells "
            "have biases (bias=True)"
        )
    bidirectional = "rnn.weight_ih_l0_reverse" in renamed
    hidden = mapped.facts["hidden_size"]
    head = groups[linears[0]]
    width = hidden * (2 if bidirectional else 1)
    if head["weight"].shape[1] != width:
        raise CheckpointError(
            f"{linears[0]}.weight has shape {list(head['weight'].shape)}: it should read the "
            f"{width} values of the recurrent layer's hidden state"
        )
    renamed["head.weight"], renamed["head.bias"] = head["weight"], head["bias"]
    facts = {
        **mapped.facts,
        "bidirectional": bidirectional,
        "num_outputs": int(head["weight"].shape[0]),
        "input_size": mapped.facts["alphabet_size"],
        "embedding": None,
    }
    if embeddings:
        weight = groups[embeddings[0]]["weight"]
        if weight.shape[1] != facts["input_size"]:
            raise CheckpointError(
                f"{embeddings[0]}.weight has shape {list(weight.shape)}: its vectors do not "
                f"fit the recurrent layer's {facts['input_size']} inputs"
            )
        renamed["embedding.weight"] = weight
        facts["embedding"] = (int(weight.shape[0]), int(weight.shape[1]))
    return Mapped(renamed, facts)
