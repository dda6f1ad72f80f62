"""The Open Inference Protocol's HTTP bodies: model metadata as JSON, an infer request (its JSON
validated by `InferRequestV2`, Triton's binary tensor data after it) read into named tensors, and
output tensors written back as JSON or binary data. The tensors themselves are `tensors`' business,
shared with gRPC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.api.http import ascii_uint
from app.api.v2.schemas import InferRequestV2, RequestInput, RequestOutput
from app.api.v2.tensors import (
    InputTensor,
    Items,
    OutputTensor,
    RequestedOutput,
    Signature,
    TensorError,
    check_name,
    check_outputs,
    class_count,
    decode_inputs,
    platform,
    signature,
    to_bytes,
)
from app.serving.results import VersionInfo

HEADER_LENGTH = "Inference-Header-Content-Length"
_UNSUPPORTED = {"shared_memory_region": "the shared-memory extension is not supported"}


@dataclass(slots=True)
class InferRequest:
    """A checked request: its id, its items and the outputs it wants."""

    id: str | None
    items: Items
    outputs: list[RequestedOutput]


def model_metadata(info: VersionInfo, versions: list[str]) -> dict[str, Any]:
    tensors = signature(info.config) if info.config is not None else Signature((), ())
    meta: dict[str, Any] = {
        "name": info.name,
        "versions": versions,
        "platform": platform(info.config),
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


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The binary tensor data extension's splitter: the JSON header's bytes (the whole body
    without Inference-Header-Content-Length) and the binary tensor data after it."""
    if header_length is None:
        return body, b""
    size = ascii_uint(header_length)
    if size is None or size > len(body):
        raise TensorError(
            f"{HEADER_LENGTH}: expected the JSON header's length in bytes (ASCII digits), at "
            f"most the body's {len(body)}; got {header_length!r}"
        )
    return body[:size], body[size:]


def decode_request(
    body: InferRequestV2, binary: bytes, tensors: Signature, max_items: int
) -> InferRequest:
    """The validated JSON and the binary data as the model's items and the outputs wanted."""
    parameters = body.parameters or {}
    binary_output = parameters.get("binary_data_output", False)
    if type(binary_output) is not bool:
        raise TensorError("parameters.binary_data_output: expected true or false")
    items = decode_inputs(_input_tensors(body.inputs, binary), tensors, max_items)
    outputs = _requested_outputs(body.outputs, tensors, binary_output)
    return InferRequest(body.id, items, outputs)


def _input_tensors(raw: list[RequestInput], binary: bytes) -> list[InputTensor]:
    """Binary data is laid out in the order of the `inputs` array, so read it in that order."""
    tensors: list[InputTensor] = []
    offset = 0
    for i, tensor in enumerate(raw):
        label = f"input '{tensor.name}'"
        data, offset = _input_data(tensor, label, binary, offset)
        tensors.append(
            InputTensor(tensor.name, tensor.datatype, tensor.shape, data, f"inputs[{i}]")
        )
    if offset != len(binary):
        raise TensorError(
            f"body: {len(binary) - offset} bytes of binary data that no input's "
            "binary_data_size accounts for"
        )
    return tensors


def _input_data(
    tensor: RequestInput, label: str, binary: bytes, offset: int
) -> tuple[list[Any] | bytes, int]:
    """The tensor's JSON `data`, or its slice of the binary data; and the offset after it."""
    parameters = tensor.parameters or {}
    _refuse_unsupported(parameters, label)
    size = parameters.get("binary_data_size")
    if size is None:
        if tensor.data is None:
            raise TensorError(f"{label}: no 'data' and no parameters.binary_data_size")
        return tensor.data, offset
    if tensor.data is not None:
        raise TensorError(f"{label}: give either 'data' or parameters.binary_data_size, not both")
    if type(size) is not int or size < 0:
        raise TensorError(f"{label}: parameters.binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise TensorError(
            f"{label}: binary_data_size is {size} but only {len(binary) - offset} bytes of binary "
            f"data are left (is the {HEADER_LENGTH} header right?)"
        )
    return binary[offset : offset + size], offset + size


def _requested_outputs(
    raw: list[RequestOutput] | None, tensors: Signature, binary: bool
) -> list[RequestedOutput]:
    if not raw:
        return [RequestedOutput(s.name, binary) for s in tensors.outputs]
    known = [s.name for s in tensors.outputs]
    chosen: list[RequestedOutput] = []
    for i, output in enumerate(raw):
        name = check_name(output.name, f"outputs[{i}]", known, "output")
        parameters = output.parameters or {}
        _refuse_unsupported(parameters, f"output '{name}'")
        as_binary = parameters.get("binary_data", binary)
        if type(as_binary) is not bool:
            raise TensorError(f"output '{name}': parameters.binary_data must be true or false")
        count = class_count(parameters.get("classification", 0), f"output '{name}'")
        chosen.append(RequestedOutput(name, as_binary, count))
    check_outputs(chosen, tensors)
    return chosen


def _refuse_unsupported(parameters: dict[str, Any], label: str) -> None:
    for key, why in _UNSUPPORTED.items():
        if key in parameters:
            raise TensorError(f"{label}: parameters.{key}: {why}")


# -- response ---------------------------------------------------------------------------------


def encode_response(
    model: tuple[str, str], request_id: str | None, outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary tensor data follows it; `model` is
    the (name, version) that answered."""
    header: dict[str, Any] = {"model_name": model[0], "model_version": model[1]}
    if request_id is not None:
        header["id"] = request_id
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in outputs:
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        values = output.values
        if output.binary:
            chunks.append(to_bytes(values, output.datatype))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = values.ravel() if hasattr(values, "ravel") else values
        described.append(tensor)
    header["outputs"] = described
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
