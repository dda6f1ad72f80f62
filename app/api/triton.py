"""Triton's model configuration and statistics extensions, built once as Triton's own protobuf
messages from the data plane's answers: gRPC sends the messages as they are, HTTP prints them as
Triton prints its JSON (every field, 64-bit integers as numbers, which perf_analyzer needs)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from app.api.grpc.generated import grpc_service_pb2 as service
from app.api.grpc.generated import model_config_pb2 as config_pb
from app.api.v2.tensors import BYTES, FP32, INT32, Signature, TensorSpec, platform, signature
from app.errors import ModelNotReady
from app.serving.results import Duration, VersionInfo, VersionStatistics

PLATFORM = "pytorch"  # as the model metadata says
_DATA_TYPES = {
    FP32: config_pb.DataType.TYPE_FP32,
    INT32: config_pb.DataType.TYPE_INT32,
    BYTES: config_pb.DataType.TYPE_STRING,  # the configuration's name for BYTES
}
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def model_config(info: VersionInfo) -> Any:
    """`inference.ModelConfig` of a loaded version. Its tensors' dims leave the batch dimension
    out, as Triton's do when max_batch_size > 0: a row of one string is dims [1]."""
    if info.config is None or info.batching is None:
        raise ModelNotReady(
            f"model '{info.name}' version '{info.version}' is {info.state}; its configuration "
            "is known once it is loaded"
        )
    tensors: Signature = signature(info.config)
    batching = info.batching
    device = info.device or "cpu"
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
    gpus = [int(device.partition(":")[2] or 0)] if kind == "KIND_GPU" else []
    return config_pb.ModelConfig(
        name=info.name,
        platform=platform(info.config),
        backend="onnxruntime" if info.config.format == "onnx" else PLATFORM,
        max_batch_size=batching.max_batch_size,
        input=[
            config_pb.ModelInput(name=t.name, data_type=_DATA_TYPES[t.datatype], dims=_dims(t))
            for t in tensors.inputs
        ],
        output=[
            config_pb.ModelOutput(name=t.name, data_type=_DATA_TYPES[t.datatype], dims=_dims(t))
            for t in tensors.outputs
        ],
        dynamic_batching=config_pb.ModelDynamicBatching(
            max_queue_delay_microseconds=round(batching.max_batch_delay_ms * 1000),
            default_queue_policy=config_pb.ModelQueuePolicy(max_queue_size=batching.max_queue_size),
        ),
        instance_group=[
            config_pb.ModelInstanceGroup(name=info.name, kind=kind, count=1, gpus=gpus)
        ],
    )


def _dims(spec: TensorSpec) -> list[int]:
    return list(spec.shape[1:]) or [1]


def model_statistics(rows: list[VersionStatistics]) -> Any:
    """`inference.ModelStatisticsResponse` of the versions given."""
    return service.ModelStatisticsResponse(model_stats=[_version(row) for row in rows])


def _version(row: VersionStatistics) -> Any:
    zero = Duration()
    return service.ModelStatistics(
        name=row.name,
        version=row.version,
        last_inference=row.last_inference_ms,
        inference_count=row.inference_count,
        execution_count=row.execution_count,
        inference_stats=service.InferStatistics(
            success=_duration(row.success),
            fail=_duration(row.fail),
            queue=_duration(row.queue),
            compute_input=_duration(row.compute_input),
            compute_infer=_duration(row.compute_infer),
            compute_output=_duration(row.compute_output),
            cache_hit=_duration(zero),
            cache_miss=_duration(zero),
        ),
        batch_stats=[
            service.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(Duration(runs.count, 0)),
                compute_infer=_duration(runs),
                compute_output=_duration(Duration(runs.count, 0)),
            )
            for size, runs in sorted(row.batches.items())
        ],
    )


def _duration(duration: Duration) -> Any:
    return service.StatisticDuration(count=duration.count, ns=duration.ns)


def as_json(message: Message) -> dict[str, Any]:
    """The message as Triton's HTTP endpoints print it: field names as in the .proto, every
    field present, and 64-bit integers as JSON numbers (protobuf's JSON makes them strings)."""
    printed = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return _numbers(printed, message.DESCRIPTOR)


def _numbers(printed: dict[str, Any], descriptor: Any) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name not in printed:
            continue
        value = printed[field.name]
        if field.type in _INT64:
            printed[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None:
            printed[field.name] = _nested(value, field)
    return printed


def _nested(value: Any, field: FieldDescriptor) -> Any:
    message = field.message_type
    if message.GetOptions().map_entry:  # a map: its values may be messages or 64-bit integers
        value_field = message.fields_by_name["value"]
        return {k: _map_value(v, value_field) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, message) for v in value]
    if isinstance(value, dict):
        return _numbers(value, message)
    return value  # a well-known type printed as a scalar


def _map_value(value: Any, field: FieldDescriptor) -> Any:
    if field.type in _INT64:
        return int(value)
    if field.message_type is not None and isinstance(value, dict):
        return _numbers(value, field.message_type)
    return value
