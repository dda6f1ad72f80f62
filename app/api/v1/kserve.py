"""KServe's V1 protocol beside batchserve's own /v1: `POST /v1/models/{name}:predict` with
`{"instances": [...]}` answers `{"predictions": [...]}`, one per instance, each an object keyed by
the model's output tensors (as /v2 names them); and `GET /`, the liveness KServe's client reads.
`GET /v1/models/{name}` (batchserve's metadata) carries the `ready` field that client wants."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
from starlette.responses import Response

from app.api.http import json_response
from app.api.routing import OpenProtocolRoute, inference, served_while_draining, validate_json
from app.api.schema import BodySchemas, errors
from app.api.v1.endpoints import Name, Timeout, Version
from app.api.v1.schemas import DEFAULT_MAX_ITEMS, FastItem, Item
from app.serving.dataplane import DataPlane
from app.serving.results import Classification, Scores

_ERRORS = {
    400: "Malformed JSON or header, or instances the model cannot take (the message names which)",
    401: "Missing or wrong API key",
    404: "Unknown model or version",
    413: "Body too large",
    415: "A body that is not JSON, or in an unsupported Content-Encoding",
    422: "The model failed on an instance",
    503: "Queue full (with Retry-After), model not ready, or shutting down",
    504: "The X-Request-Timeout-Ms deadline passed before the work started",
}


_ITEMS = (
    "The items, as /v1 predict or score takes them: 784 floats (or 28x28) for mnist-mlp, a "
    "string for names-rnn and names-lm."
)


class PredictRequestV1(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"instances": ["Johnson"]}]},
    )
    instances: list[Item] = Field(min_length=1, max_length=DEFAULT_MAX_ITEMS, description=_ITEMS)


class PredictResponseV1(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"predictions": [{"log_prob": -17.81, "num_tokens": 8, "perplexity": 9.27}]}
            ]
        }
    )
    predictions: list[dict[str, Any]] = Field(
        description="One per instance: a classifier's probabilities (in label order) and label; "
        "a language model's log_prob, num_tokens and perplexity."
    )


class Alive(BaseModel):
    status: str = Field(description='Always "alive".')


def kserve_request(limit: int) -> type[PredictRequestV1]:
    """The V1 request model with a server's item limit, as its document states it."""
    return create_model(
        "PredictRequestV1",
        __base__=PredictRequestV1,
        instances=(list[Item], Field(min_length=1, max_length=limit, description=_ITEMS)),
    )


def fast_kserve_request(limit: int) -> type[PredictRequestV1]:
    """The V1 request model with FastItem instances, for validating (see FastItem)."""
    return create_model(
        "PredictRequestV1",
        __base__=PredictRequestV1,
        instances=(list[FastItem], Field(min_length=1, max_length=limit)),
    )


def router(plane: DataPlane, bodies: BodySchemas, guard: list[Any]) -> APIRouter:
    """KServe's V1 predict (behind `guard`, the user key) and its liveness (open)."""
    settings = plane.settings
    api = APIRouter(route_class=OpenProtocolRoute, tags=["KServe v1"])
    limit = settings.max_items_per_request
    request_model = kserve_request(limit)
    adapter: TypeAdapter[PredictRequestV1] = TypeAdapter(request_model)
    # The same bodies into the same values, validated faster (see FastItem); `adapter` words
    # the errors of a body it refuses.
    fast: TypeAdapter[PredictRequestV1] = TypeAdapter(fast_kserve_request(limit))

    async def predict_items(
        request: Request, name: str, version: str | None, timeout: str | None
    ) -> Response:
        ctx = inference(request, "predict", timeout)
        plane.require(name, version)  # 404 before a body is read
        raw = await request.body()
        model = await plane.bind(name, version, ctx, "predict")
        max_values = limit * model.servable.max_item_values
        instances = (await validate_json(raw, adapter, max_values, first=fast)).instances
        if model.task == "score":
            scored = await plane.score(model, instances, ctx, "instances")
            return json_response({"predictions": _scores(scored)})
        classified = await plane.classify(model, instances, ctx, "instances", True)
        return json_response({"predictions": _classes(classified)})

    body = bodies(request_model)

    @api.post(
        "/v1/models/{name}:predict",
        summary="Predict with the newest ready version (KServe's V1 protocol)",
        response_model=PredictResponseV1,
        responses=errors(_ERRORS),
        openapi_extra=body,
        dependencies=guard,
    )
    async def kserve_predict(request: Request, name: Name, timeout: Timeout = None) -> Response:
        return await predict_items(request, name, None, timeout)

    @api.post(
        "/v1/models/{name}/versions/{version}:predict",
        summary="Predict with one version (KServe's V1 protocol)",
        response_model=PredictResponseV1,
        responses=errors(_ERRORS),
        openapi_extra=body,
        dependencies=guard,
    )
    async def kserve_predict_version(
        request: Request, name: Name, version: Version, timeout: Timeout = None
    ) -> Response:
        return await predict_items(request, name, version, timeout)

    @api.get(
        "/",
        summary="Liveness, as KServe's V1 protocol asks it (no auth)",
        response_model=Alive,
    )
    @served_while_draining
    async def alive() -> Response:
        return json_response({"status": "alive"})

    return api


def _classes(result: Classification) -> list[dict[str, Any]]:
    labels = result.labels
    if result.task != "classify":  # multilabel and regress items give their own form
        return [item.as_json(labels) for item in result.items]
    return [
        {"probabilities": item.probabilities, "label": labels[item.best()]} for item in result.items
    ]


def _scores(result: Scores) -> list[dict[str, Any]]:
    return [
        {"log_prob": s.log_prob, "num_tokens": s.num_tokens, "perplexity": s.perplexity}
        for s in result.items
    ]
