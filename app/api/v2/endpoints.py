"""The Open Inference Protocol over HTTP (KServe / Triton `/v2`): health, metadata, `infer` with the
binary tensor data extension, and, only when an admin key is set, the model repository extension.
Tensors are decoded and encoded by `app.api.v2.codec`; the work is the data plane's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import TypeAdapter
from starlette.responses import Response

from app import __version__
from app.api import triton
from app.api.http import JsonBytes, json_response
from app.api.routing import (
    OpenProtocolRoute,
    binary_body,
    inference,
    served_while_draining,
    validate_json,
)
from app.api.schema import BodySchemas, errors
from app.api.v1.endpoints import Name, Timeout, Version
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
from app.errors import LoadRequestFailed
from app.serving.dataplane import DataPlane
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
    415: "A body that is neither JSON nor binary tensor data, or in an unsupported coding",
    422: "The model failed on an item",
    503: "Queue full (with Retry-After), model not ready, or shutting down",
    504: "The X-Request-Timeout-Ms deadline passed before the work started",
}
_ADMIN = {400: "Malformed body", 401: "Missing or wrong admin key", 503: "Shutting down"}
HeaderLength = Annotated[
    str | None,
    Header(
        alias=codec.HEADER_LENGTH,
        pattern=r"^[0-9]{1,18}$",
        description="Binary tensor data extension: the length in bytes of the JSON request at "
        "the start of the body; the inputs' binary data follows it (each input's "
        "parameters.binary_data_size bytes, in the order of `inputs`). Without it the whole "
        "body is JSON. With Content-Encoding, the length of the decompressed JSON.",
    ),
]
BINARY_ANSWER = {
    "description": "Successful Response. With binary outputs: the JSON response "
    "(Inference-Header-Content-Length bytes), then each binary output in order.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {
        codec.HEADER_LENGTH: {
            "description": "Present when binary outputs follow the JSON: its length in bytes.",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


# -- server -----------------------------------------------------------------------------------


def extensions(settings: Settings) -> list[str]:
    """The protocol extensions served, on HTTP and gRPC alike (perf_analyzer reads statistics
    only when it is listed here)."""
    served = [BINARY_TENSOR_DATA, CLASSIFICATION, STATISTICS, MODEL_CONFIGURATION]
    if settings.admin_api_key is not None:
        served.append(MODEL_REPOSITORY)
    return served


def router(
    plane: DataPlane, bodies: BodySchemas, guard: list[Any], admin: list[Any] | None
) -> APIRouter:
    """The /v2 operations: health open, the rest behind `guard`; the repository extension only
    with `admin` (the admin key's dependency: an admin key is set)."""
    settings = plane.settings
    api = APIRouter(route_class=OpenProtocolRoute, tags=["v2"])
    infer_requests: TypeAdapter[InferRequestV2] = TypeAdapter(InferRequestV2)
    model_errors = errors(_MODEL)

    @api.get("/v2", summary="Server metadata", response_model=ServerMetadata,
             responses=errors(_AUTH), dependencies=guard)  # fmt: skip
    async def server_metadata() -> Response:
        served = extensions(settings)
        return json_response({"name": SERVER_NAME, "version": __version__, "extensions": served})

    @api.get("/v2/health/live", summary="Liveness (no auth)", response_model=Liveness)
    @served_while_draining
    async def live() -> Response:
        return JsonBytes(b'{"live":true}')

    @api.get(
        "/v2/health/ready",
        summary="Readiness (no auth): every model has a ready version",
        response_model=Readiness,
        responses=errors({503: "Not ready, or shutting down"}),
    )
    @served_while_draining
    async def ready() -> Response:
        readiness = plane.readiness()
        if readiness.ready:
            return JsonBytes(b'{"ready":true}')
        return json_response({"ready": False, "error": readiness.reason}, status=503)

    # Triton's statistics before /v2/models/{name}: "stats" is not a model's name here.
    stats = {"response_model": ModelStatisticsV2, "dependencies": guard}

    @api.get(
        "/v2/models/stats",
        summary="Inference statistics of every ready model version (Triton's extension)",
        responses=errors(_AUTH),
        **stats,  # type: ignore[arg-type]
    )
    async def model_statistics() -> Response:
        return json_response(triton.as_json(triton.model_statistics(plane.statistics(None, None))))

    @api.get(
        "/v2/models/{name}/stats",
        summary="Inference statistics of a model's ready versions",
        responses=model_errors,
        **stats,  # type: ignore[arg-type]
    )
    async def model_statistics_of(name: Name) -> Response:
        return json_response(triton.as_json(triton.model_statistics(plane.statistics(name, None))))

    @api.get(
        "/v2/models/{name}/versions/{version}/stats",
        summary="Inference statistics of one model version",
        responses=model_errors,
        **stats,  # type: ignore[arg-type]
    )
    async def version_statistics(name: Name, version: Version) -> Response:
        rows = plane.statistics(name, version)
        return json_response(triton.as_json(triton.model_statistics(rows)))

    def metadata(name: str, version: str | None) -> Response:
        info = plane.describe(name, version)
        versions = info.versions if version is None else [version]
        return json_response(codec.model_metadata(info, versions))

    @api.get("/v2/models/{name}", summary="Model metadata", response_model=ModelMetadataV2,
             responses=model_errors, dependencies=guard)  # fmt: skip
    async def model_metadata(name: Name) -> Response:
        return metadata(name, None)

    @api.get("/v2/models/{name}/versions/{version}", summary="Model version metadata",
             response_model=ModelMetadataV2, responses=model_errors,
             dependencies=guard)  # fmt: skip
    async def version_metadata(name: Name, version: Version) -> Response:
        return metadata(name, version)

    def readiness(name: str, version: str | None) -> Response:
        info = plane.describe(name, version)
        ready = info.state == "ready"
        body: dict[str, Any] = {"name": info.name, "version": info.version, "ready": ready}
        if ready:
            return json_response(body)
        why = f": {info.reason}" if info.reason else ""
        body["error"] = f"model '{name}' version '{info.version}' is {info.state}{why}"
        return json_response(body, status=400)

    ready_errors = errors({**_MODEL, 400: "Known but not ready (the protocol's 4xx)"})

    @api.get("/v2/models/{name}/ready", summary="Model readiness",
             response_model=ModelReadiness, responses=ready_errors,
             dependencies=guard)  # fmt: skip
    async def model_ready(name: Name) -> Response:
        return readiness(name, None)

    @api.get("/v2/models/{name}/versions/{version}/ready", summary="Model version readiness",
             response_model=ModelReadiness, responses=ready_errors,
             dependencies=guard)  # fmt: skip
    async def version_ready(name: Name, version: Version) -> Response:
        return readiness(name, version)

    async def infer_items(
        request: Request,
        name: str,
        version: str | None,
        timeout: str | None,
        header_length: str | None,
    ) -> Response:
        ctx = inference(request, "infer", timeout)
        plane.require(name, version)  # 404 before a body is read
        body = await request.body()
        model = await plane.bind(name, version, ctx, "infer")
        max_values = settings.max_items_per_request * model.servable.max_item_values
        header, binary = codec.split_body(body, header_length)
        parsed = await validate_json(header, infer_requests, max_values)
        signature = tensors.signature(model.config)
        request_ = codec.decode_request(parsed, binary, signature, settings.max_items_per_request)
        outputs = await tensors.infer(plane, model, request_.items, ctx)
        answer = tensors.output_tensors(outputs, request_.outputs, signature, model.config.labels)
        content, length = codec.encode_response((model.name, model.version), request_.id, answer)
        if length is None:
            return JsonBytes(content)
        return Response(
            content,
            media_type="application/octet-stream",
            headers={codec.HEADER_LENGTH: str(length)},
        )

    infer_body = bodies(InferRequestV2, binary=True)
    infer_errors = errors(_INFER_ERRORS)
    infer_answers: dict[int | str, dict[str, Any]] = {200: BINARY_ANSWER, **infer_errors}

    @api.post("/v2/models/{name}/infer", summary="Infer with the newest ready version",
              response_model=InferResponseV2, responses=infer_answers,
              openapi_extra=infer_body, dependencies=guard)  # fmt: skip
    @binary_body
    async def infer(
        request: Request,
        name: Name,
        timeout: Timeout = None,
        header_length: HeaderLength = None,
    ) -> Response:
        return await infer_items(request, name, None, timeout, header_length)

    @api.post("/v2/models/{name}/versions/{version}/infer", summary="Infer with one version",
              response_model=InferResponseV2, responses=infer_answers,
              openapi_extra=infer_body, dependencies=guard)  # fmt: skip
    @binary_body
    async def infer_version(
        request: Request,
        name: Name,
        version: Version,
        timeout: Timeout = None,
        header_length: HeaderLength = None,
    ) -> Response:
        return await infer_items(request, name, version, timeout, header_length)

    config_errors = errors({**_MODEL, 503: "The version is not loaded, or shutting down"})

    @api.get(
        "/v2/models/{name}/config",
        summary="Model configuration (Triton's): tensors, max_batch_size, dynamic batching",
        response_model=ModelConfigV2,
        responses=config_errors,
        dependencies=guard,
    )
    async def model_config(name: Name) -> Response:
        return json_response(triton.as_json(triton.model_config(plane.describe(name, None))))

    @api.get(
        "/v2/models/{name}/versions/{version}/config",
        summary="Model version configuration (Triton's)",
        response_model=ModelConfigV2,
        responses=config_errors,
        dependencies=guard,
    )
    async def version_config(name: Name, version: Version) -> Response:
        return json_response(triton.as_json(triton.model_config(plane.describe(name, version))))

    if admin is not None:
        _repository(api, plane, bodies, admin)
    return api


def _repository(api: APIRouter, plane: DataPlane, bodies: BodySchemas, admin: list[Any]) -> None:
    """The model repository extension, behind the admin key."""
    tags: list[str | Any] = ["v2 model repository"]
    indexes: TypeAdapter[RepositoryIndexRequest] = TypeAdapter(RepositoryIndexRequest)
    controls: TypeAdapter[RepositoryControlRequest] = TypeAdapter(RepositoryControlRequest)

    async def control(request: Request) -> RepositoryControlRequest:
        raw = await request.body()  # optional: no body is {}
        return await validate_json(raw, controls) if raw else RepositoryControlRequest()

    @api.post(
        "/v2/repository/index",
        summary="Every model version in the repository, with its state and reason",
        tags=tags,
        response_model=list[RepositoryIndexEntry],
        responses=errors(_ADMIN),
        openapi_extra=bodies(RepositoryIndexRequest, required=False),
        dependencies=admin,
    )
    async def repository_index(request: Request) -> Response:
        raw = await request.body()
        body = await validate_json(raw, indexes) if raw else RepositoryIndexRequest()
        return json_response(plane.repository_index(body.ready))

    control_body = bodies(RepositoryControlRequest, required=False)

    @api.post(
        "/v2/repository/models/{name}/load",
        summary="Load new versions of a model (its policy decides which) and retire old ones",
        tags=tags,
        response_model=RepositoryLoadResponse,
        responses=errors(
            {
                **_ADMIN,
                400: "The load failed (what served before still serves), or a malformed body",
                404: "No such model",
            }
        ),
        openapi_extra=control_body,
        dependencies=admin,
    )
    async def load_model(request: Request, name: Name) -> Response:
        parameters = (await control(request)).parameters or {}
        overrides = [k for k in parameters if k == "config" or str(k).startswith("file:")]
        if overrides:
            raise LoadRequestFailed(
                f"parameters: {overrides} not supported; batchserve loads what is in the repository"
            )
        versions = await plane.load(name)
        return json_response({"name": name, "versions": versions, "default_version": versions[-1]})

    @api.post(
        "/v2/repository/models/{name}/unload",
        summary="Stop serving a model: queued requests finish, then its memory is freed",
        tags=tags,
        response_model=RepositoryUnloadResponse,
        responses=errors({**_ADMIN, 404: "No such model"}),
        openapi_extra=control_body,
        dependencies=admin,
    )
    async def unload_model(request: Request, name: Name) -> Response:
        await control(request)
        await plane.unload(name)
        return json_response({"name": name, "state": "unavailable"})
