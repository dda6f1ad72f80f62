"""The native `/v1` API: list models, their metadata, `predict` and `score`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import inference
from app.http import authorize, json_response, parse_json, read_body, request_context
from app.inference import RequestContext
from app.registry import ModelVersion
from app.schemas import (
    ErrorResponse,
    ModelList,
    ModelMetadata,
    ModelName,
    PredictRequest,
    PredictResponse,
    ScoreRequest,
    ScoreResponse,
    VersionId,
    parse_predict,
    parse_score,
)
from app.service import Service

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed JSON, or the wrong endpoint for this model's task",
        401: "Missing or wrong API key",
        404: "Unknown model or version",
        413: "Body too large",
        422: "Invalid input; the message names the field and the problem",
        503: "Queue full (with Retry-After), model not ready, or shutting down",
        504: "The X-Request-Timeout-Ms deadline passed before the work started",
    }.items()
}


def _body(schema: type) -> dict[str, Any]:
    # The hot path parses the body itself (orjson + one pass of checks); this documents it.
    ref = {"$ref": f"#/components/schemas/{schema.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


router = APIRouter(prefix="/v1", tags=["v1"], responses=_ERRORS)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    authorize(request, service.api_keys)
    return service


@router.get("/models", response_model=ModelList, summary="List models")
async def list_models(request: Request) -> Response:
    service = _service(request)
    return json_response({"models": service.model_summaries()})


@router.get("/models/{name}", response_model=ModelMetadata, summary="Model metadata")
async def model_metadata(name: ModelName, request: Request) -> Response:
    service = _service(request)
    return json_response(service.metadata(service.registry.find(name)))


@router.get(
    "/models/{name}/versions/{version}", response_model=ModelMetadata, summary="Version metadata"
)
async def version_metadata(name: ModelName, version: VersionId, request: Request) -> Response:
    service = _service(request)
    return json_response(service.metadata(service.registry.find(name, version)))


async def predict_call(
    service: Service, name: str, version: str | None, body: bytes, ctx: RequestContext
) -> dict[str, Any]:
    """POST .../predict, from raw body to result; shared by the route below and `app.fastpath`."""
    entry = _entry(service, ctx, name, version, "predict")
    inference.check_room(entry, ctx)
    payload = parse_json(body)
    settings = service.settings
    inputs, top_k = parse_predict(payload, settings.max_items_per_request, settings.max_top_k)
    return await inference.predict(entry, inputs, top_k, ctx)


async def score_call(
    service: Service, name: str, version: str | None, body: bytes, ctx: RequestContext
) -> dict[str, Any]:
    """POST .../score, from raw body to result; shared by the route below and `app.fastpath`."""
    entry = _entry(service, ctx, name, version, "score")
    inference.check_room(entry, ctx)
    payload = parse_json(body)
    kind, items, per_token = parse_score(payload, service.settings.max_items_per_request)
    return await inference.score(entry, kind, items, per_token, ctx)


CALLS = {"predict": predict_call, "score": score_call}


def _entry(
    service: Service, ctx: RequestContext, name: str, version: str | None, endpoint: str
) -> ModelVersion:
    ctx.stats["endpoint"] = endpoint
    entry = service.registry.get(name, version)
    # Labelled only once the model is known: unknown names must not grow the metrics' label set.
    ctx.stats["model"], ctx.stats["version"] = entry.name, entry.version
    return entry


async def _respond(request: Request, endpoint: str, name: str, version: str | None) -> Response:
    service = _service(request)
    body = await read_body(request, service.settings.max_body_bytes)
    return json_response(
        await CALLS[endpoint](service, name, version, body, request_context(request))
    )


@router.post(
    "/models/{name}/predict",
    response_model=PredictResponse,
    summary="Classify items",
    openapi_extra=_body(PredictRequest),
)
async def predict(name: ModelName, request: Request) -> Response:
    return await _respond(request, "predict", name, None)


@router.post(
    "/models/{name}/versions/{version}/predict",
    response_model=PredictResponse,
    summary="Classify items with one version",
    openapi_extra=_body(PredictRequest),
)
async def predict_version(name: ModelName, version: VersionId, request: Request) -> Response:
    return await _respond(request, "predict", name, version)


@router.post(
    "/models/{name}/score",
    response_model=ScoreResponse,
    summary="Score strings with a language model",
    openapi_extra=_body(ScoreRequest),
)
async def score(name: ModelName, request: Request) -> Response:
    return await _respond(request, "score", name, None)


@router.post(
    "/models/{name}/versions/{version}/score",
    response_model=ScoreResponse,
    summary="Score strings with one version",
    openapi_extra=_body(ScoreRequest),
)
async def score_version(name: ModelName, version: VersionId, request: Request) -> Response:
    return await _respond(request, "score", name, version)


REQUEST_SCHEMAS = (PredictRequest, ScoreRequest)
