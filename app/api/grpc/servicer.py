"""`inference.GRPCInferenceService`: each RPC decodes its message, calls the data plane once and
encodes the answer. Tensors go through the same checks as HTTP's (`app.api.v2.tensors`); the
interceptor (`Guard`) has already checked the key and the deadline and maps raised errors to
status codes. Inputs come as `raw_input_contents` (what tritonclient always sends) or typed
`contents` (KServe's client, for lists): answers come back the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from app import __version__
from app.api import triton
from app.api.grpc.generated import grpc_service_pb2 as pb
from app.api.grpc.interceptor import REQUEST
from app.api.v2 import tensors
from app.api.v2.endpoints import SERVER_NAME, extensions
from app.api.v2.tensors import BYTES, InputTensor, OutputTensor, RequestedOutput, TensorError
from app.errors import LoadRequestFailed, ModelNotFound, NotImplementedHere
from app.serving.dataplane import DataPlane
from app.serving.loader import LoadedModel
from app.settings import Settings

# Where typed data of each datatype goes in InferTensorContents.
CONTENTS: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_NOT_OFFERED = "batchserve does not offer {what} over gRPC"


class InferenceServicer:
    """Every RPC of the service (grpc registers them by name); the unimplemented ones answer
    UNIMPLEMENTED with a reason."""

    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.settings = settings

    # -- health and metadata ------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.readiness().ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            info = self.plane.describe(request.name, request.version or None)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)  # as Triton answers an unknown model
        return pb.ModelReadyResponse(ready=info.state == "ready")

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=extensions(self.settings)
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        version = request.version or None
        info = self.plane.describe(request.name, version)
        signature = tensors.signature(info.config) if info.config else tensors.Signature((), ())
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=info.versions if version is None else [version],
            platform=tensors.platform(info.config),
            inputs=[_metadata(t) for t in signature.inputs],
            outputs=[_metadata(t) for t in signature.outputs],
        )

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        info = self.plane.describe(request.name, request.version or None)
        return pb.ModelConfigResponse(config=triton.model_config(info))

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        rows = self.plane.statistics(request.name or None, request.version or None)
        return triton.model_statistics(rows)

    # -- inference ----------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        ctx = REQUEST.get()
        plane, settings = self.plane, self.settings
        model = await plane.bind(request.model_name, request.model_version or None, ctx, "infer")
        signature = tensors.signature(model.config)
        raw = len(request.raw_input_contents) > 0
        items = tensors.decode_inputs(_inputs(request), signature, settings.max_items_per_request)
        requested = _requested_outputs(request, signature, raw)
        outputs = await tensors.infer(plane, model, items, ctx)
        answer = tensors.output_tensors(outputs, requested, signature, model.config.labels)
        return _response(model, request.id, answer, raw)

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            _NOT_OFFERED.format(what="streaming inference (ModelStreamInfer)"),
        )

    # -- the model repository (only with BATCHSERVE_ADMIN_API_KEY) -------------------------------
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        self._repository_on()
        rows = self.plane.repository_index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=r.name, version=r.version, state=r.state, reason=r.reason
                )
                for r in rows
            ]
        )

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self._repository_on()
        overrides = [k for k in request.parameters if k == "config" or k.startswith("file:")]
        if overrides:
            raise LoadRequestFailed(
                f"parameters: {sorted(overrides)} not supported; batchserve loads what is in "
                "the repository"
            )
        await self.plane.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self._repository_on()
        await self.plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _repository_on(self) -> None:
        if self.settings.admin_api_key is None:
            raise NotImplementedHere(
                "the model repository extension is off (set BATCHSERVE_ADMIN_API_KEY)"
            )

    # -- not offered --------------------------------------------------------------------------
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        raise NotImplementedHere(_NOT_OFFERED.format(what="system shared memory"))

    SystemSharedMemoryRegister = SystemSharedMemoryStatus
    SystemSharedMemoryUnregister = SystemSharedMemoryStatus

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        raise NotImplementedHere(_NOT_OFFERED.format(what="CUDA shared memory"))

    CudaSharedMemoryRegister = CudaSharedMemoryStatus
    CudaSharedMemoryUnregister = CudaSharedMemoryStatus

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        raise NotImplementedHere(_NOT_OFFERED.format(what="trace settings"))

    async def LogSettings(self, request: Any, context: Any) -> Any:
        raise NotImplementedHere(_NOT_OFFERED.format(what="log settings"))


def _metadata(spec: tensors.TensorSpec) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )


# -- decoding ----------------------------------------------------------------------------------


def _inputs(request: Any) -> list[InputTensor]:
    """The input tensors with their raw bytes, or their typed contents as a list of values."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs; give one "
            "per input, in the order of inputs"
        )
    found = []
    for i, tensor in enumerate(request.inputs):
        label = f"input '{tensor.name}'"
        if "shared_memory_region" in tensor.parameters:
            raise TensorError(f"{label}: the shared-memory extension is not supported")
        present = [field.name for field, _ in tensor.contents.ListFields()]
        if raw and present:
            raise TensorError(f"{label}: typed contents beside raw_input_contents; send one kind")
        data = raw[i] if raw else _typed(tensor, present, label)
        shape = list(tensor.shape)
        found.append(InputTensor(tensor.name, tensor.datatype, shape, data, f"inputs[{i}]"))
    return found


def _typed(tensor: Any, present: list[str], label: str) -> list[Any]:
    wanted = CONTENTS.get(tensor.datatype)
    stray = [name for name in present if name != wanted]
    if stray:
        where = f"{wanted}" if wanted else "no contents field known"
        raise TensorError(f"{label}: {tensor.datatype} data goes in {where}; found {stray}")
    if wanted is None:
        return []
    values = list(getattr(tensor.contents, wanted))
    if tensor.datatype == BYTES:
        return [tensors.utf8(v, f"{label}: element {i}") for i, v in enumerate(values)]
    return values


def _requested_outputs(
    request: Any, signature: tensors.Signature, raw: bool
) -> list[RequestedOutput]:
    if not request.outputs:
        return [RequestedOutput(s.name, raw) for s in signature.outputs]
    known = [s.name for s in signature.outputs]
    chosen = []
    for i, output in enumerate(request.outputs):
        name = tensors.check_name(output.name, f"outputs[{i}]", known, "output")
        parameters = output.parameters
        if "shared_memory_region" in parameters:
            raise TensorError(f"output '{name}': the shared-memory extension is not supported")
        count = 0
        if "classification" in parameters:
            parameter = parameters["classification"]
            value = parameter.int64_param if parameter.HasField("int64_param") else None
            count = tensors.class_count(value, f"output '{name}'")
        chosen.append(RequestedOutput(name, raw, count))
    tensors.check_outputs(chosen, signature)
    return chosen


# -- encoding ----------------------------------------------------------------------------------


def _response(model: LoadedModel, request_id: str, outputs: list[OutputTensor], raw: bool) -> Any:
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request_id
    )
    for output in outputs:
        tensor = response.outputs.add(name=output.name, datatype=output.datatype)
        tensor.shape.extend(output.shape)
        if raw:
            response.raw_output_contents.append(tensors.to_bytes(output.values, output.datatype))
        elif output.datatype == BYTES:
            tensor.contents.bytes_contents.extend(v.encode("utf-8") for v in output.values)
        else:
            field = getattr(tensor.contents, CONTENTS[output.datatype])
            field.extend(output.values.ravel().tolist())
    return response
