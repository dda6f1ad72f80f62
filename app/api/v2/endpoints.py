"""The Open Inference Protocol over HTTP (KServe / Triton `/v2`): health, metadata, `infer` with the
binary tensor data extension, and, only when an admin key is set, the model repository extension.
Tensors are decoded and encoded by `app.api.v2.codec`; the work is the data plane's."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app import __version__
from app.api import triton
from app.api.http import HttpResponse, json_response, parse_json
from app.api.router import Call, Endpoint
from app.api.v2 import codec, tensors
from app.api.v2.schemas import (
    InferRequestV2,
    InferResponseV2,
    Liveness,
    ModelConfigV2,
    ModelMetadataV2,
    ModelReadiness,
    ModelStatisticsV2,
    Readiness,
    RepositoryControlRequest,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryLoadResponse,
    RepositoryUnloadResponse,
    ServerMetadata,
)
from app.errors import LoadRequestFailed, MalformedRequest
from app.settings import Settings

BINARY_TENSOR_DATA, MODEL_REPOSITORY = "binary_tensor_data", "model_repository"
CLASSIFICATION, STATISTICS = "classification", "statistics"
MODEL_CONFIGURATION = "model_configuration"
SERVER_NAME = "batchserve"

_AUTH = {401: "Missing or wrong API key", 503: "Shutting down"}
_MODEL = {**_AUTH, 404: "Unknown model or version"}
_INFER_ERRORS = {
    **_MODEL,
    400: "Malformed request, or tensors that do not fit the model (the message says which)",
    413: "Body too large",
    422: "The model failed on an item",
    503: "Queue full (with Retry-After), model not ready, or shutting down",
    504: "The X-Request-Timeout-Ms deadline passed before the work started",
}
_ADMIN = {400: "Malformed body", 401: "Missing or wrong admin key", 503: "Shutting down"}


# -- server -----------------------------------------------------------------------------------


def extensions(settings: Settings) -> list[str]:
    """The protocol extensions served, on HTTP and gRPC alike (perf_analyzer reads statistics
    only when it is listed here)."""
    served = [BINARY_TENSOR_DATA, CLASSIFICATION, STATISTICS, MODEL_CONFIGURATION]
    if settings.admin_api_key is not None:
        served.append(MODEL_REPOSITORY)
    return served


async def server_metadata(call: Call) -> HttpResponse:
    served = extensions(call.settings)
    return json_response({"name": SERVER_NAME, "version": __version__, "extensions": served})


async def live(call: Call) -> HttpResponse:
    return json_response({"live": True})


async def ready(call: Call) -> HttpResponse:
    readiness = call.plane.readiness()
    if readiness.ready:
        return json_response({"ready": True})
    return json_response({"ready": False, "error": readiness.reason}, status=503)


# -- models -----------------------------------------------------------------------------------


async def model_metadata(call: Call) -> HttpResponse:
    version = call.params.get("version")
    info = call.plane.describe(call.params["name"], version)
    versions = info.versions if version is None else [version]
    return json_response(codec.model_metadata(info, versions))


async def model_ready(call: Call) -> HttpResponse:
    name = call.params["name"]
    info = call.plane.describe(name, call.params.get("version"))
    ready = info.state == "ready"
    body: dict[str, Any] = {"name": info.name, "version": info.version, "ready": ready}
    if ready:
        return json_response(body)
    why = f": {info.reason}" if info.reason else ""
    body["error"] = f"model '{name}' version '{info.version}' is {info.state}{why}"
    return json_response(body, status=400)


# -- inference --------------------------------------------------------------------------------


async def infer(call: Call) -> HttpResponse:
    name, version = call.params["name"], call.params.get("version")
    plane, settings, ctx = call.plane, call.settings, call.ctx
    plane.require(name, version)  # 404 before a body is read
    body = await call.body()
    model = await plane.bind(name, version, ctx, "infer")
    max_values = settings.max_items_per_request * model.servable.max_item_values
    length = call.header(codec.HEADER_LENGTH.lower().encode())
    header, binary = codec.split_body(body, length, max_values)
    signature = tensors.signature(model.config)
    request = codec.decode_request(header, binary, signature, settings.max_items_per_request)
    outputs = await tensors.infer(plane, model, request.items, ctx)
    answer = tensors.output_tensors(outputs, request.outputs, signature, model.config.labels)
    content, header_length = codec.encode_response((model.name, model.version), request.id, answer)
    if header_length is None:
        return HttpResponse(content)
    return HttpResponse(
        content,
        content_type=b"application/octet-stream",
        headers={codec.HEADER_LENGTH: str(header_length)},
    )


# -- Triton's extensions: model configuration and statistics ----------------------------------


async def model_config(call: Call) -> HttpResponse:
    info = call.plane.describe(call.params["name"], call.params.get("version"))
    return json_response(triton.as_json(triton.model_config(info)))


async def model_statistics(call: Call) -> HttpResponse:
    rows = call.plane.statistics(call.params.get("name"), call.params.get("version"))
    return json_response(triton.as_json(triton.model_statistics(rows)))


# -- model repository (only with BATCHSERVE_ADMIN_API_KEY) -------------------------------------


async def _control_body(call: Call, allowed: set[str]) -> dict[str, Any]:
    """The (optional) JSON object of a repository request, with only `allowed` keys."""
    raw = await call.body()
    body = parse_json(raw) if raw else {}  # the body is optional; whitespace is not JSON
    if not isinstance(body, dict):
        raise MalformedRequest("body: expected a JSON object")
    unknown = body.keys() - allowed
    if unknown:
        raise MalformedRequest(
            f"body: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    return body


async def repository_index(call: Call) -> HttpResponse:
    body = await _control_body(call, {"ready"})
    ready_only = body.get("ready", False)
    if type(ready_only) is not bool:
        raise MalformedRequest("ready: expected true or false")
    return json_response(call.plane.repository_index(ready_only))


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    parameters = body.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise MalformedRequest("parameters: expected an object")
    return parameters


async def load_model(call: Call) -> HttpResponse:
    name = call.params["name"]
    parameters = _parameters(await _control_body(call, {"parameters"}))
    overrides = [k for k in parameters if k == "config" or str(k).startswith("file:")]
    if overrides:
        raise LoadRequestFailed(
            f"parameters: {overrides} not supported; batchserve loads what is in the repository"
        )
    versions = await call.plane.load(name)
    return json_response({"name": name, "versions": versions, "default_version": versions[-1]})


async def unload_model(call: Call) -> HttpResponse:
    name = call.params["name"]
    _parameters(await _control_body(call, {"parameters"}))
    await call.plane.unload(name)
    return json_response({"name": name, "state": "unavailable"})


def table(with_repository: bool) -> list[Endpoint]:
    """The /v2 table; the repository extension only `with_repository` (an admin key is set)."""
    tags = ("v2",)
    models, versioned = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    health = Endpoint(
        "GET",
        "/v2/health/live",
        live,
        "Liveness (no auth)",
        tags,
        auth="none",
        served_while_draining=True,
        response_schema=Liveness,
    )
    metadata = Endpoint(
        "GET",
        models,
        model_metadata,
        "Model metadata",
        tags,
        invalid_input_status=400,
        response_schema=ModelMetadataV2,
        errors=_MODEL,
    )
    readiness = replace(
        metadata,
        path=f"{models}/ready",
        handler=model_ready,
        summary="Model readiness",
        response_schema=ModelReadiness,
        errors={**_MODEL, 400: "Known but not ready (the protocol's 4xx)"},
    )
    inference = Endpoint(
        "POST",
        f"{models}/infer",
        infer,
        "Infer with the newest ready version",
        tags,
        inference=True,
        metric="infer",
        invalid_input_status=400,
        binary_body=True,
        request_schema=InferRequestV2,
        response_schema=InferResponseV2,
        errors=_INFER_ERRORS,
        docs={"binary": True},
    )
    table = [
        Endpoint(
            "GET",
            "/v2",
            server_metadata,
            "Server metadata",
            tags,
            response_schema=ServerMetadata,
            errors=_AUTH,
        ),
        health,
        replace(
            health,
            path="/v2/health/ready",
            handler=ready,
            summary="Readiness (no auth): every model has a ready version",
            response_schema=Readiness,
            errors={503: "Not ready, or shutting down"},
        ),
        metadata,
        replace(
            metadata,
            path=versioned,
            summary="Model version metadata",
            operation="version_metadata",
        ),
        readiness,
        replace(
            readiness,
            path=f"{versioned}/ready",
            summary="Model version readiness",
            operation="version_ready",
        ),
        inference,
        replace(
            inference,
            path=f"{versioned}/infer",
            summary="Infer with one version",
            operation="infer_version",
        ),
    ]
    table += _triton_endpoints(metadata)
    if with_repository:
        table += _repository_endpoints()
    return table


def _triton_endpoints(metadata: Endpoint) -> list[Endpoint]:
    """Triton's model configuration and statistics extensions (tritonclient, perf_analyzer)."""
    models, versioned = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    config = replace(
        metadata,
        path=f"{models}/config",
        handler=model_config,
        summary="Model configuration (Triton's): tensors, max_batch_size, dynamic batching",
        response_schema=ModelConfigV2,
        errors={**_MODEL, 503: "The version is not loaded, or shutting down"},
    )
    stats = replace(
        metadata,
        path="/v2/models/stats",
        handler=model_statistics,
        summary="Inference statistics of every ready model version (Triton's extension)",
        response_schema=ModelStatisticsV2,
        errors=_AUTH,
    )
    return [
        config,
        replace(
            config,
            path=f"{versioned}/config",
            summary="Model version configuration (Triton's)",
            operation="version_config",
        ),
        stats,
        replace(
            stats,
            path=f"{models}/stats",
            summary="Inference statistics of a model's ready versions",
            errors=_MODEL,
            operation="model_statistics_of",
        ),
        replace(
            stats,
            path=f"{versioned}/stats",
            summary="Inference statistics of one model version",
            errors=_MODEL,
            operation="version_statistics",
        ),
    ]


def _repository_endpoints() -> list[Endpoint]:
    tags = ("v2 model repository",)
    control = Endpoint(
        "POST",
        "/v2/repository/models/{name}/load",
        load_model,
        "Load new versions of a model (its policy decides which) and retire old ones",
        tags,
        auth="admin",
        request_schema=RepositoryControlRequest,
        request_required=False,
        response_schema=RepositoryLoadResponse,
        errors={
            **_ADMIN,
            400: "The load failed (what served before still serves), or a malformed body",
            404: "No such model",
        },
    )
    return [
        Endpoint(
            "POST",
            "/v2/repository/index",
            repository_index,
            "Every model version in the repository, with its state and reason",
            tags,
            auth="admin",
            request_schema=RepositoryIndexRequest,
            request_required=False,
            response_schema=list[RepositoryIndexEntry],
            errors=_ADMIN,
        ),
        control,
        replace(
            control,
            path="/v2/repository/models/{name}/unload",
            handler=unload_model,
            summary="Stop serving a model: queued requests finish, then its memory is freed",
            response_schema=RepositoryUnloadResponse,
            errors={**_ADMIN, 404: "No such model"},
        ),
    ]
