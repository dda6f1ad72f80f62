"""KServe's V1 protocol beside batchserve's own /v1: `POST /v1/models/{name}:predict` with
`{"instances": [...]}` answers `{"predictions": [...]}`, one per instance, each an object keyed by
the model's output tensors (as /v2 names them); and `GET /`, the liveness KServe's client reads.
`GET /v1/models/{name}` (batchserve's metadata) carries the `ready` field that client wants."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.http import HttpResponse, json_response, parse_json
from app.api.router import Call, Endpoint
from app.errors import InvalidInput
from app.serving.results import Classification, Scores

_ERRORS = {
    400: "Malformed JSON, or instances the model cannot take (the message names which)",
    401: "Missing or wrong API key",
    404: "Unknown model or version",
    413: "Body too large",
    422: "The model failed on an instance",
    503: "Queue full (with Retry-After), model not ready, or shutting down",
    504: "The X-Request-Timeout-Ms deadline passed before the work started",
}


class PredictRequestV1(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"instances": ["Johnson"]}]},
    )
    instances: list[Any] = Field(
        min_length=1,
        description="The items, as /v1 predict or score takes them: 784 floats (or 28x28) for "
        "mnist-mlp, a string for names-rnn and names-lm.",
    )


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


async def predict(call: Call) -> HttpResponse:
    name, version = call.params["name"], call.params.get("version")
    plane = call.plane
    plane.require(name, version)  # 404 before a body is read
    raw = await call.body()
    model = await plane.bind(name, version, call.ctx, "predict")
    max_values = call.settings.max_items_per_request * model.servable.max_item_values
    instances = _instances(parse_json(raw, max_values), call.settings.max_items_per_request)
    if model.task == "score":
        scored = await plane.score(model, instances, call.ctx, "instances")
        return json_response({"predictions": _scores(scored)})
    classified = await plane.classify(model, instances, call.ctx, "instances")
    return json_response({"predictions": _classes(classified)})


def _instances(body: Any, max_items: int) -> list[Any]:
    if not isinstance(body, dict) or body.keys() != {"instances"}:
        raise InvalidInput('body: expected {"instances": [...]}')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("instances: expected a non-empty array")
    if len(instances) > max_items:
        raise InvalidInput(f"instances: {len(instances)} items; the limit is {max_items}")
    return instances


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


async def alive(call: Call) -> HttpResponse:
    return json_response({"status": "alive"})


def table() -> list[Endpoint]:
    tags = ("KServe v1",)
    predicting = Endpoint(
        "POST",
        "/v1/models/{name}:predict",
        predict,
        "Predict with the newest ready version (KServe's V1 protocol)",
        tags,
        inference=True,
        metric="predict",
        invalid_input_status=400,
        request_schema=PredictRequestV1,
        response_schema=PredictResponseV1,
        errors=_ERRORS,
        operation="kserve_predict",
    )
    return [
        predicting,
        replace(
            predicting,
            path="/v1/models/{name}/versions/{version}:predict",
            summary="Predict with one version (KServe's V1 protocol)",
            operation="kserve_predict_version",
        ),
        Endpoint(
            "GET",
            "/",
            alive,
            "Liveness, as KServe's V1 protocol asks it (no auth)",
            tags,
            auth="none",
            served_while_draining=True,
            response_schema=Alive,
        ),
    ]
