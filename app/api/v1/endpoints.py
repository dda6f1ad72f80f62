"""batchserve's native `/v1` API: list models, their metadata, `predict` and `score`. Each handler
decodes, calls the data plane once, and encodes its typed result."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.api.http import HttpResponse, json_response, only_numbers, parse_json
from app.api.router import Call, Endpoint
from app.api.v1.schemas import (
    ModelList,
    ModelMetadata,
    PredictRequest,
    PredictResponse,
    ScoreRequest,
    ScoreResponse,
    parse_predict,
    parse_score,
)
from app.errors import WrongEndpoint
from app.serving.heads import head_description
from app.serving.loader import LoadedModel
from app.serving.results import Classification, Scores, SequenceScore, VersionInfo

_INFERENCE_ERRORS = {
    400: "Malformed JSON, or the wrong endpoint for this model's task",
    401: "Missing or wrong API key",
    404: "Unknown model or version",
    413: "Body too large",
    422: "Invalid input; the message names the field and the problem",
    503: "Queue full (with Retry-After), model not ready, or shutting down",
    504: "The X-Request-Timeout-Ms deadline passed before the work started",
}
_METADATA_ERRORS = {
    401: "Missing or wrong API key",
    404: "Unknown model or version",
    503: "Shutting down",
}


async def list_models(call: Call) -> HttpResponse:
    return json_response({"models": call.plane.models()})


async def model_metadata(call: Call) -> HttpResponse:
    info = call.plane.describe(call.params["name"], call.params.get("version"))
    return json_response(_metadata(info))


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


async def predict(call: Call) -> HttpResponse:
    model, body, raw = await _model_and_body(call, "predict")
    settings = call.settings
    inputs, top_k = parse_predict(body, settings.max_items_per_request, settings.max_top_k)
    numbers = only_numbers(raw, body)
    result = await call.plane.classify(model, inputs, call.ctx, "inputs", numbers)
    return json_response(_predictions(result, top_k))


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


async def score(call: Call) -> HttpResponse:
    model, body, _ = await _model_and_body(call, "score")
    kind, items, per_token = parse_score(body, call.settings.max_items_per_request)
    if kind == "pairs":
        pairs = [(p["context"], p["continuation"]) for p in items]
        result = await call.plane.score_pairs(model, pairs, call.ctx, "pairs")
    else:
        result = await call.plane.score(model, items, call.ctx, "inputs")
    return json_response(_scores(result, per_token))


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


async def _model_and_body(call: Call, endpoint: str) -> tuple[LoadedModel, Any, bytes]:
    """The model version bound to this request (its queue has room), the parsed body, and the
    body's bytes."""
    name, version = call.params["name"], call.params.get("version")
    call.plane.require(name, version)  # 404 before a body is read
    raw = await call.body()
    model = await call.plane.bind(name, version, call.ctx, endpoint)
    if (model.task == "score") != (endpoint == "score"):
        other = "score" if endpoint == "predict" else "predict"
        raise WrongEndpoint(
            f"model '{name}' is a {model.task} model; call /v1/models/{name}/{other}"
        )
    max_values = call.settings.max_items_per_request * model.servable.max_item_values
    return model, parse_json(raw, max_values), raw


def table() -> list[Endpoint]:
    tags = ("v1",)
    models, versioned = "/v1/models/{name}", "/v1/models/{name}/versions/{version}"
    metadata = Endpoint(
        "GET",
        models,
        model_metadata,
        "Model metadata",
        tags,
        response_schema=ModelMetadata,
        errors=_METADATA_ERRORS,
    )
    classify = Endpoint(
        "POST",
        f"{models}/predict",
        predict,
        "Classify items",
        tags,
        inference=True,
        metric="predict",
        request_schema=PredictRequest,
        response_schema=PredictResponse,
        errors=_INFERENCE_ERRORS,
    )
    scoring = replace(
        classify,
        path=f"{models}/score",
        handler=score,
        summary="Score strings with a language model",
        metric="score",
        request_schema=ScoreRequest,
        response_schema=ScoreResponse,
    )
    return [
        Endpoint(
            "GET",
            "/v1/models",
            list_models,
            "List models",
            tags,
            response_schema=ModelList,
            errors={s: _METADATA_ERRORS[s] for s in (401, 503)},
        ),
        metadata,
        replace(metadata, path=versioned, summary="Version metadata", operation="version_metadata"),
        classify,
        replace(
            classify,
            path=f"{versioned}/predict",
            summary="Classify items with one version",
            operation="predict_version",
        ),
        scoring,
        replace(
            scoring,
            path=f"{versioned}/score",
            summary="Score strings with one version",
            operation="score_version",
        ),
    ]
