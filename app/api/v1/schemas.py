"""The `/v1` request and response bodies as Pydantic models: the routes validate requests with
them (from the body's bytes), the OpenAPI document is made from them, and the Python client reads
answers with them (so no FastAPI here)."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model, model_validator

# The defaults of BATCHSERVE_MAX_ITEMS_PER_REQUEST and BATCHSERVE_MAX_TOP_K; a server documents
# and enforces its own (predict_request, score_request).
DEFAULT_MAX_ITEMS = 1024
DEFAULT_MAX_TOP_K = 100

_DIGIT: list[Any] = [0.0] * 784  # an all-black image; the OpenAPI example for mnist-mlp


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, naming the field.")
    code: str = Field(description="A stable machine-readable kind, e.g. invalid_input, queue_full.")


# A leaf where numbers are expected: a JSON number, never a boolean, a string or null. Whether
# it is finite (1e999 parses as infinity, NaN as NaN) the model checks with its value range, in
# one pass over its array (a check per element here costs a predict ~10 us more).
Number = Annotated[float, Field(strict=True)]


def _item_kind(value: Any) -> str | None:
    """Which form an item takes: a string, a flat array of numbers, or rows of numbers; None
    for anything else (an array of strings included: no model takes one)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            return "rows"
        if value and isinstance(value[0], str):
            return None
        return "numbers"
    return None


# One item: which form a model takes (784 numbers or 28x28 for mnist-mlp, a surname for
# names-rnn) is the model's to check; the schema checks that it is one of the forms.
Item = Annotated[
    Annotated[str, Tag("text")]
    | Annotated[list[Number], Tag("numbers")]
    | Annotated[list[list[Number]], Tag("rows")],
    Discriminator(
        _item_kind,
        custom_error_type="item_type",
        custom_error_message="expected a string, or an array of numbers (flat, or in rows of "
        "numbers)",
    ),
]

# The same three forms as a plain union tried left to right, numbers first: it accepts exactly
# what Item accepts (a string and an array are disjoint; an empty array is "numbers" in both)
# into the same values, and validates a 784-number item from JSON in ~26 us where Item's
# callable discriminator (which needs each item as a Python object first) takes ~57 us. Its
# errors name union members instead of the forms, so a body it refuses is validated again by
# the documented model for the answer (`predict_request(...)`, `fast_predict_request(...)`).
FastItem = Annotated[
    list[Number] | list[list[Number]] | str,
    Field(union_mode="left_to_right"),
]


_INPUTS = (
    "Items to classify: 784 floats in [0, 1] or a 28x28 nested list for mnist-mlp, a surname "
    "for names-rnn."
)
_TOP_K = "How many of the most likely labels to return."
_STRINGS = "Whole strings to score (EOS included). Exactly one of inputs and pairs."
_PAIRS = "Context/continuation pairs. Exactly one of inputs and pairs."


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"inputs": ["Nakamura", "Kowalski"], "top_k": 3}, {"inputs": [_DIGIT]}]
        },
    )
    inputs: list[Item] = Field(
        min_length=1,
        max_length=DEFAULT_MAX_ITEMS,
        description=_INPUTS,
    )
    top_k: int = Field(
        1,
        ge=1,
        le=DEFAULT_MAX_TOP_K,
        strict=True,
        description=_TOP_K,
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
    context: str = Field(strict=True, description="Conditioning text (may be empty).")
    continuation: str = Field(
        min_length=1, strict=True, description="Text whose log-probability is returned."
    )


class ScoreRequest(BaseModel):
    """Exactly one of `inputs` (whole strings) and `pairs`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": ["Johnson", "Xqjzvbk"], "per_token": True},
                {"pairs": [{"context": "Smi", "continuation": "th"}]},
            ],
            # Exactly one of the two is an array (the other absent or null).
            "oneOf": [
                {
                    "required": ["inputs"],
                    "properties": {"inputs": {"type": "array"}, "pairs": {"type": "null"}},
                },
                {
                    "required": ["pairs"],
                    "properties": {"pairs": {"type": "array"}, "inputs": {"type": "null"}},
                },
            ],
        },
    )
    inputs: list[str] | None = Field(
        None,
        min_length=1,
        max_length=DEFAULT_MAX_ITEMS,
        description=_STRINGS,
    )
    pairs: list[ScorePair] | None = Field(
        None,
        min_length=1,
        max_length=DEFAULT_MAX_ITEMS,
        description=_PAIRS,
    )
    per_token: bool = Field(
        False, strict=True, description="Also return each token's log-probability."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.inputs is None) == (self.pairs is None):
            raise ValueError("send exactly one of 'inputs' (strings) or 'pairs'")
        return self


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


def predict_request(max_items: int, max_top_k: int) -> type[PredictRequest]:
    """PredictRequest with a server's limits, so that its OpenAPI document states them."""
    return create_model(
        "PredictRequest",
        __base__=PredictRequest,
        inputs=(list[Item], Field(min_length=1, max_length=max_items, description=_INPUTS)),
        top_k=(int, Field(1, ge=1, le=max_top_k, strict=True, description=_TOP_K)),
    )


def fast_predict_request(max_items: int, max_top_k: int) -> type[PredictRequest]:
    """predict_request's model with FastItem items: the same bodies accepted into the same
    values, for validating; predict_request's model documents and words the errors."""
    return create_model(
        "PredictRequest",
        __base__=PredictRequest,
        inputs=(list[FastItem], Field(min_length=1, max_length=max_items)),
        top_k=(int, Field(1, ge=1, le=max_top_k, strict=True)),
    )


def score_request(max_items: int) -> type[ScoreRequest]:
    """ScoreRequest with a server's item limit."""
    return create_model(
        "ScoreRequest",
        __base__=ScoreRequest,
        inputs=(
            list[str] | None,
            Field(None, min_length=1, max_length=max_items, description=_STRINGS),
        ),
        pairs=(
            list[ScorePair] | None,
            Field(None, min_length=1, max_length=max_items, description=_PAIRS),
        ),
    )
