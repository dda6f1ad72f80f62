"""The Open Inference Protocol's tensors, whatever carries them: the tensors a model offers
(derived from its config), named input tensors (shape, datatype, values or raw bytes) checked
and turned into the rows of items the data plane takes, and typed results turned into output
tensors (with Triton's classification extension). HTTP (`codec`) and gRPC (`app.api.grpc`) only
read and write their own wire forms around these."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from app.errors import InvalidInput, ResultNotFinite
from app.serving.context import RequestContext
from app.serving.dataplane import DataPlane
from app.serving.loader import LoadedModel
from app.serving.results import Classification, Scores
from app.serving.servables import json_type_name
from models.checkpoint import ModelConfig, SequenceInput, SubwordsInput, TextInput, WordsInput
from models.onnx_schema import OnnxArchitecture

FP32, INT32, BYTES = "FP32", "INT32", "BYTES"
LITTLE_ENDIAN = {FP32: "<f4", INT32: "<i4"}


class TensorError(InvalidInput):
    """A request that does not fit the model's tensors (the protocol answers it with 400)."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size (the batch dimension)
    labelled: bool = False  # one class per element, named by the model's labels

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def signature(config: ModelConfig) -> Signature:
    """The tensors follow from the task and the input kind, never from the model's name.

    Numeric sequences (`[T, F]`, T varying) are one FP32 tensor [N, T, F] of N items of one
    length; items of other lengths are sent as other requests (each, say, [1, T, F]), as
    Triton's ragged batching takes them: the dynamic batcher pads them into one forward pass."""
    spec = config.input
    if isinstance(spec, TextInput | WordsInput | SubwordsInput):
        source = TensorSpec("text", BYTES, (-1,))
    elif isinstance(spec, SequenceInput):
        source = TensorSpec("input", FP32, (-1, -1, spec.features))
    elif isinstance(config.architecture, OnnxArchitecture):  # the graph's input and item dims
        source = TensorSpec(config.architecture.input, FP32, (-1, *spec.shape))
    else:
        source = TensorSpec("input", FP32, (-1, math.prod(spec.shape)))
    outputs: tuple[TensorSpec, ...]
    labels = len(config.labels)
    if config.task == "multilabel":
        outputs = (
            TensorSpec("probabilities", FP32, (-1, labels), labelled=True),
            # 1 where the label's probability is at or above the threshold.
            TensorSpec("predicted", INT32, (-1, labels), labelled=True),
        )
    elif config.task == "regress":
        outputs = (TensorSpec("values", FP32, (-1, labels), labelled=True),)
    elif config.task == "score":
        outputs = (
            TensorSpec("log_prob", FP32, (-1,)),
            TensorSpec("num_tokens", INT32, (-1,)),
            TensorSpec("perplexity", FP32, (-1,)),
        )
    else:
        outputs = (
            TensorSpec("probabilities", FP32, (-1, len(config.labels)), labelled=True),
            TensorSpec("label", BYTES, (-1,)),
        )
    return Signature((source,), outputs)


def platform(config: ModelConfig | None) -> str:
    """The model metadata's platform: Triton's name for what runs the version."""
    return "onnxruntime_onnx" if config is not None and config.format == "onnx" else "pytorch"


# -- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputTensor:
    """One input tensor as a transport read it: `data` is a list of values (flat or nested as
    deep as the shape; strings for BYTES) or the tensor's raw little-endian bytes (BYTES
    elements each with a 4-byte length first). `where` names it in error messages."""

    name: Any
    datatype: Any
    shape: Any
    data: list[Any] | bytes
    where: str


@dataclass(frozen=True, slots=True)
class Items:
    """The checked request: one row per item, in the form `Servable.parse_item` takes."""

    input_name: str
    rows: list[Any]
    numbers: bool = False  # numeric rows whose values' types the decoder has checked


def decode_inputs(tensors: Sequence[InputTensor], signature: Signature, max_items: int) -> Items:
    if not tensors:
        raise TensorError("inputs: expected a non-empty array of input tensors")
    specs = {s.name: s for s in signature.inputs}
    decoded: dict[str, Any] = {}
    for tensor in tensors:
        name = check_name(tensor.name, tensor.where, [*specs], "input")
        if name in decoded:
            raise TensorError(f"input '{name}': given twice")
        decoded[name] = (_decode(tensor, specs[name], max_items), tensor.shape)
    missing = [n for n in specs if n not in decoded]
    if missing:
        raise TensorError(f"inputs: missing input(s) {missing}")
    # Every model has one input tensor today; the signature allows more.
    spec = signature.inputs[0]
    values, shape = decoded[spec.name]
    return Items(spec.name, _rows(values, spec, shape), spec.datatype != BYTES)


def _decode(tensor: InputTensor, spec: TensorSpec, max_items: int) -> Any:
    label = f"input '{spec.name}'"
    if tensor.datatype != spec.datatype:
        raise TensorError(
            f"{label}: datatype {tensor.datatype!r} does not match the model's {spec.datatype}"
        )
    shape = _shape(tensor.shape, spec, label, max_items)
    if isinstance(tensor.data, bytes):
        return _from_raw(tensor.data, spec.datatype, math.prod(shape), label)
    return _from_values(tensor.data, spec.datatype, shape, label)


def _shape(raw: Any, spec: TensorSpec, label: str, max_items: int) -> list[int]:
    if not isinstance(raw, list) or any(type(d) is not int or d < 0 for d in raw):
        raise TensorError(f"{label}: shape must be an array of non-negative integers")
    fits = len(raw) == len(spec.shape) and all(
        want in (-1, got) for got, want in zip(raw, spec.shape, strict=True)
    )
    # One string per row, as [N] or as [N, 1] (MLServer's StringCodec, Triton's dims [1]).
    fits = fits or (len(spec.shape) == 1 and len(raw) == 2 and raw[1] == 1)
    if not fits:
        raise TensorError(f"{label}: shape {raw} does not match the model's {list(spec.shape)}")
    if raw[0] == 0:
        raise TensorError(f"{label}: shape {raw} holds no items")
    if len(raw) == 3 and raw[1] == 0:
        raise TensorError(f"{label}: shape {raw}: a sequence needs at least one step")
    if raw[0] > max_items:
        raise TensorError(f"{label}: {raw[0]} items; the limit is {max_items} per request")
    return raw


def _from_values(data: Any, datatype: str, shape: list[int], label: str) -> list[Any]:
    flat = _flatten(data, len(shape), label)
    if len(flat) != math.prod(shape):
        raise TensorError(
            f"{label}: data has {len(flat)} elements but shape {shape} needs {math.prod(shape)}"
        )
    allowed = {str} if datatype == BYTES else {int, float}
    wrong = set(map(type, flat)) - allowed
    if wrong:
        found = ", ".join(sorted(json_type_name(t) for t in wrong))
        kind = "strings" if datatype == BYTES else "numbers"
        raise TensorError(f"{label}: {datatype} data must be {kind}; found {found}")
    return flat


def _flatten(data: Any, depth: int, label: str) -> list[Any]:
    """Nested (as deep as the shape) or flat row-major data, flattened; no recursion, so a
    deeply nested body cannot exhaust the stack."""
    if not isinstance(data, list):
        raise TensorError(f"{label}: data must be an array")
    flat = data
    for _ in range(depth - 1):
        nested = [type(v) is list for v in flat]
        if not any(nested):
            break
        if not all(nested):
            raise TensorError(f"{label}: data mixes arrays and values at one level")
        flat = list(chain.from_iterable(flat))
    return flat


def _from_raw(chunk: bytes, datatype: str, count: int, label: str) -> Any:
    if datatype == BYTES:
        return _unpack_strings(chunk, count, label)
    dtype = np.dtype(LITTLE_ENDIAN[datatype])
    if len(chunk) != count * dtype.itemsize:
        raise TensorError(
            f"{label}: {len(chunk)} bytes of data but the shape needs {count} "
            f"{datatype} elements ({count * dtype.itemsize} bytes)"
        )
    return np.frombuffer(chunk, dtype=dtype)


def _unpack_strings(chunk: bytes, count: int, label: str) -> list[str]:
    """BYTES elements: a 4-byte little-endian length, then that many bytes (UTF-8 here). Stops at
    the element the shape has no room for: the loop runs at most count + 1 times, however many
    empty elements the data holds."""
    strings: list[str] = []
    offset = 0
    while offset < len(chunk):
        if len(strings) == count:
            raise TensorError(
                f"{label}: binary data holds more than the {count} elements the shape needs"
            )
        if offset + 4 > len(chunk):
            raise TensorError(f"{label}: binary data ends inside element {len(strings)}'s length")
        (size,) = struct.unpack_from("<I", chunk, offset)
        start, offset = offset + 4, offset + 4 + size
        if offset > len(chunk):
            raise TensorError(f"{label}: element {len(strings)} runs past the end of its data")
        strings.append(utf8(chunk[start:offset], f"{label}: element {len(strings)}"))
    if len(strings) != count:
        raise TensorError(
            f"{label}: binary data holds {len(strings)} elements, shape needs {count}"
        )
    return strings


def utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TensorError(f"{where} is not UTF-8 text") from None


def _rows(values: Any, spec: TensorSpec, shape: list[int]) -> list[Any]:
    """One item per row of the batch dimension (a sequence: its T rows of F numbers)."""
    if spec.datatype == BYTES:
        return list(values)
    if len(spec.shape) == 3:
        steps, features = shape[1], shape[2]
        with np.errstate(over="ignore"):  # overflow to inf: "not a finite number", per item
            array = np.asarray(values, dtype=np.float32).reshape(-1, steps, features)
        return array.tolist()
    width = math.prod(spec.shape[1:])
    if isinstance(values, np.ndarray):
        return values.reshape(-1, width).tolist()
    return [values[i : i + width] for i in range(0, len(values), width)]


def check_name(name: Any, where: str, known: list[str], kind: str) -> str:
    """The name of an input or output tensor, one of the model's."""
    if not isinstance(name, str):
        raise TensorError(f"{where}: expected an object with a 'name' string")
    if name not in known:
        raise TensorError(f"{where}: unknown {kind} '{name}'; the model's {kind}s: {known}")
    return name


# -- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool  # HTTP: as binary data after the JSON; gRPC answers raw or typed as asked in
    class_count: int = 0  # > 0: Triton's classification extension, the top classes as strings


def check_outputs(requested: Sequence[RequestedOutput], signature: Signature) -> None:
    """Names checked one by one by the transport (`check_name`); here what needs them all."""
    seen: set[str] = set()
    for output in requested:
        if output.name in seen:
            raise TensorError(f"output '{output.name}': requested twice")
        seen.add(output.name)
        spec = next(s for s in signature.outputs if s.name == output.name)
        if output.class_count and spec.datatype == BYTES:
            raise TensorError(
                f"output '{output.name}': classification needs a numeric output; "
                f"{output.name} is {spec.datatype}"
            )


def class_count(raw: Any, where: str) -> int:
    """The `classification` parameter: how many top classes to return (0 = off)."""
    if type(raw) is not int or raw < 0:
        raise TensorError(f"{where}: parameters.classification must be a non-negative integer")
    return raw


@dataclass(frozen=True, slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: Any  # a numpy array, or a flat list of strings for BYTES
    binary: bool


async def infer(
    plane: DataPlane, model: LoadedModel, items: Items, ctx: RequestContext
) -> dict[str, Any]:
    """Every output tensor of the model for these items."""
    field = items.input_name
    if model.task == "score":
        return score_outputs(await plane.score(model, items.rows, ctx, field), field)
    result = await plane.classify(model, items.rows, ctx, field, items.numbers)
    return classify_outputs(result)


def classify_outputs(result: Classification) -> dict[str, Any]:
    if result.task == "multilabel":
        rows = np.asarray([item.probabilities for item in result.items], dtype=np.float32)
        over = np.asarray([item.probabilities for item in result.items]) >= np.asarray(
            [[item.threshold] for item in result.items]
        )
        return {"probabilities": rows, "predicted": over.astype(np.int32)}
    if result.task == "regress":
        return {"values": _fp32_rows([item.values for item in result.items], "values")}
    probabilities = np.asarray([item.probabilities for item in result.items], dtype=np.float32)
    labels = result.labels
    return {
        "probabilities": probabilities,
        "label": [labels[i] for i in probabilities.argmax(axis=1)],
    }


def score_outputs(result: Scores, field: str) -> dict[str, Any]:
    # The sums are the data plane's, in float64; rounded to FP32 only on the way out.
    items = result.items
    return {
        "log_prob": _fp32([s.log_prob for s in items], "log_prob", field),
        "num_tokens": np.asarray([s.num_tokens for s in items], dtype=np.int32),
        "perplexity": _fp32([s.perplexity or 0.0 for s in items], "perplexity", field),
    }


def _fp32_rows(rows: list[list[float]], name: str) -> Any:
    """Rows as FP32; a value beyond FP32's range (a regression's, scaled) is an error."""
    limit = float(np.finfo(np.float32).max)
    for i, row in enumerate(rows):
        if any(abs(v) > limit for v in row):
            raise ResultNotFinite(f"item {i}: {name} beyond the FP32 range")
    return np.asarray(rows, dtype=np.float32)


def _fp32(values: list[float], name: str, field: str) -> Any:
    """As FP32; a value beyond FP32's range would become infinity: an error for its item."""
    limit = float(np.finfo(np.float32).max)
    for i, value in enumerate(values):
        if abs(value) > limit:
            raise ResultNotFinite(f"{field}[{i}]: {name} {value:.6g} is beyond the FP32 range")
    return np.asarray(values, dtype=np.float32)


def output_tensors(
    values: dict[str, Any],
    requested: Sequence[RequestedOutput],
    signature: Signature,
    labels: Sequence[str],
) -> list[OutputTensor]:
    """The requested outputs in the order asked, each replaced by its top classes when a
    class_count is given."""
    specs = {s.name: s for s in signature.outputs}
    tensors = []
    for wanted in requested:
        spec, data = specs[wanted.name], values[wanted.name]
        if wanted.class_count:
            rows = _classes(data, wanted.class_count, labels if spec.labelled else None)
            flat = list(chain.from_iterable(rows))
            shape = [len(rows), len(rows[0]) if rows else 0]
            tensors.append(OutputTensor(spec.name, BYTES, shape, flat, wanted.binary))
            continue
        shape = list(data.shape) if isinstance(data, np.ndarray) else [len(data)]
        tensors.append(OutputTensor(spec.name, spec.datatype, shape, data, wanted.binary))
    return tensors


def _classes(data: Any, count: int, labels: Sequence[str] | None) -> list[list[str]]:
    """Triton's classification strings per row, best first: "value:index" or, when the output
    has labels, "value:index:label"; a float as C++'s std::to_string prints it (6 decimals)."""
    rows = np.asarray(data)
    rows = rows.reshape(len(rows), -1)
    integral = np.issubdtype(rows.dtype, np.integer)
    answer = []
    for row in rows.tolist():
        best = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:count]
        texts = []
        for i in best:
            value = str(row[i]) if integral else f"{row[i]:f}"
            texts.append(f"{value}:{i}:{labels[i]}" if labels else f"{value}:{i}")
        answer.append(texts)
    return answer


def to_bytes(values: Any, datatype: str) -> bytes:
    """A tensor's raw little-endian form; BYTES elements each with a 4-byte length first."""
    if datatype == BYTES:
        encoded = [v.encode("utf-8") for v in values]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.ascontiguousarray(values, dtype=LITTLE_ENDIAN[datatype]).tobytes()
