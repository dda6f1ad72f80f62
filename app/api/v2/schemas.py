"""The `/v2` (Open Inference Protocol) bodies as Pydantic models. An infer request's JSON (the
whole body, or its part before the binary tensor data) is validated with `InferRequestV2` from its
bytes; what a model's tensors take (names, datatypes, shapes) is `app.api.v2.tensors`' to check."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

_NAME_EXAMPLE: dict[str, Any] = {
    "id": "42",
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["Nakamura", "Rossi"]}],
    "outputs": [{"name": "label"}],
}
_DIGIT_EXAMPLE: dict[str, Any] = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}],
    "parameters": {"binary_data_output": False},
}


class ServerMetadata(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "batchserve",
                    "version": "0.1.0",
                    "extensions": [
                        "binary_tensor_data",
                        "classification",
                        "statistics",
                        "model_configuration",
                        "model_repository",
                    ],
                }
            ]
        }
    )
    name: str
    version: str
    extensions: list[str] = Field(description="model_repository only with an admin key set.")


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool
    error: str | None = Field(None, description="Why not, when not ready.")


class ModelReadiness(BaseModel):
    name: str
    version: str
    ready: bool
    error: str | None = Field(None, description="The version's state and reason, when not ready.")


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="FP32, INT32 or BYTES.")
    shape: list[int] = Field(description="-1 is the batch dimension.")


class ModelMetadataV2(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "mnist-mlp",
                    "versions": ["1"],
                    "platform": "pytorch",
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
                    "outputs": [
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]},
                    ],
                    "version": "1",
                    "state": "ready",
                    "reason": None,
                }
            ]
        }
    )
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    version: str = Field(description="The version described (the default one when none named).")
    state: str = Field(description="loading, ready, failed, unloading or unavailable.")
    reason: str | None = None
    last_load_error: str | None = Field(
        None, description="Why the latest load request failed while this version served on."
    )


MAX_TENSORS = 64  # input or output tensors named in one request (every model has one input)
Dimension = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]


class RequestInput(BaseModel):
    name: str = Field(strict=True)
    shape: list[Dimension] = Field(max_length=8)
    datatype: str = Field(strict=True, description="FP32, INT32 or BYTES, as the model's input.")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: the tensor's bytes after the JSON header."
    )
    data: list[Any] | None = Field(None, description="Flat row-major or nested; strings for BYTES.")


class RequestOutput(BaseModel):
    name: str = Field(strict=True)
    parameters: dict[str, Any] | None = Field(
        None,
        description="binary_data: true to receive this output as binary data. classification: N "
        "to receive, instead of the output, its N largest elements per row as BYTES strings "
        '"value:index:label" (":label" only for outputs with labels), largest first.',
    )


class InferRequestV2(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_NAME_EXAMPLE, _DIGIT_EXAMPLE]})
    id: str | None = Field(None, strict=True, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output: true to receive every output as binary data."
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[RequestOutput] | None = Field(
        None, max_length=MAX_TENSORS, description="Which outputs; default all."
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponseV2(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_name": "names-rnn",
                    "model_version": "1",
                    "id": "42",
                    "outputs": [
                        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["JP", "IT"]}
                    ],
                }
            ]
        }
    )
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ready": False}]})
    ready: bool = Field(False, strict=True, description="List only ready versions.")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str


class RepositoryControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})
    parameters: dict[str, Any] | None = Field(
        None, description="Accepted; a 'config' override (as Triton takes) is refused with 400."
    )


class RepositoryLoadResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "mnist-mlp", "versions": ["2"], "default_version": "2"}]
        }
    )
    name: str
    versions: list[str] = Field(description="The versions now served, as the policy wants.")
    default_version: str


class RepositoryUnloadResponse(BaseModel):
    name: str
    state: str


class ConfigTensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    data_type: str = Field(description="TYPE_FP32, TYPE_INT32 or TYPE_STRING (BYTES).")
    dims: list[int] = Field(description="Without the batch dimension; one string per row is [1].")


class ModelConfigV2(BaseModel):
    """Triton's model configuration (`inference.ModelConfig` as JSON); every other field of
    that message is present with its default value."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "name": "mnist-mlp",
                    "platform": "pytorch",
                    "backend": "pytorch",
                    "max_batch_size": 256,
                    "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [784]}],
                    "output": [
                        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]},
                        {"name": "label", "data_type": "TYPE_STRING", "dims": [1]},
                    ],
                    "dynamic_batching": {
                        "max_queue_delay_microseconds": 2000,
                        "default_queue_policy": {"max_queue_size": 2048},
                    },
                    "instance_group": [{"name": "mnist-mlp", "kind": "KIND_CPU", "count": 1}],
                }
            ]
        },
    )
    name: str
    platform: str
    backend: str
    max_batch_size: int = Field(description="batchserve's max_batch_size for this model.")
    input: list[ConfigTensor]
    output: list[ConfigTensor]
    dynamic_batching: dict[str, Any] = Field(
        description="max_queue_delay_microseconds (max_batch_delay_ms) and "
        "default_queue_policy.max_queue_size."
    )
    instance_group: list[dict[str, Any]]


class StatisticDuration(BaseModel):
    count: int
    ns: int = Field(description="Nanoseconds, summed over `count`.")


class InferStatistics(BaseModel):
    success: StatisticDuration = Field(description="Requests answered; ns from arrival to answer.")
    fail: StatisticDuration
    queue: StatisticDuration = Field(description="Per request, the longest wait of its items.")
    compute_input: StatisticDuration = Field(description="Checking the request's items.")
    compute_infer: StatisticDuration = Field(description="The forward pass the items were in.")
    compute_output: StatisticDuration
    cache_hit: StatisticDuration
    cache_miss: StatisticDuration


class BatchStatistics(BaseModel):
    batch_size: int
    compute_input: StatisticDuration
    compute_infer: StatisticDuration = Field(description="Forward passes of this size.")
    compute_output: StatisticDuration


class VersionStatisticsV2(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    last_inference: int = Field(description="Milliseconds since the epoch; 0 = never.")
    inference_count: int = Field(description="Items computed.")
    execution_count: int = Field(description="Forward passes.")
    inference_stats: InferStatistics
    batch_stats: list[BatchStatistics]


class ModelStatisticsV2(BaseModel):
    model_stats: list[VersionStatisticsV2]
