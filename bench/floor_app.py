"""The no-model floor: FastAPI parses the same bodies with the same pydantic models and answers a
constant JSON of batchserve's shape. No torch, no model: what HTTP + parsing alone cost.

Run: `uvicorn --factory bench.floor_app:create_app --loop uvloop --http httptools`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from bench.schemas import PredictRequest, ScoreRequest

_TOP = {"label": "7", "index": 7, "probability": 0.99}
_PREDICTION = {**_TOP, "top_k": [_TOP]}
_SCORE = {"log_prob": -9.2, "num_tokens": 6, "perplexity": 4.6}


def create_app() -> FastAPI:
    app = FastAPI(title="floor")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/models/mnist-mlp/predict")
    async def predict(request: PredictRequest) -> dict[str, Any]:
        predictions = [_PREDICTION] * len(request.inputs)
        return {"model": "mnist-mlp", "version": "1", "predictions": predictions}

    @app.post("/v1/models/names-lm/score")
    async def score(request: ScoreRequest) -> dict[str, Any]:
        return {"model": "names-lm", "version": "1", "scores": [_SCORE] * len(request.inputs)}

    return app
