"""The Open Inference Protocol codec: the input and output tensors a model offers (derived from its
config), decoding an infer request (JSON data or Triton's binary tensor data extension) into the
rows of items the data plane takes, and encoding its typed results as output tensors."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from app.api.http import ascii_uint, parse_json
from app.errors import InvalidInput, ResultNotFinite
from app.serving.results import Classification, Scores, VersionInfo
from app.serving.servables import json_type_name
from models.checkpoint import ModelConfig, TextInput

HEADER_LENGTH = "Inference-Header-Content-Length"
FP32, INT32, BYTES = "FP32", "INT32", "BYTES"
_LITTLE_ENDIAN = {FP32: "<f4", INT32: "<i4"}
_UNSUPPORTED = {
    "shared_memory_region": "the shared-memory extension is not supported",
    "classification": "the classification extension is not supported; read 'probabilities'",
}


class TensorError(InvalidInput):
    """A request that does not fit the model's tensors (the protocol answers it with 400)."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size (the batch dimension)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A checked request: one row per item, in the form `Servable.parse_item` takes."""

    id: str | None
    input_name: str
    rows: list[Any]
    outputs: list[RequestedOutput]


def signature(config: ModelConfig) -> Signature:
    """The tensors follow from the task and the input kind, never from the model's name."""
    if isinstance(config.input, TextInput):
        source = TensorSpec("text", BYTES, (-1,))
    else:
        source = TensorSpec("input", FP32, (-1, math.prod(config.input.shape)))
    outputs: tuple[TensorSpec, ...]
    if config.task == "score":
        outputs = (
            TensorSpec("log_prob", FP32, (-1,)),
            TensorSpec("num_tokens", INT32, (-1,)),
            TensorSpec("perplexity", FP32, (-1,)),
        )
    else:
        outputs = (
            TensorSpec("probabilities", FP32, (-1, len(config.labels))),
            TensorSpec("label", BYTES, (-1,)),
        )
    return Signature((source,), outputs)


def model_metadata(info: VersionInfo, versions: list[str]) -> dict[str, Any]:
    tensors = signature(info.config) if info.config is not None else Signature((), ())
    meta: dict[str, Any] = {
        "name": info.name,
        "versions": versions,
        "platform": "pytorch",
        "inputs": [t.describe() for t in tensors.inputs],
        "outputs": [t.describe() for t in tensors.outputs],
        "version": info.version,
        "state": info.state,
        "reason": info.reason,
    }
    if info.last_load_error is not None:
        meta["last_load_error"] = info.last_load_error
    return meta


# -- request ----------------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None, max_values: int) -> tuple[Any, bytes]:
    """The JSON header (refused unparsed if it holds more than `max_values` values) and the
    binary tensor data after it."""
    if header_length is None:
        return parse_json(body, max_values), b""
    size = ascii_uint(header_length)
    if size is None or size > len(body):
        raise TensorError(
            f"{HEADER_LENGTH}: expected the JSON header's length in bytes (ASCII digits), at "
            f"most the body's {len(body)}; got {header_length!r}"
        )
    return parse_json(body[:size], max_values), body[size:]


def decode_request(body: Any, binary: bytes, tensors: Signature, max_items: int) -> InferRequest:
    if not isinstance(body, dict):
        raise TensorError("body: expected a JSON object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError("id: expected a string")
    parameters = _parameters(body, "parameters")
    binary_output = parameters.get("binary_data_output", False)
    if type(binary_output) is not bool:
        raise TensorError("parameters.binary_data_output: expected true or false")
    spec, values = _decode_inputs(body.get("inputs"), binary, tensors, max_items)
    outputs = _requested_outputs(body.get("outputs"), tensors, binary_output)
    return InferRequest(request_id, spec.name, _rows(values, spec), outputs)


def _decode_inputs(
    raw: Any, binary: bytes, tensors: Signature, max_items: int
) -> tuple[TensorSpec, Any]:
    """Binary data is laid out in the order of the `inputs` array, so decode in that order."""
    if not isinstance(raw, list) or not raw:
        raise TensorError("inputs: expected a non-empty array of input tensors")
    specs = {s.name: s for s in tensors.inputs}
    decoded: dict[str, Any] = {}
    offset = 0
    for i, tensor in enumerate(raw):
        name = _tensor_name(tensor, f"inputs[{i}]", [*specs], "input")
        if name in decoded:
            raise TensorError(f"input '{name}': given twice")
        decoded[name], offset = _decode_input(tensor, specs[name], binary, offset, max_items)
    if offset != len(binary):
        raise TensorError(
            f"body: {len(binary) - offset} bytes of binary data that no input's "
            "binary_data_size accounts for"
        )
    missing = [n for n in specs if n not in decoded]
    if missing:
        raise TensorError(f"inputs: missing input(s) {missing}")
    # Every model has one input tensor today; the signature allows more.
    spec = tensors.inputs[0]
    return spec, decoded[spec.name]


def _decode_input(
    tensor: dict[str, Any], spec: TensorSpec, binary: bytes, offset: int, max_items: int
) -> tuple[Any, int]:
    label = f"input '{spec.name}'"
    if tensor.get("datatype") != spec.datatype:
        raise TensorError(
            f"{label}: datatype {tensor.get('datatype')!r} does not match the model's "
            f"{spec.datatype}"
        )
    shape = _shape(tensor.get("shape"), spec, label, max_items)
    count = math.prod(shape)
    parameters = _parameters(tensor, f"{label}.parameters")
    _refuse_unsupported(parameters, label)
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise TensorError(f"{label}: no 'data' and no parameters.binary_data_size")
        return _from_json(tensor["data"], spec.datatype, shape, label), offset
    if "data" in tensor:
        raise TensorError(f"{label}: give either 'data' or parameters.binary_data_size, not both")
    if type(size) is not int or size < 0:
        raise TensorError(f"{label}: parameters.binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise TensorError(
            f"{label}: binary_data_size is {size} but only {len(binary) - offset} bytes of binary "
            f"data are left (is the {HEADER_LENGTH} header right?)"
        )
    chunk = binary[offset : offset + size]
    return _from_binary(chunk, spec.datatype, count, label), offset + size


def _shape(raw: Any, spec: TensorSpec, label: str, max_items: int) -> list[int]:
    if not isinstance(raw, list) or any(type(d) is not int or d < 0 for d in raw):
        raise TensorError(f"{label}: shape must be an array of non-negative integers")
    fits = len(raw) == len(spec.shape) and all(
        want in (-1, got) for got, want in zip(raw, spec.shape, strict=True)
    )
    if not fits:
        raise TensorError(f"{label}: shape {raw} does not match the model's {list(spec.shape)}")
    if raw[0] == 0:
        raise TensorError(f"{label}: shape {raw} holds no items")
    if raw[0] > max_items:
        raise TensorError(f"{label}: {raw[0]} items; the limit is {max_items} per request")
    return raw


def _from_json(data: Any, datatype: str, shape: list[int], label: str) -> Any:
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


def _from_binary(chunk: bytes, datatype: str, count: int, label: str) -> Any:
    if datatype == BYTES:
        return _unpack_strings(chunk, count, label)
    dtype = np.dtype(_LITTLE_ENDIAN[datatype])
    if len(chunk) != count * dtype.itemsize:
        raise TensorError(
            f"{label}: binary_data_size is {len(chunk)} bytes but the shape needs {count} "
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
            raise TensorError(f"{label}: element {len(strings)} runs past binary_data_size")
        try:
            strings.append(chunk[start:offset].decode("utf-8"))
        except UnicodeDecodeError:
            raise TensorError(f"{label}: element {len(strings)} is not UTF-8 text") from None
    if len(strings) != count:
        raise TensorError(
            f"{label}: binary data holds {len(strings)} elements, shape needs {count}"
        )
    return strings


def _rows(values: Any, spec: TensorSpec) -> list[Any]:
    """One item per row of the batch dimension."""
    if spec.datatype == BYTES:
        return list(values)
    width = math.prod(spec.shape[1:])
    if isinstance(values, np.ndarray):
        return values.reshape(-1, width).tolist()
    return [values[i : i + width] for i in range(0, len(values), width)]


def _requested_outputs(raw: Any, tensors: Signature, binary: bool) -> list[RequestedOutput]:
    if raw is None or raw == []:
        return [RequestedOutput(s.name, binary) for s in tensors.outputs]
    if not isinstance(raw, list):
        raise TensorError("outputs: expected an array of {'name': ...} objects")
    known = [s.name for s in tensors.outputs]
    chosen: list[RequestedOutput] = []
    for i, output in enumerate(raw):
        name = _tensor_name(output, f"outputs[{i}]", known, "output")
        if any(c.name == name for c in chosen):
            raise TensorError(f"output '{name}': requested twice")
        parameters = _parameters(output, f"output '{name}'.parameters")
        _refuse_unsupported(parameters, f"output '{name}'")
        as_binary = parameters.get("binary_data", binary)
        if type(as_binary) is not bool:
            raise TensorError(f"output '{name}': parameters.binary_data must be true or false")
        chosen.append(RequestedOutput(name, as_binary))
    return chosen


def _tensor_name(tensor: Any, where: str, known: list[str], kind: str) -> str:
    """The `name` of an input or output object, one of the model's."""
    name = tensor.get("name") if isinstance(tensor, dict) else None
    if not isinstance(name, str):
        raise TensorError(f"{where}: expected an object with a 'name' string")
    if name not in known:
        raise TensorError(f"{where}: unknown {kind} '{name}'; the model's {kind}s: {known}")
    return name


def _parameters(container: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = container.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise TensorError(f"{where}: expected an object")
    return parameters


def _refuse_unsupported(parameters: dict[str, Any], label: str) -> None:
    for key, why in _UNSUPPORTED.items():
        if key in parameters:
            raise TensorError(f"{label}: parameters.{key}: {why}")


# -- results as tensors ----------------------------------------------------------------------


def classify_outputs(result: Classification) -> dict[str, Any]:
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


def _fp32(values: list[float], name: str, field: str) -> Any:
    """As FP32; a value beyond FP32's range would become infinity: an error for its item."""
    limit = float(np.finfo(np.float32).max)
    for i, value in enumerate(values):
        if abs(value) > limit:
            raise ResultNotFinite(f"{field}[{i}]: {name} {value:.6g} is beyond the FP32 range")
    return np.asarray(values, dtype=np.float32)


# -- response ---------------------------------------------------------------------------------


def encode_response(
    model: tuple[str, str], request: InferRequest, outputs: dict[str, Any], tensors: Signature
) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary tensor data follows it; `model` is
    the (name, version) that answered."""
    specs = {s.name: s for s in tensors.outputs}
    header: dict[str, Any] = {"model_name": model[0], "model_version": model[1]}
    if request.id is not None:
        header["id"] = request.id
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for wanted in request.outputs:
        spec, values = specs[wanted.name], outputs[wanted.name]
        shape = list(values.shape) if isinstance(values, np.ndarray) else [len(values)]
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": shape}
        if wanted.binary:
            chunks.append(_to_binary(values, spec.datatype))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = values.ravel() if isinstance(values, np.ndarray) else values
        described.append(tensor)
    header["outputs"] = described
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _to_binary(values: Any, datatype: str) -> bytes:
    if datatype == BYTES:
        encoded = [v.encode("utf-8") for v in values]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.ascontiguousarray(values, dtype=_LITTLE_ENDIAN[datatype]).tobytes()
