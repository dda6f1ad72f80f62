"""The FastAPI floor: what batchserve's HTTP layer is built as, with no model. A FastAPI route
reads the body's bytes, validates them with batchserve's own request models
(`model_validate_json`, no `json.loads` first) and answers a pre-encoded constant of
batchserve's shape (one entry per input). What FastAPI routing and Pydantic validation alone
cost on these requests, to set beside the bare-ASGI floor (bench/raw_floor_app.py).

Run: `uvicorn --factory bench.fastapi_floor_app:create_app --loop uvloop --http httptools`."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from app.api.v1.schemas import PredictRequest, ScoreRequest

_TOP = {"label": "7", "index": 7, "probability": 0.99}
_PREDICTION = orjson.dumps({**_TOP, "top_k": [_TOP]})
_SCORE = orjson.dumps({"log_prob": -9.2, "num_tokens": 6, "perplexity": 4.6})
_JSON = "application/json"


def _answer(head: bytes, entry: bytes, count: int) -> Response:
    return Response(head + b",".join([entry] * count) + b"]}", media_type=_JSON)


def create_app() -> FastAPI:
    app = FastAPI(title="fastapi-floor", docs_url=None, redoc_url=None)

    @app.exception_handler(ValidationError)
    async def invalid(request: Request, exc: ValidationError) -> Response:
        body = orjson.dumps({"error": str(exc.errors()[0]["msg"]), "code": "invalid_input"})
        return Response(body, 422, media_type=_JSON)

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)

    @app.post(
        "/v1/models/mnist-mlp/predict",
        openapi_extra={"requestBody": {"content": {_JSON: {"schema": {}}}, "required": True}},
    )
    async def predict(request: Request) -> Response:
        body = PredictRequest.model_validate_json(await request.body())
        head = b'{"model":"mnist-mlp","version":"1","predictions":['
        return _answer(head, _PREDICTION, len(body.inputs))

    @app.post(
        "/v1/models/names-lm/score",
        openapi_extra={"requestBody": {"content": {_JSON: {"schema": {}}}, "required": True}},
    )
    async def score(request: Request) -> Response:
        body = ScoreRequest.model_validate_json(await request.body())
        head = b'{"model":"names-lm","version":"1","scores":['
        return _answer(head, _SCORE, len(body.inputs or body.pairs or ()))

    return app
