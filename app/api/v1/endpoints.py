"""batchserve's native `/v1` API as FastAPI path operations: list models, their metadata,
`predict` and `score`. Each operation validates its body with its Pydantic model (from the bytes),
calls the data plane once, and answers its typed result, encoded once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from pydantic import TypeAdapter
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response

from app.api.context import DEADLINE_HEADER
from app.api.http import json_response
from app.api.routing import (
    DEADLINE_DESCRIPTION,
    DEADLINE_PATTERN,
    ServiceRoute,
    inference,
    validate_json,
)
from app.api.schema import BodySchemas, errors
from app.api.v1.schemas import (
    ModelList,
    ModelMetadata,
    PredictRequest,
    PredictResponse,
    ScoreRequest,
    ScoreResponse,
    fast_predict_request,
    predict_request,
    score_request,
)
from app.errors import WrongEndpoint
from app.serving.dataplane import DataPlane
from app.serving.heads import head_description
from app.serving.loader import LoadedModel
from app.serving.results import Classification, Scores, SequenceScore, VersionInfo

INFERENCE_ERRORS = {
    400: "Malformed JSON, a malformed header, or the wrong endpoint for this model's task",
    401: "Missing or wrong API key",
    404: "Unknown model or version",
    413: "Body too large",
    415: "A body that is not JSON, or in an unsupported Content-Encoding",
    422: "Invalid input; the message names the field and the problem",
    503: "Queue full (with Retry-After), model not ready, or shutting down",
    504: "The X-Request-Timeout-Ms deadline passed before the work started",
}
METADATA_ERRORS = {
    401: "Missing or wrong API key",
    404: "Unknown model or version",
    503: "Shutting down",
}

Name = Annotated[
    str,
    Path(description="The model's name.", examples=["mnist-mlp", "names-rnn", "names-lm"]),
]
Version = Annotated[
    str, Path(description="A version of the model (a positive integer).", examples=["1"])
]
Timeout = Annotated[
    str | None,
    Header(alias=DEADLINE_HEADER, description=DEADLINE_DESCRIPTION, pattern=DEADLINE_PATTERN),
]


class SegmentConvertor(Convertor[str]):
    """A path segment that does not end in ":predict": /v1/models/x:predict is KServe's predict
    of model x (405 to a GET), not the metadata of a model named "x:predict"."""

    regex = "[^/]+(?<!:predict)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", SegmentConvertor())


def router(plane: DataPlane, bodies: BodySchemas, guard: list[Any]) -> APIRouter:
    """The /v1 operations, each behind `guard` (the user key's dependency, when one is set)."""
    settings = plane.settings
    api = APIRouter(route_class=ServiceRoute, tags=["v1"], dependencies=guard)
    predict_model = predict_request(settings.max_items_per_request, settings.max_top_k)
    score_model = score_request(settings.max_items_per_request)
    predicts: TypeAdapter[PredictRequest] = TypeAdapter(predict_model)
    fast_predicts: TypeAdapter[PredictRequest] = TypeAdapter(
        fast_predict_request(settings.max_items_per_request, settings.max_top_k)
    )
    scores: TypeAdapter[ScoreRequest] = TypeAdapter(score_model)
    inference_errors = errors(INFERENCE_ERRORS)
    metadata_errors = errors(METADATA_ERRORS)

    async def classify(
        request: Request, name: str, version: str | None, timeout: str | None
    ) -> Response:
        ctx = inference(request, "predict", timeout)
        model, raw = await _model_and_body(request, plane, name, version, ctx, "predict")
        max_values = settings.max_items_per_request * model.servable.max_item_values
        body = await validate_json(raw, predicts, max_values, first=fast_predicts)
        # The schema saw every leaf of an array item: numbers only.
        result = await plane.classify(model, body.inputs, ctx, "inputs", True)
        return json_response(_predictions(result, body.top_k))

    async def score_items(
        request: Request, name: str, version: str | None, timeout: str | None
    ) -> Response:
        ctx = inference(request, "score", timeout)
        model, raw = await _model_and_body(request, plane, name, version, ctx, "score")
        max_values = settings.max_items_per_request * model.servable.max_item_values
        body = await validate_json(raw, scores, max_values)
        if body.pairs is not None:
            pairs = [(p.context, p.continuation) for p in body.pairs]
            result = await plane.score_pairs(model, pairs, ctx, "pairs")
        else:
            assert body.inputs is not None
            result = await plane.score(model, body.inputs, ctx, "inputs")
        return json_response(_scores(result, body.per_token))

    predict_body = bodies(predict_model)
    score_body = bodies(score_model)

    # The inference operations first: Starlette tries the routes in order (these paths overlap
    # no other operation's), and each route tried before the one that matches costs ~1 us.
    @api.post(
        "/v1/models/{name}/predict",
        summary="Classify items",
        response_model=PredictResponse,
        responses=inference_errors,
        openapi_extra=predict_body,
    )
    async def predict(request: Request, name: Name, timeout: Timeout = None) -> Response:
        return await classify(request, name, None, timeout)

    @api.post(
        "/v1/models/{name}/score",
        summary="Score strings with a language model",
        response_model=ScoreResponse,
        responses=inference_errors,
        openapi_extra=score_body,
    )
    async def score(request: Request, name: Name, timeout: Timeout = None) -> Response:
        return await score_items(request, name, None, timeout)

    @api.post(
        "/v1/models/{name}/versions/{version}/predict",
        summary="Classify items with one version",
        response_model=PredictResponse,
        responses=inference_errors,
        openapi_extra=predict_body,
    )
    async def predict_version(
        request: Request, name: Name, version: Version, timeout: Timeout = None
    ) -> Response:
        return await classify(request, name, version, timeout)

    @api.post(
        "/v1/models/{name}/versions/{version}/score",
        summary="Score strings with one version",
        response_model=ScoreResponse,
        responses=inference_errors,
        openapi_extra=score_body,
    )
    async def score_version(
        request: Request, name: Name, version: Version, timeout: Timeout = None
    ) -> Response:
        return await score_items(request, name, version, timeout)

    @api.get(
        "/v1/models",
        summary="List models",
        response_model=ModelList,
        responses=errors({s: METADATA_ERRORS[s] for s in (401, 503)}),
    )
    async def list_models() -> Response:
        return json_response({"models": plane.models()})

    @api.get(
        "/v1/models/{name:segment}",
        summary="Model metadata",
        response_model=ModelMetadata,
        responses=metadata_errors,
    )
    async def model_metadata(name: Name) -> Response:
        return json_response(_metadata(plane.describe(name, None)))

    @api.get(
        "/v1/models/{name}/versions/{version:segment}",
        summary="Version metadata",
        response_model=ModelMetadata,
        responses=metadata_errors,
    )
    async def version_metadata(name: Name, version: Version) -> Response:
        return json_response(_metadata(plane.describe(name, version)))

    return api


def _metadata(info: VersionInfo) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": info.name,
        "version": info.version,
        "versions": info.versions,
        "state": info.state,
        "ready": info.state == "ready",  # what KServe's v1 client reads
        "reason": info.reason,
        "device": info.device,
        "checkpoint_sha256": info.checkpoint_sha256,
    }
    if info.last_load_error is not None:
        meta["last_load_error"] = info.last_load_error
    config = info.config
    if config is not None:
        meta.update(
            task=config.task,
            description=config.description,
            architecture=config.architecture.model_dump(),
            input=config.input.model_dump(),
            labels=config.labels,
            head=head_description(config),
            data=config.data,
            metrics=config.metrics,
            training=config.training,
        )
    if info.batching is not None:
        meta["batching"] = info.batching
    return meta


def _predictions(result: Classification, top_k: int) -> dict[str, Any]:
    labels = result.labels
    if result.task != "classify":  # multilabel and regress items give their own form
        items = [item.as_json(labels) for item in result.items]
        return {"model": result.model, "version": result.version, "predictions": items}
    top_k = min(top_k, len(labels))
    predictions = []
    for item in result.items:
        row = item.probabilities
        ranked = [{"label": labels[i], "index": i, "probability": row[i]} for i in item.top(top_k)]
        predictions.append({**ranked[0], "top_k": ranked})
    return {"model": result.model, "version": result.version, "predictions": predictions}


def _scores(result: Scores, per_token: bool) -> dict[str, Any]:
    return {
        "model": result.model,
        "version": result.version,
        "scores": [_score(s, per_token) for s in result.items],
    }


def _score(item: SequenceScore, per_token: bool) -> dict[str, Any]:
    scored: dict[str, Any] = {"log_prob": item.log_prob, "num_tokens": item.num_tokens}
    if item.is_greedy is not None:
        scored["is_greedy"] = item.is_greedy
    if item.perplexity is not None:
        scored["perplexity"] = item.perplexity
    if per_token:
        scored["tokens"] = [
            {"token": t, "log_prob": lp}
            for t, lp in zip(item.tokens, item.token_log_probs, strict=True)
        ]
    return scored


async def _model_and_body(
    request: Request,
    plane: DataPlane,
    name: str,
    version: str | None,
    ctx: Any,
    endpoint: str,
) -> tuple[LoadedModel, bytes]:
    """The model version bound to this request (its queue has room) and the body's bytes: a
    404 comes before the body is read, the wrong endpoint before it is parsed."""
    plane.require(name, version)
    raw = await request.body()
    model = await plane.bind(name, version, ctx, endpoint)
    if (model.task == "score") != (endpoint == "score"):
        other = "score" if endpoint == "predict" else "predict"
        raise WrongEndpoint(
            f"model '{name}' is a {model.task} model; call /v1/models/{name}/{other}"
        )
    return model, raw
