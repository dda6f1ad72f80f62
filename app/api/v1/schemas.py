"""The `/v1` request and response bodies: Pydantic models for the OpenAPI page and the Python
client (so no FastAPI here), and the one-pass checks that the handlers run on the parsed JSON
instead of a second validation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.errors import InvalidInput

_DIGIT: list[Any] = [0.0] * 784  # an all-black image; the OpenAPI example for mnist-mlp


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, naming the field.")
    code: str = Field(description="A stable machine-readable kind, e.g. invalid_input, queue_full.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"inputs": ["Nakamura", "Kowalski"], "top_k": 3}, {"inputs": [_DIGIT]}]
        },
    )
    inputs: list[list[float] | list[list[float]] | str] = Field(
        min_length=1,
        description="Items to classify (at most the server's max_items_per_request, default "
        "1024): 784 floats in [0, 1] or a 28x28 nested list for mnist-mlp, "
        "a surname for names-rnn.",
    )
    top_k: int = Field(
        1,
        ge=1,
        le=100,
        description="How many of the most likely labels to return (at most the server's "
        "max_top_k, default 100).",
    )


class LabelProbability(BaseModel):
    label: str
    index: int
    probability: float


class Prediction(LabelProbability):
    top_k: list[LabelProbability]


class MultilabelPrediction(BaseModel):
    """A multilabel model's item: a sigmoid per label."""

    labels: list[str] = Field(description="The labels at or above the threshold, likeliest first.")
    probabilities: dict[str, float] = Field(description="Every label's own probability.")
    threshold: float


class RegressionPrediction(BaseModel):
    """A regress model's item: each named output in the targets' units (scaling undone)."""

    values: dict[str, float]


class PredictResponse(BaseModel):
    # The shipped names-rnn's answer to the first PredictRequest example (rounded).
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "names-rnn",
                    "version": "1",
                    "predictions": [
                        {
                            "label": "JP",
                            "index": 9,
                            "probability": 0.9948,
                            "top_k": [
                                {"label": "JP", "index": 9, "probability": 0.9948},
                                {"label": "NG", "index": 11, "probability": 0.0036},
                                {"label": "ES", "index": 2, "probability": 0.0006},
                            ],
                        },
                        {
                            "label": "PL",
                            "index": 13,
                            "probability": 0.9823,
                            "top_k": [
                                {"label": "PL", "index": 13, "probability": 0.9823},
                                {"label": "GR", "index": 6, "probability": 0.0082},
                                {"label": "DE", "index": 1, "probability": 0.0052},
                            ],
                        },
                    ],
                }
            ]
        }
    )
    model: str
    version: str
    predictions: list[Prediction | MultilabelPrediction | RegressionPrediction] = Field(
        description="One per input: a classify model's label and top_k; a multilabel model's "
        "labels over its threshold and every label's probability; a regress model's values."
    )


class ScorePair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: str = Field(description="Conditioning text (may be empty).")
    continuation: str = Field(min_length=1, description="Text whose log-probability is returned.")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": ["Johnson", "Xqjzvbk"], "per_token": True},
                {"pairs": [{"context": "Smi", "continuation": "th"}]},
            ]
        },
    )
    inputs: list[str] | None = Field(
        None,
        min_length=1,
        description="Whole strings to score (EOS included); at most the server's "
        "max_items_per_request (default 1024).",
    )
    pairs: list[ScorePair] | None = Field(
        None,
        min_length=1,
        description="Context/continuation pairs; at most max_items_per_request (default 1024).",
    )
    per_token: bool = Field(False, description="Also return each token's log-probability.")


class TokenScore(BaseModel):
    token: str
    log_prob: float


class SequenceScore(BaseModel):
    log_prob: float = Field(description="Natural-log probability, summed over tokens.")
    num_tokens: int
    perplexity: float | None = Field(None, description="exp(-log_prob / num_tokens); strings only.")
    is_greedy: bool | None = Field(None, description="Pairs only: is the continuation greedy?")
    tokens: list[TokenScore] | None = None


class ScoreResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "names-lm",
                    "version": "1",
                    "scores": [{"log_prob": -17.81, "num_tokens": 8, "perplexity": 9.27}],
                }
            ]
        }
    )
    model: str
    version: str
    scores: list[SequenceScore]


class ModelSummary(BaseModel):
    name: str
    versions: list[str]
    default_version: str | None
    task: str | None
    state: str
    device: str | None


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    versions: list[str]
    state: str
    ready: bool | None = Field(
        None, description="Whether this version serves now (what KServe's v1 client reads)."
    )
    reason: str | None = None
    task: str | None = None
    device: str | None = None
    description: str | None = None
    architecture: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    labels: list[str] | None = None
    head: dict[str, Any] | None = Field(
        None, description="The head and its input and outputs: enough to build a request."
    )
    data: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    training: dict[str, Any] | None = None
    checkpoint_sha256: str | None = None
    batching: dict[str, Any] | None = None


# -- fast checks on the parsed JSON ------------------------------------------------------------


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("body: expected a JSON object")
    unknown = body.keys() - allowed
    if unknown:
        raise InvalidInput(f"body: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return body


def _items(body: dict[str, Any], key: str, max_items: int) -> list[Any]:
    items = body[key]
    if not isinstance(items, list):
        raise InvalidInput(f"{key}: expected an array of items")
    if not items:
        raise InvalidInput(f"{key}: the array is empty; send at least one item")
    if len(items) > max_items:
        raise InvalidInput(f"{key}: {len(items)} items; the limit is {max_items} per request")
    return items


def parse_predict(body: Any, max_items: int, max_top_k: int) -> tuple[list[Any], int]:
    body = _object(body, {"inputs", "top_k"})
    if "inputs" not in body:
        raise InvalidInput("inputs: field required")
    top_k = body.get("top_k", 1)
    if type(top_k) is not int or not 1 <= top_k <= max_top_k:
        raise InvalidInput(f"top_k: expected an integer from 1 to {max_top_k}")
    return _items(body, "inputs", max_items), top_k


def parse_score(body: Any, max_items: int) -> tuple[str, list[Any], bool]:
    """Returns ("inputs" or "pairs", the items, per_token)."""
    body = _object(body, {"inputs", "pairs", "per_token"})
    kinds = [k for k in ("inputs", "pairs") if body.get(k) is not None]
    if len(kinds) != 1:
        raise InvalidInput("body: send exactly one of 'inputs' (strings) or 'pairs'")
    per_token = body.get("per_token", False)
    if type(per_token) is not bool:
        raise InvalidInput("per_token: expected true or false")
    kind = kinds[0]
    items = _items(body, kind, max_items)
    if kind == "pairs":
        for i, pair in enumerate(items):
            if not isinstance(pair, dict) or pair.keys() != {"context", "continuation"}:
                raise InvalidInput(
                    f"pairs[{i}]: expected an object with 'context' and 'continuation' strings"
                )
    return kind, items, per_token
