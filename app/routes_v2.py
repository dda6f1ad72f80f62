"""The `/v2` Open Inference Protocol routes (KServe / Triton): health, metadata, `infer` with the
binary tensor data extension, and, only when an admin key is set, the model repository extension.
Tensor encoding lives in `app.v2`; model lifecycle in `app.registry`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import inference, v2
from app.http import authorize, json_response, parse_json, read_body, request_context
from app.registry import ModelVersion
from app.repository import ModelLoadFailed
from app.schemas import ErrorResponse, ModelName, VersionId
from app.schemas_v2 import (
    InferRequestV2,
    InferResponseV2,
    Liveness,
    ModelMetadataV2,
    ModelReadiness,
    Readiness,
    RepositoryControlRequest,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryLoadResponse,
    RepositoryUnloadResponse,
    ServerMetadata,
)
from app.service import Service

BINARY_TENSOR_DATA, MODEL_REPOSITORY = "binary_tensor_data", "model_repository"


def _errors(statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": text} for s, text in statuses.items()}


def _body(schema: type, binary: bool = False, required: bool = True) -> dict[str, Any]:
    # Bodies are decoded by app.v2 (JSON, or JSON + binary tensors); this only documents them.
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema.__name__}"}}
    }
    if binary:
        content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": f"The JSON request, then binary tensors; {v2.HEADER_LENGTH} gives the "
            "JSON's length.",
        }
    return {"requestBody": {"required": required, "content": content}}


router = APIRouter(prefix="/v2", tags=["v2"])
repository_router = APIRouter(
    prefix="/v2/repository",
    tags=["v2 model repository"],
    responses=_errors({400: "Malformed body", 401: "Missing or wrong admin key"}),
)
_AUTH = _errors({401: "Missing or wrong API key"})
_MODEL = _errors({401: "Missing or wrong API key", 404: "Unknown model or version"})


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    authorize(request, service.api_keys)
    return service


# -- server -----------------------------------------------------------------------------------


@router.get("", response_model=ServerMetadata, summary="Server metadata", responses=_AUTH)
async def server_metadata(request: Request) -> Response:
    service = _service(request)
    extensions = [BINARY_TENSOR_DATA] + ([MODEL_REPOSITORY] if service.admin_keys else [])
    return json_response(
        {"name": request.app.title, "version": request.app.version, "extensions": extensions}
    )


@router.get("/health/live", response_model=Liveness, summary="Liveness (no auth)")
async def live() -> Response:
    return json_response({"live": True})


@router.get(
    "/health/ready",
    response_model=Readiness,
    summary="Readiness (no auth): every model has a ready version",
    responses={503: {"model": Readiness, "description": "Not ready, or shutting down"}},
)
async def ready(request: Request) -> Response:
    service: Service = request.app.state.service
    if service.ready():
        return json_response({"ready": True})
    return json_response({"ready": False, "error": _not_ready_reason(service)}, status=503)


def _not_ready_reason(service: Service) -> str:
    if service.lifecycle.draining:
        return "the server is shutting down"
    return f"no ready version of: {', '.join(service.registry.not_ready())}"


# -- models -----------------------------------------------------------------------------------


@router.get(
    "/models/{name}", response_model=ModelMetadataV2, summary="Model metadata", responses=_MODEL
)
async def model_metadata(name: ModelName, request: Request) -> Response:
    return _metadata(request, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadataV2,
    summary="Model version metadata",
    responses=_MODEL,
)
async def version_metadata(name: ModelName, version: VersionId, request: Request) -> Response:
    return _metadata(request, name, version)


def _metadata(request: Request, name: str, version: str | None) -> Response:
    registry = _service(request).registry
    entry = registry.find(name, version)
    versions = [v.version for v in registry.versions(name)] if version is None else [version]
    return json_response(v2.model_metadata(entry, versions))


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_MODEL,
    400: {"model": ModelReadiness, "description": "Known but not ready (the protocol's 4xx)"},
}


@router.get(
    "/models/{name}/ready",
    response_model=ModelReadiness,
    summary="Model readiness",
    responses=_READY_RESPONSES,
)
async def model_ready(name: ModelName, request: Request) -> Response:
    return _readiness(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReadiness,
    summary="Model version readiness",
    responses=_READY_RESPONSES,
)
async def version_ready(name: ModelName, version: VersionId, request: Request) -> Response:
    return _readiness(request, name, version)


def _readiness(request: Request, name: str, version: str | None) -> Response:
    entry = _service(request).registry.find(name, version)
    body: dict[str, Any] = {"name": entry.name, "version": entry.version, "ready": entry.ready}
    if entry.ready:
        return json_response(body)
    why = f": {entry.reason}" if entry.reason else ""
    body["error"] = f"model '{name}' version '{entry.version}' is {entry.state}{why}"
    return json_response(body, status=400)


# -- inference --------------------------------------------------------------------------------

_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"With binary outputs: the JSON response ({v2.HEADER_LENGTH} "
                "bytes), then each binary output in order.",
            }
        }
    },
    **_MODEL,
    **_errors(
        {
            400: "Malformed request, or tensors that do not fit the model (the message says which)",
            413: "Body too large",
            422: "The model failed on an item",
            503: "Queue full (with Retry-After), model not ready, or shutting down",
            504: "The X-Request-Timeout-Ms deadline passed before the work started",
        }
    ),
}


@router.post(
    "/models/{name}/infer",
    response_model=InferResponseV2,
    summary="Infer with the newest ready version",
    responses=_INFER_RESPONSES,
    openapi_extra=_body(InferRequestV2, binary=True),
)
async def infer(name: ModelName, request: Request) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferResponseV2,
    summary="Infer with one version",
    responses=_INFER_RESPONSES,
    openapi_extra=_body(InferRequestV2, binary=True),
)
async def infer_version(name: ModelName, version: VersionId, request: Request) -> Response:
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    service = _service(request)
    body = await read_body(request, service.settings.max_body_bytes)
    header, binary = v2.split_body(body, request.headers.get(v2.HEADER_LENGTH))
    # No await between choosing the version and queueing on it: a swap to a newer version
    # cannot slip in between, so a request never lands on a version being drained.
    entry = _entry(request, service, name, version)
    ctx = request_context(request)
    inference.check_room(entry, ctx)
    tensors = v2.signature(entry.config)  # type: ignore[arg-type]
    decoded = v2.decode_request(header, binary, tensors, service.settings.max_items_per_request)
    outputs = await v2.infer(entry, decoded, ctx)
    content, header_length = v2.encode_response(entry, decoded, outputs, tensors)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={v2.HEADER_LENGTH: str(header_length)},
    )


def _entry(request: Request, service: Service, name: str, version: str | None) -> ModelVersion:
    state = request.scope["state"]
    state["endpoint"] = "infer"
    entry = service.registry.get(name, version)
    # Labelled only once the model is known: unknown names must not grow the metrics' label set.
    state["model"], state["version"] = entry.name, entry.version
    return entry


# -- model repository (only with BATCHSERVE_ADMIN_API_KEY) -------------------------------------


async def _admin(request: Request) -> tuple[Service, dict[str, Any]]:
    """The service, once the admin key checks out, and the (optional) JSON body."""
    service: Service = request.app.state.service
    authorize(request, service.admin_keys)
    raw = await read_body(request, service.settings.max_body_bytes)
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise v2.TensorError("body: expected a JSON object")
    return service, body


@repository_router.post(
    "/index",
    response_model=list[RepositoryIndexEntry],
    summary="Every model version in the repository, with its state and reason",
    openapi_extra=_body(RepositoryIndexRequest, required=False),
)
async def repository_index(request: Request) -> Response:
    service, body = await _admin(request)
    unknown = body.keys() - {"ready"}
    if unknown:
        raise v2.TensorError(f"body: unknown field(s) {sorted(unknown)}; allowed: ['ready']")
    ready_only = body.get("ready", False)
    if type(ready_only) is not bool:
        raise v2.TensorError("ready: expected true or false")
    return json_response(service.registry.index(ready_only))


@repository_router.post(
    "/models/{name}/load",
    response_model=RepositoryLoadResponse,
    summary="Load new versions of a model (its policy decides which) and retire old ones",
    responses=_errors(
        {400: "The load failed; what served before still serves", 404: "No such model"}
    ),
    openapi_extra=_body(RepositoryControlRequest, required=False),
)
async def load_model(name: ModelName, request: Request) -> Response:
    service, body = await _admin(request)
    parameters = _parameters(body)
    overrides = [k for k in parameters if k == "config" or str(k).startswith("file:")]
    if overrides:
        raise ModelLoadFailed(
            f"parameters: {overrides} not supported; batchserve loads what is in the repository"
        )
    loaded = await service.registry.load_model(name)
    versions = [e.version for e in loaded]
    return json_response({"name": name, "versions": versions, "default_version": versions[-1]})


@repository_router.post(
    "/models/{name}/unload",
    response_model=RepositoryUnloadResponse,
    summary="Stop serving a model: queued requests finish, then its memory is freed",
    responses=_errors({404: "No such model"}),
    openapi_extra=_body(RepositoryControlRequest, required=False),
)
async def unload_model(name: ModelName, request: Request) -> Response:
    service, body = await _admin(request)
    _parameters(body)
    await service.registry.unload_model(name)
    return json_response({"name": name, "state": "unavailable"})


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    unknown = body.keys() - {"parameters"}
    if unknown:
        raise v2.TensorError(f"body: unknown field(s) {sorted(unknown)}; allowed: ['parameters']")
    parameters = body.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise v2.TensorError("parameters: expected an object")
    return parameters


REQUEST_SCHEMAS = (InferRequestV2, RepositoryIndexRequest, RepositoryControlRequest)
