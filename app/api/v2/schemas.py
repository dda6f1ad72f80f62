"""The `/v2` (Open Inference Protocol) bodies as Pydantic models, for the OpenAPI page only: the
routes decode requests with `app.v2`, which also reads the binary tensor data extension."""

from __future__ import annotations

from typing import Any

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
                    "extensions": ["binary_tensor_data", "model_repository"],
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


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: the tensor's bytes after the JSON header."
    )
    data: list[Any] | None = Field(None, description="Flat row-major or nested; strings for BYTES.")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data: true to receive this output as binary data."
    )


class InferRequestV2(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_NAME_EXAMPLE, _DIGIT_EXAMPLE]})
    id: str | None = Field(None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output: true to receive every output as binary data."
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="Which outputs; default all.")


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
    ready: bool = Field(False, description="List only ready versions.")


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
