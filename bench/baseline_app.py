"""The naive baseline: a plain FastAPI app written the way a user would, with the same weights as
batchserve. Pydantic parses the body, the route runs one forward pass per request under
`torch.inference_mode()`, and the answer has batchserve's JSON shape. No batching, no queue.

Run: `BENCH_MODEL_REPOSITORY=models/repository uvicorn --factory bench.baseline_app:create_app
--loop uvloop --http httptools` (BENCH_BASELINE_ROUTE=async|def picks an `async def` route that runs
the model on the event loop, the faster for models this small, or a threadpool `def` route)."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from torch import nn

from bench.schemas import PredictRequest, ScoreRequest
from models.checkpoint import ModelConfig, TextInput, load_checkpoint
from models.text import CharVocab, normalize

CLASSIFIER = "mnist-mlp"
LANGUAGE_MODEL = "names-lm"


def newest_version(repository: Path, name: str) -> Path:
    versions = [p for p in (repository / name).iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise FileNotFoundError(f"no versions of {name} in {repository}")
    return max(versions, key=lambda p: int(p.name))


def create_app(repository: Path | None = None, route: str | None = None) -> FastAPI:
    repository = repository or Path(os.environ["BENCH_MODEL_REPOSITORY"])
    route = route or os.environ.get("BENCH_BASELINE_ROUTE", "async")
    if route not in ("def", "async"):
        raise ValueError("route must be 'def' or 'async'")
    threads = int(os.environ.get("BENCH_TORCH_THREADS", "1"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(threads)
        yield

    app = FastAPI(title="baseline", lifespan=lifespan)
    mlp_dir = newest_version(repository, CLASSIFIER)
    lm_dir = newest_version(repository, LANGUAGE_MODEL)
    predict = _predictor(*load_checkpoint(mlp_dir), mlp_dir.name)
    score = _scorer(*load_checkpoint(lm_dir), lm_dir.name)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    if route == "async":

        @app.post(f"/v1/models/{CLASSIFIER}/predict")
        async def predict_async(request: PredictRequest) -> dict[str, Any]:
            return predict(request)

        @app.post(f"/v1/models/{LANGUAGE_MODEL}/score")
        async def score_async(request: ScoreRequest) -> dict[str, Any]:
            return score(request)

    else:
        app.post(f"/v1/models/{CLASSIFIER}/predict")(predict)
        app.post(f"/v1/models/{LANGUAGE_MODEL}/score")(score)
    return app


def _predictor(
    model: nn.Module, config: ModelConfig, version: str
) -> Callable[[PredictRequest], Any]:
    labels = config.labels

    def predict(request: PredictRequest) -> dict[str, Any]:
        with torch.inference_mode():
            x = torch.tensor(request.inputs, dtype=torch.float32)
            probabilities = torch.softmax(model(x), dim=-1)
        top_k = min(request.top_k, len(labels))
        values, indices = probabilities.topk(top_k, dim=-1)
        predictions = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True):
            ranked = [
                {"label": labels[i], "index": i, "probability": p}
                for p, i in zip(row_values, row_indices, strict=True)
            ]
            predictions.append({**ranked[0], "top_k": ranked})
        return {"model": config.name, "version": version, "predictions": predictions}

    return predict


def _scorer(model: nn.Module, config: ModelConfig, version: str) -> Callable[[ScoreRequest], Any]:
    assert isinstance(config.input, TextInput)
    vocab = CharVocab(config.input.alphabet)
    mode = config.input.normalize

    def score(request: ScoreRequest) -> dict[str, Any]:
        scores = []
        with torch.inference_mode():
            for text in request.inputs:  # one forward pass per string
                ids = vocab.encode(normalize(text, mode))
                inputs = torch.tensor([[vocab.bos, *ids]])
                targets = torch.tensor([[*ids, vocab.eos]])
                log_probs = model(inputs, torch.tensor([len(ids) + 1]))
                log_prob = float(log_probs.gather(2, targets.unsqueeze(-1)).sum())
                num_tokens = len(ids) + 1
                perplexity = math.exp(-log_prob / num_tokens)
                scores.append(
                    {"log_prob": log_prob, "num_tokens": num_tokens, "perplexity": perplexity}
                )
        return {"model": config.name, "version": version, "scores": scores}

    return score
