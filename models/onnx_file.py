"""ONNX model versions: `model.onnx` beside `config.json`, run by ONNX Runtime. A graph file is
untrusted input like a checkpoint: it runs no code when loaded, but it can name external data
files anywhere, declare tensors of absurd sizes or use operators the runtime lacks, so it is read
with the onnx library and checked before ONNX Runtime sees it. Its inputs and outputs (names,
datatypes, dimensions; symbolic dimensions are dynamic) are checked against the config, and a
warm-up pass must give outputs of the right shape that are finite numbers.

onnx and onnxruntime are the optional extra `onnx`; they are imported only when a version needs
them. CUDA needs the `onnxruntime-gpu` wheel in place of `onnxruntime`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import (
    MAX_PARAMETERS,
    CheckpointError,
    ModelConfig,
    TextInput,
    VectorInput,
    read_config,
    sha256_file,
)
from models.onnx_schema import ONNX_FILE, OnnxArchitecture, OutputKind
from models.probe import warmup_inputs
from models.text import CharVocab

EXTRA = "pip install -c constraints.txt -e '.[onnx]' (in a checkout)"
MISSING = "this model version is ONNX and needs onnx and onnxruntime: " + EXTRA
MAX_FILE_BYTES = 2**31 - 1  # protobuf's limit for one message; bigger graphs use external data
MIN_OPSET = 11
# A multilabel graph's probabilities are clipped into [LOGIT_CLIP, 1 - LOGIT_CLIP] before their
# logits are taken: 0 and 1 give finite logits, which the head's sigmoid turns back into them
# (within float32's resolution).
LOGIT_CLIP = 1e-15
MAX_GRAPH_DEPTH = 32  # nested subgraphs (If, Loop, Scan bodies)
# Operator domains ONNX Runtime implements; a graph's own functions add theirs.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
HOW_TO_EXPORT = (
    "export it with a dynamic batch dimension: torch.onnx.export(model, args, path, "
    'dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)), or from Keras 3 '
    'model.export(path, format="onnx") with an Input whose batch size is None'
)

Array = np.ndarray[Any, np.dtype[Any]]

# OIP datatype names of ONNX element types (TensorProto.DataType values).
DATATYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}
FLOAT_INPUTS = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}
INTEGER_INPUTS = {"INT64": np.int64, "INT32": np.int32}


def require_runtime() -> Any:
    """The onnxruntime module, or a one-line error naming the extra."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise CheckpointError(MISSING) from None
    return onnxruntime


# -- reading and checking the graph -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """An input or output of the graph: -1 for a symbolic (dynamic) dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GraphFacts:
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]
    opset: int
    elements: int  # declared elements of every initializer and constant
    external_files: tuple[str, ...]

    def input(self, name: str) -> GraphTensor:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> GraphTensor:
        return next(t for t in self.outputs if t.name == name)


def read_graph(path: Path) -> Any:
    """The ModelProto of `path`, without its external data (checked, never followed, here)."""
    require_runtime()
    import onnx
    from google.protobuf.message import DecodeError

    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path.name} has {size:,} bytes; an ONNX file holds at most 2 GiB")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not an ONNX model: {exc}".splitlines()[0]) from None


def inspect_graph(proto: Any, directory: Path | None) -> GraphFacts:
    """Opset, operators, tensor sizes and external data of a ModelProto, and its signature.
    `directory`: where external data must lie (the version directory); None refuses any."""
    opset = _opset(proto)
    _check_operators(proto)
    elements, external = 0, []
    for tensor in _tensors(proto.graph, 0):
        elements += _declared_elements(tensor)
        if tensor.data_location == 1:  # TensorProto.EXTERNAL
            external.append(_external_file(tensor, directory))
    if elements > MAX_PARAMETERS:
        raise CheckpointError(
            f"the graph declares {elements:,} tensor elements (limit {MAX_PARAMETERS:,})"
        )
    initializers = {t.name for t in proto.graph.initializer}
    inputs = tuple(_tensor(v) for v in proto.graph.input if v.name not in initializers)
    outputs = tuple(_tensor(v) for v in proto.graph.output)
    return GraphFacts(inputs, outputs, opset, elements, tuple(dict.fromkeys(external)))


def _opset(proto: Any) -> int:
    import onnx

    versions = {o.domain: o.version for o in proto.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    if opset is None:
        raise CheckpointError("the graph imports no version of the standard ONNX operators")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise CheckpointError(
            f"the graph uses opset {opset}; batchserve serves opsets {MIN_OPSET} to {newest} "
            "(export again with torch.onnx.export(..., dynamo=True) or pass opset_version)"
        )
    return int(opset)


def _check_operators(proto: Any) -> None:
    import onnx

    functions = {(f.domain, f.name) for f in proto.functions}
    domains = KNOWN_DOMAINS | {f.domain for f in proto.functions}
    for node in _nodes(proto.graph, 0):
        where = f"node '{node.name or node.op_type}'"
        if (node.domain, node.op_type) in functions:
            continue
        if node.domain not in domains:
            raise CheckpointError(
                f"{where} uses operator {node.op_type} of domain '{node.domain}', which ONNX "
                "Runtime does not have (custom operators are not loaded)"
            )
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            raise CheckpointError(
                f"{where} uses operator {node.op_type}, which is not a standard ONNX operator "
                "and which ONNX Runtime does not have"
            )


def _graphs(graph: Any, depth: int) -> Iterator[Any]:
    if depth > MAX_GRAPH_DEPTH:
        raise CheckpointError(f"the graph nests subgraphs more than {MAX_GRAPH_DEPTH} deep")
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                yield from _graphs(sub, depth + 1)


def _nodes(graph: Any, depth: int) -> Iterator[Any]:
    for sub in _graphs(graph, depth):
        yield from sub.node


def _tensors(graph: Any, depth: int) -> Iterator[Any]:
    """Every tensor the graph stores: initializers and constants, in subgraphs too."""
    for sub in _graphs(graph, depth):
        yield from sub.initializer
        for sparse in sub.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in sub.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def _declared_elements(tensor: Any) -> int:
    """The elements the tensor's dims declare, refused when absurd or unlike what it holds."""
    dims = [int(d) for d in tensor.dims]
    name = f"tensor '{tensor.name}'" if tensor.name else "a constant tensor"
    if any(d < 0 for d in dims):
        raise CheckpointError(f"{name} declares negative dimensions {dims}")
    count = math.prod(dims)
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{name} declares dims {dims}: {count:,} elements (limit {MAX_PARAMETERS:,})"
        )
    if tensor.data_location == 1:
        return count
    held = _held_bytes(tensor) if tensor.raw_data else _held_values(tensor)
    wanted = count * _item_size(tensor) if tensor.raw_data else count
    if tensor.data_type != 8 and held != wanted:  # strings have no fixed size
        unit = "bytes" if tensor.raw_data else "values"
        raise CheckpointError(f"{name} declares dims {dims} ({wanted:,} {unit}) but holds {held:,}")
    return count


def _held_bytes(tensor: Any) -> int:
    return len(tensor.raw_data)


def _held_values(tensor: Any) -> int:
    fields = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
    held = sum(len(getattr(tensor, f)) for f in fields) + len(tensor.string_data)
    return held // 2 if tensor.data_type in (14, 15) else held  # complex: two values each


def _item_size(tensor: Any) -> int:
    import onnx

    try:
        return int(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(
            f"tensor '{tensor.name}' has an unknown element type {tensor.data_type}"
        ) from None


def _external_file(tensor: Any, directory: Path | None) -> str:
    """The external data file of a tensor, which must lie inside `directory`."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = str(entries.get("location", ""))
    name = f"tensor '{tensor.name}'"
    if directory is None:
        raise CheckpointError(
            f"{name} keeps its data in an external file ({location!r}); save the model with "
            "its data inside: onnx.save(onnx.load(path), out, save_as_external_data=False) "
            "(for models under 2 GiB)"
        )
    root = directory.resolve()
    target = (root / location).resolve()
    if not location or Path(location).is_absolute() or not target.is_relative_to(root):
        raise CheckpointError(
            f"{name} names external data {location!r} outside the version directory"
        )
    if not target.is_file():
        raise CheckpointError(f"{name} names external data {location!r}, which is missing")
    try:
        end = int(entries.get("offset", "0")) + int(entries.get("length", "0"))
    except ValueError:
        raise CheckpointError(f"{name} has a non-numeric external data offset or length") from None
    if end > target.stat().st_size:
        raise CheckpointError(f"{name} reads past the end of its external data {location!r}")
    return location


def _tensor(value: Any) -> GraphTensor:
    kind = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not kind.HasField("shape"):
        raise CheckpointError(f"graph tensor '{value.name}' declares no tensor shape")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
    datatype = DATATYPES.get(kind.elem_type, f"type {kind.elem_type}")
    return GraphTensor(value.name, datatype, dims)


# -- the graph against the config -------------------------------------------------------------


def check_against_config(facts: GraphFacts, config: ModelConfig) -> None:
    """The graph's tensors are the ones the config names, of the shapes its task needs."""
    arch = onnx_architecture(config)
    names = [t.name for t in facts.inputs]
    wanted = [arch.input, *([arch.lengths_input] if arch.lengths_input else [])]
    for name in wanted:
        if name not in names:
            raise CheckpointError(f"the config names input '{name}'; the graph's inputs: {names}")
    extra = [n for n in names if n not in wanted]
    if extra:
        raise CheckpointError(
            f"the graph's inputs {extra} are not the config's input or lengths_input"
        )
    outputs = [t.name for t in facts.outputs]
    if arch.output not in outputs:
        raise CheckpointError(
            f"the config names output '{arch.output}'; the graph's outputs: {outputs}"
        )
    for tensor in (*facts.inputs, facts.output(arch.output)):
        if not tensor.dims or tensor.dims[0] != -1:
            raise CheckpointError(
                f"graph tensor '{tensor.name}' has dims {list(tensor.dims)}, not a dynamic batch "
                f"dimension first; {HOW_TO_EXPORT}"
            )
    _check_input(facts.input(arch.input), config)
    if arch.lengths_input:
        lengths = facts.input(arch.lengths_input)
        if lengths.datatype not in INTEGER_INPUTS or len(lengths.dims) != 1:
            raise CheckpointError(
                f"lengths input '{lengths.name}' is {lengths.datatype} {list(lengths.dims)}; "
                "expected INT64 or INT32 [batch]"
            )
    _check_output(facts.output(arch.output), config)


def _check_input(tensor: GraphTensor, config: ModelConfig) -> None:
    where = f"graph input '{tensor.name}' ({tensor.datatype} {list(tensor.dims)})"
    if isinstance(config.input, VectorInput):
        if tensor.datatype not in FLOAT_INPUTS or -1 in tensor.dims[1:]:
            raise CheckpointError(f"{where}: a vector input needs floats of fixed item dims")
        if math.prod(tensor.dims[1:]) != math.prod(config.input.shape):
            raise CheckpointError(
                f"{where} does not hold the config's input shape {config.input.shape}"
            )
        return
    if tensor.datatype not in INTEGER_INPUTS or len(tensor.dims) != 2:
        raise CheckpointError(f"{where}: a text input needs [batch, steps] INT64 or INT32 ids")
    if tensor.dims[1] != -1:
        raise CheckpointError(
            f"{where}: the steps dimension is fixed; export it dynamic, e.g. "
            'dynamic_shapes=({0: batch, 1: torch.export.Dim("steps")}, ...)'
        )


def _check_output(tensor: GraphTensor, config: ModelConfig) -> None:
    where = f"graph output '{tensor.name}' ({tensor.datatype} {list(tensor.dims)})"
    if tensor.datatype not in FLOAT_INPUTS:
        raise CheckpointError(f"{where}: the head needs a float output")
    if config.task in PER_LABEL:
        if len(tensor.dims) != 2 or tensor.dims[1] not in (-1, len(config.labels)):
            raise CheckpointError(
                f"{where} does not match the config's {len(config.labels)} labels: expected "
                f"[batch, {len(config.labels)}]"
            )
        return
    vocab = _vocab(config).lm_vocab_size
    if len(tensor.dims) != 3 or tensor.dims[2] not in (-1, vocab):
        raise CheckpointError(
            f"{where}: a scoring model gives next-token [batch, steps, {vocab}] (the alphabet, "
            "BOS and EOS)"
        )


# The tasks whose head output is [batch, labels]: one value per label.
PER_LABEL = ("classify", "multilabel", "regress")


def onnx_architecture(config: ModelConfig) -> OnnxArchitecture:
    if not isinstance(config.architecture, OnnxArchitecture):
        raise CheckpointError(f"{config.name} is not an ONNX model version")
    return config.architecture


def _vocab(config: ModelConfig) -> CharVocab:
    assert isinstance(config.input, TextInput)
    return CharVocab(config.input.alphabet)


# -- running it ---------------------------------------------------------------------------------


def providers_for(device: str) -> tuple[list[Any], str]:
    """ONNX Runtime's execution providers for a device ('cpu', 'cuda', 'cuda:N', 'auto'), and
    the device they run on."""
    ort = require_runtime()
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"], "cpu"
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise CheckpointError(f"device {device!r}: expected cpu, cuda, cuda:N or auto")
    if not has_cuda:
        raise CheckpointError(
            f"device {device} asks for ONNX Runtime's CUDA execution provider, which this "
            "onnxruntime lacks: pip uninstall onnxruntime && pip install onnxruntime-gpu"
        )
    options = {"device_id": int(index or 0)}
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"], device


def open_session(path: Path, device: str, threads: int) -> tuple[Any, str]:
    """An InferenceSession of `path` with `threads` intra-op threads (no spinning: the cores are
    shared with the event loop), and the device it runs on."""
    ort = require_runtime()
    providers, device = providers_for(device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only; warnings go to stderr otherwise
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        raise CheckpointError(f"ONNX Runtime refused {path.name}: {_first_line(exc)}") from None
    if device != "cpu" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise CheckpointError(
            f"device {device}: ONNX Runtime fell back to the CPU (its CUDA libraries did not "
            "load; see onnxruntime-gpu's requirements)"
        )
    return session, device


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]


class OnnxModel:
    """A session and what feeding it needs: where each batch goes, its dtypes and item dims,
    and how the head reads the output. Its methods run on the inference thread."""

    def __init__(self, session: Any, config: ModelConfig, facts: GraphFacts, device: str) -> None:
        self.session, self.config, self.facts, self.device = session, config, facts, device
        arch = onnx_architecture(config)
        self.input_name, self.output_name = arch.input, arch.output
        self.lengths_name = arch.lengths_input
        self.output_kind: OutputKind = arch.output_kind
        source = facts.input(arch.input)
        self.item_dims = source.dims[1:]
        types = FLOAT_INPUTS if isinstance(config.input, VectorInput) else INTEGER_INPUTS
        self.input_dtype = types[source.datatype]
        lengths = facts.input(arch.lengths_input) if arch.lengths_input else None
        self.lengths_dtype = INTEGER_INPUTS[lengths.datatype] if lengths else np.int64

    def _run(self, feeds: dict[str, Array]) -> Array:
        (output,) = self.session.run([self.output_name], feeds)
        return np.asarray(output)

    def vectors(self, batch: Array) -> Array:
        """[B, width] floats in, [B, ...] head output."""
        shaped = batch.reshape(len(batch), *self.item_dims).astype(self.input_dtype, copy=False)
        return self._run({self.input_name: shaped})

    def tokens(self, rows: Sequence[Sequence[int]]) -> list[Array]:
        """Token id rows of any lengths in, one output per row: padded to the longest with the
        lengths input when the graph has one, else run in groups of equal length (a graph
        without lengths would read the padding)."""
        if self.lengths_name is None:
            return self._by_length(rows)
        lengths = np.array([len(r) for r in rows], dtype=self.lengths_dtype)
        padded = np.zeros((len(rows), int(lengths.max())), dtype=self.input_dtype)
        for i, row in enumerate(rows):
            padded[i, : len(row)] = row
        output = self._run({self.input_name: padded, self.lengths_name: lengths})
        if output.ndim == 3:  # per step: the item's own steps
            return [output[i, : len(row)] for i, row in enumerate(rows)]
        return [output[i] for i in range(len(rows))]

    def _by_length(self, rows: Sequence[Sequence[int]]) -> list[Array]:
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(len(row), []).append(i)
        answers: list[Array | None] = [None] * len(rows)
        for indices in groups.values():
            batch = np.array([rows[i] for i in indices], dtype=self.input_dtype)
            output = self._run({self.input_name: batch})
            for j, i in enumerate(indices):
                answers[i] = output[j]
        return [a for a in answers if a is not None]

    def probabilities(self, output: Array) -> Array:
        """Class probabilities from the head output ([..., labels])."""
        values: Array = output.astype(np.float64)
        if self.output_kind == "probabilities":
            return values
        if self.output_kind == "log_probabilities":
            return np.asarray(np.exp(values))
        shifted = np.exp(values - values.max(axis=-1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))

    def label_logits(self, output: Array) -> Array:
        """A multilabel head's per-label logits from its output: logits as they are, or
        log(p) - log(1 - p) of probabilities, so that the head's sigmoid gives p back (p clipped
        into (0, 1) first, so that 0 and 1 stay finite; NaN stays NaN)."""
        values: Array = output.astype(np.float64)
        if self.output_kind == "logits":
            return values
        p = np.clip(values, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
        return np.asarray(np.log(p) - np.log1p(-p))

    def log_probs(self, output: Array) -> Array:
        """Natural-log probabilities from the head output ([..., vocabulary])."""
        values: Array = output.astype(np.float64)
        if self.output_kind == "log_probabilities":
            return values
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.output_kind == "probabilities":
                return np.asarray(np.log(values))
            top = values.max(axis=-1, keepdims=True)
            return np.asarray(
                values - top - np.log(np.exp(values - top).sum(axis=-1, keepdims=True))
            )


def probe(model: OnnxModel) -> None:
    """A warm-up pass on the config's warm-up inputs (models.probe): outputs of the head's shape
    that are finite numbers, or a CheckpointError saying what is wrong."""
    config = model.config
    arguments = [a.cpu().numpy() for a in warmup_inputs(config, torch.device("cpu"))]
    try:
        if isinstance(config.input, VectorInput):
            outputs = list(model.vectors(arguments[0]))
            rows = len(arguments[0])
        else:
            padded, lengths = arguments
            rows = len(lengths)
            outputs = model.tokens([list(padded[i, : lengths[i]]) for i in range(rows)])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        raise CheckpointError(f"the warm-up pass failed: {_first_line(exc)}") from None
    for i, output in enumerate(outputs):
        _check_probe_output(model, output, i)


def _check_probe_output(model: OnnxModel, output: Array, row: int) -> None:
    config = model.config
    if config.task in PER_LABEL:
        expected: tuple[int, ...] = (len(config.labels),)
    else:
        expected = (output.shape[0] if output.ndim else 0, _vocab(config).lm_vocab_size)
    if output.shape != expected:
        raise CheckpointError(
            f"the warm-up pass gives output '{model.output_name}' of shape {list(output.shape)} "
            f"per item; the config's {config.task} head needs {list(expected)}"
        )
    if config.task == "classify":
        head = model.probabilities(output)
    elif config.task == "multilabel":
        head = model.label_logits(output)
    elif config.task == "regress":
        head = output
    else:
        head = model.log_probs(output)
    finite = ~np.isnan(head) if config.task == "score" else np.isfinite(head)
    if not finite.all():
        raise CheckpointError(
            f"the warm-up pass gives {int((~finite).sum())} non-finite outputs (NaN or infinity) "
            f"of {head.size} for warm-up item {row}"
        )
    if config.task == "multilabel" and model.output_kind == "probabilities":
        outside = int(((output < 0) | (output > 1)).sum())
        if outside:
            raise CheckpointError(
                f"the warm-up pass gives {outside} probabilities outside [0, 1] for warm-up item "
                f"{row}: is architecture.output_kind 'logits'?"
            )


def load_onnx(
    directory: Path, device: str = "cpu", threads: int = 1
) -> tuple[OnnxModel, ModelConfig]:
    """Read, check, open and probe the ONNX version in `directory`."""
    config = read_config(directory)
    if config.format != "onnx":
        raise CheckpointError(f"{directory} is not an ONNX model version")
    path = directory / ONNX_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    if config.weights_sha256 and sha256_file(path) != config.weights_sha256:
        raise CheckpointError(f"{ONNX_FILE} does not match weights_sha256 in config.json")
    facts = inspect_graph(read_graph(path), directory)
    check_against_config(facts, config)
    session, device = open_session(path, device, threads)
    model = OnnxModel(session, config, facts, device)
    probe(model)
    return model, config
