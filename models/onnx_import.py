"""`batchserve import onnx FILE`: an exported ONNX graph as a new model version. The graph says its
inputs, outputs and opset; the user says what the graph cannot (labels, an alphabet, what the
output holds). The file is checked (opset, operators, tensor sizes, a dynamic batch dimension, no
external data), copied in, and must open in ONNX Runtime and pass a warm-up before the version is
renamed into place."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.checkpoint import (
    FILE_MODE,
    CheckpointError,
    ModelConfig,
    sha256_file,
    write_config,
)
from models.importing import DEFAULT_MAX_LENGTH, UserFacts, _config
from models.onnx_file import (
    FLOAT_INPUTS,
    INTEGER_INPUTS,
    PER_LABEL,
    GraphFacts,
    GraphTensor,
    check_against_config,
    inspect_graph,
    load_onnx,
    read_graph,
)
from models.onnx_schema import ONNX_FILE, OutputKind


@dataclass(frozen=True)
class GraphChoices:
    """What the user may say about the graph; None: read it from the graph."""

    input: str | None = None
    lengths_input: str | None = None
    output: str | None = None
    output_kind: OutputKind | None = None  # None: values for regress, else logits
    task: str | None = None


def onnx_config(path: Path, facts: UserFacts, choices: GraphChoices) -> ModelConfig:
    """The config.json of the graph in `path`, after checking the graph (external data refused)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    graph = inspect_graph(read_graph(path), None)
    source, lengths = _inputs(graph, choices)
    output = _pick(graph.outputs, choices.output, "output")
    task = choices.task or ("score" if len(output.dims) == 3 else "classify")
    architecture = {
        "type": "onnx",
        "input": source.name,
        "lengths_input": lengths.name if lengths else None,
        "output": output.name,
        "output_kind": choices.output_kind or ("values" if task == "regress" else "logits"),
        "opset": graph.opset,
    }
    if source.datatype in FLOAT_INPUTS:
        model_input = _vector_input(facts, source)
    elif source.datatype in INTEGER_INPUTS:
        model_input = _text_input(facts, source)
    else:
        raise CheckpointError(
            f"graph input '{source.name}' is {source.datatype}: batchserve feeds float vectors "
            "or integer token ids"
        )
    per_label = task in PER_LABEL
    outputs = output.dims[1] if per_label and len(output.dims) == 2 else -1
    if per_label and outputs == -1 and facts.labels is None:
        raise CheckpointError(
            f"graph output '{output.name}' has a dynamic {task} dimension: give --labels"
        )
    base = {**facts.base, "format": "onnx", "weights_file": ONNX_FILE}
    facts = dataclasses.replace(facts, base=base)
    config = _config(facts, task, architecture, model_input, None if outputs == -1 else outputs)
    check_against_config(graph, config)  # before anything is written
    return config


def _inputs(graph: GraphFacts, choices: GraphChoices) -> tuple[GraphTensor, GraphTensor | None]:
    lengths = None
    if choices.lengths_input is not None:
        lengths = _pick(graph.inputs, choices.lengths_input, "input")
    elif choices.input is None and len(graph.inputs) == 2:
        # Two inputs, one of them [batch] integers: those are the lengths.
        ones = [t for t in graph.inputs if len(t.dims) == 1 and t.datatype in INTEGER_INPUTS]
        lengths = ones[0] if len(ones) == 1 else None
    rest = [t for t in graph.inputs if lengths is None or t.name != lengths.name]
    if choices.input is not None:
        return _pick(graph.inputs, choices.input, "input"), lengths
    if len(rest) != 1:
        raise CheckpointError(
            f"the graph has inputs {[t.name for t in graph.inputs]}: name the one that takes the "
            "items with --input (and a [batch] lengths input with --lengths-input)"
        )
    return rest[0], lengths


def _pick(tensors: tuple[GraphTensor, ...], name: str | None, kind: str) -> GraphTensor:
    names = [t.name for t in tensors]
    if name is None:
        if not tensors:
            raise CheckpointError(f"the graph has no {kind}s")
        return tensors[0]
    if name not in names:
        raise CheckpointError(f"--{kind} {name!r}: the graph's {kind}s are {names}")
    return tensors[names.index(name)]


def _vector_input(facts: UserFacts, source: GraphTensor) -> dict[str, Any]:
    dims = list(source.dims[1:])
    if not dims or -1 in dims:
        raise CheckpointError(
            f"graph input '{source.name}' has item dims {dims}: a vector input needs fixed ones"
        )
    low, high = facts.input_range or (None, None)
    width = 1
    for n in dims:
        width *= n
    also = [shape for shape in ([width], facts.input_shape) if shape and shape != dims]
    return {"kind": "vector", "shape": dims, "also_shapes": also, "minimum": low, "maximum": high}


def _text_input(facts: UserFacts, source: GraphTensor) -> dict[str, Any]:
    base = facts.base.get("input", {})
    alphabet = facts.alphabet or base.get("alphabet")
    if alphabet is None:
        raise CheckpointError(
            f"graph input '{source.name}' takes token ids: give the characters in id order "
            "(--alphabet)"
        )
    if len(set(alphabet)) != len(alphabet):
        raise CheckpointError("the alphabet repeats a character")
    return {
        "kind": "text",
        "alphabet": alphabet,
        "max_length": facts.max_length or base.get("max_length", DEFAULT_MAX_LENGTH),
        "normalize": facts.normalize or base.get("normalize", "none"),
    }


def save_onnx_version(source: Path, config: ModelConfig, directory: Path) -> ModelConfig:
    """Copy the graph into `directory` with its config, then load it there as the server would
    (ONNX Runtime session and warm-up); returns the config with the file's sha256."""
    target = directory / ONNX_FILE
    shutil.copyfile(source, target)
    target.chmod(FILE_MODE)
    config = config.model_copy(update={"weights_sha256": sha256_file(target)})
    write_config(directory, config)
    load_onnx(directory)
    return config
