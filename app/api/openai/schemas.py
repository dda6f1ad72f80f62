"""The OpenAI-compatible completions bodies, validated with pydantic (strict: no "5" for 5), and
the tokenizer endpoints that lm-evaluation-harness calls beside them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = Field(False, description="Send a last chunk with the token counts.")
    include_obfuscation: bool | None = Field(None, description="Accepted and ignored.")


class CompletionRequestBody(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"model": "names-lm", "prompt": "Smi", "max_tokens": 8, "stop": ["\n"]},
                {
                    "model": "names-lm",
                    "prompt": "Johnson",
                    "max_tokens": 0,
                    "echo": True,
                    "logprobs": 1,
                },
                {"model": "names-lm", "prompt": "Ko", "n": 3, "temperature": 0.8, "seed": 7},
            ]
        },
    )
    model: str = Field(description="A language model of the server (task `score`).")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, texts, token ids, or lists of token ids (one choice set each). '<s>' "
        "and '</s>' in text are the start and end tokens."
    )
    max_tokens: int = Field(16, ge=0, description="Tokens to generate; 0 with echo scores.")
    echo: bool = Field(False, description="Return the prompt (and its log-probs) first.")
    logprobs: int | None = Field(
        None, ge=0, description="Log-probabilities, with this many alternatives per position."
    )
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens; 0 keeps all.")
    n: int = Field(1, ge=1, description="Choices per prompt.")
    seed: int | None = Field(None, description="Same seed, same samples.")
    stop: str | list[str] | None = Field(
        None, description="Up to 4 strings; generation stops before the first one."
    )
    stream: bool = Field(False, description="Server-sent events, one per generated token.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted and ignored.")
    best_of: int | None = Field(None, ge=1, le=1, description="Only 1 (or unset).")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="Only 0.")
    presence_penalty: float = Field(0.0, ge=0, le=0, description="Only 0.")
    logit_bias: dict[str, Any] | None = Field(None, max_length=0, description="Only empty.")
    suffix: None = Field(None, description="Not supported (must be null).")


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoiceBody(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponseBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "cmpl-1a2b3c",
                    "object": "text_completion",
                    "created": 1795891250,
                    "model": "names-lm",
                    "choices": [
                        {"index": 0, "text": "th", "logprobs": None, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                }
            ]
        }
    )
    id: str
    object: str
    created: int
    model: str
    choices: list[CompletionChoiceBody]
    usage: Usage | None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class TokenizeBody(_Strict):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"prompt": "Smith"}]}
    )
    prompt: str
    add_special_tokens: bool = Field(False, description="Put the start token first.")
    model: str | None = Field(None, description="Default: the server's only language model.")


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeBody(_Strict):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"tokens": [44, 12, 8]}]}
    )
    tokens: list[int]
    model: str | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    model: str
    eos_token: str
    bos_token: str
    pad_token: str | None
    model_max_length: int = Field(description="Longest prompt + completion, in tokens.")
    vocab_size: int
