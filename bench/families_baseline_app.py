"""The plain route for the model families (bench/families.py): a FastAPI app written the way a user
would write one for the MLP or RNN they trained, with the same checkpoints as batchserve. Pydantic
parses the body, the route runs the model under `torch.inference_mode()` (one forward pass per
request; one per item for sequences, which differ in length), applies the head (softmax, a sigmoid
per label, or the target scaling undone) and answers in batchserve's /v1 JSON shape. No batching,
no queue.

Run: `BENCH_MODEL_REPOSITORY=DIR uvicorn --factory bench.families_baseline_app:create_app
--loop uvloop --http httptools` (BENCH_FAMILY_MODELS=a,b,c picks the models; default: every
`mlp` and `rnn` model in DIR)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from torch import nn

from bench.baseline_app import newest_version
from models.checkpoint import (
    ModelConfig,
    SequenceInput,
    TextInput,
    VectorInput,
    WordsInput,
    load_checkpoint,
)
from models.text import CharVocab, WordVocab, normalize

FAMILIES = ("mlp", "rnn")
DEFAULT_THRESHOLD = 0.5  # a multilabel head without a threshold in its config


class VectorBody(BaseModel):
    inputs: list[list[float]]
    top_k: int = 1


class TextBody(BaseModel):
    inputs: list[str]
    top_k: int = 1


class SequenceBody(BaseModel):
    inputs: list[list[list[float]]]
    top_k: int = 1


Body = VectorBody | TextBody | SequenceBody


def family_models(repository: Path) -> list[str]:
    """The repository's models of the families this app serves, by name."""
    names = []
    for directory in sorted(p for p in repository.iterdir() if p.is_dir()):
        try:
            config = ModelConfig.model_validate_json(
                (newest_version(repository, directory.name) / "config.json").read_text()
            )
        except (OSError, ValueError):
            continue
        if config.architecture.type in FAMILIES and config.task != "score":
            names.append(directory.name)
    return names


def create_app(repository: Path | None = None, names: list[str] | None = None) -> FastAPI:
    repository = repository or Path(os.environ["BENCH_MODEL_REPOSITORY"])
    if names is None:
        chosen = os.environ.get("BENCH_FAMILY_MODELS", "")
        names = chosen.split(",") if chosen else family_models(repository)
    threads = int(os.environ.get("BENCH_TORCH_THREADS", "1"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(threads)
        yield

    app = FastAPI(title="families baseline", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    for name in names:
        directory = newest_version(repository, name)
        model, config = load_checkpoint(directory)
        _add_route(app, name, _predictor(model, config, directory.name))
    return app


def _add_route(app: FastAPI, name: str, predictor: tuple[type[Body], Callable[..., Any]]) -> None:
    body_type, predict = predictor
    # An `async def` route running the model on the event loop: the faster for models this small
    # (as bench/baseline_app.py's default route). The annotation is the model's own body type.
    if body_type is VectorBody:

        async def vector_route(request: VectorBody) -> dict[str, Any]:
            return predict(request)

        app.post(f"/v1/models/{name}/predict")(vector_route)
    elif body_type is TextBody:

        async def text_route(request: TextBody) -> dict[str, Any]:
            return predict(request)

        app.post(f"/v1/models/{name}/predict")(text_route)
    else:

        async def sequence_route(request: SequenceBody) -> dict[str, Any]:
            return predict(request)

        app.post(f"/v1/models/{name}/predict")(sequence_route)


def _predictor(
    model: nn.Module, config: ModelConfig, version: str
) -> tuple[type[Body], Callable[[Any], dict[str, Any]]]:
    """The body type the model takes and the function answering it."""
    spec = config.input
    head = _head(config)
    forward: Callable[[Any], torch.Tensor]
    body_type: type[Body]
    if isinstance(spec, VectorInput):
        body_type = VectorBody

        def forward(inputs: list[list[float]]) -> torch.Tensor:
            return model(torch.tensor(inputs, dtype=torch.float32))  # type: ignore[no-any-return]

    elif isinstance(spec, SequenceInput):
        body_type = SequenceBody

        def forward(inputs: list[list[list[float]]]) -> torch.Tensor:
            return torch.cat(
                [
                    model(torch.tensor([steps], dtype=torch.float32), torch.tensor([len(steps)]))
                    for steps in inputs
                ]
            )

    elif isinstance(spec, TextInput | WordsInput):
        body_type = TextBody
        encode = _text_encoder(spec)

        def forward(inputs: list[str]) -> torch.Tensor:
            rows = []
            for text in inputs:  # one forward pass per string: their lengths differ
                ids = encode(text)
                rows.append(model(torch.tensor([ids]), torch.tensor([len(ids)])))
            return torch.cat(rows)

    else:  # subwords: batchserve's own tokenizer file; this plain app does not read one
        raise ValueError(f"the plain route does not serve {spec.kind} inputs")

    def predict(request: Any) -> dict[str, Any]:
        with torch.inference_mode():
            outputs = forward(request.inputs)
            predictions = head(outputs, request.top_k)
        return {"model": config.name, "version": version, "predictions": predictions}

    return body_type, predict


def _text_encoder(spec: TextInput | WordsInput) -> Callable[[str], list[int]]:
    if isinstance(spec, WordsInput):
        words = WordVocab(tuple(spec.vocabulary), spec.lowercase, spec.split, spec.unknown)

        def encode_words(text: str) -> list[int]:
            split = words.split(text)
            if not split or words.unknown_words(split):
                raise HTTPException(422, "no words, or words outside the vocabulary")
            return words.encode_words(split)

        return encode_words
    chars = CharVocab(spec.alphabet)
    mode = spec.normalize

    def encode_chars(text: str) -> list[int]:
        text = normalize(text, mode)
        if not text or chars.unknown_chars(text):
            raise HTTPException(422, "an empty string, or characters outside the alphabet")
        return chars.encode(text)

    return encode_chars


def _head(config: ModelConfig) -> Callable[[torch.Tensor, int], list[dict[str, Any]]]:
    labels = config.labels
    if config.task == "multilabel":
        threshold = DEFAULT_THRESHOLD if config.threshold is None else config.threshold

        def multilabel(outputs: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
            answers = []
            for row in torch.sigmoid(outputs).tolist():
                over = sorted(
                    (i for i, p in enumerate(row) if p >= threshold), key=lambda i: -row[i]
                )
                answers.append(
                    {
                        "labels": [labels[i] for i in over],
                        "probabilities": dict(zip(labels, row, strict=True)),
                        "threshold": threshold,
                    }
                )
            return answers

        return multilabel
    if config.task == "regress":
        scaling = config.target_scaling
        std = torch.tensor(scaling.std) if scaling else torch.ones(len(labels))
        mean = torch.tensor(scaling.mean) if scaling else torch.zeros(len(labels))

        def regress(outputs: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
            rows = (outputs * std + mean).tolist()
            return [{"values": dict(zip(labels, row, strict=True))} for row in rows]

        return regress

    def classify(outputs: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        probabilities = torch.softmax(outputs, dim=-1)
        values, indices = probabilities.topk(min(top_k, len(labels)), dim=-1)
        answers = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True):
            ranked = [
                {"label": labels[i], "index": i, "probability": p}
                for p, i in zip(row_values, row_indices, strict=True)
            ]
            answers.append({**ranked[0], "top_k": ranked})
        return answers

    return classify
