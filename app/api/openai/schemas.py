"""The OpenAI-compatible completions bodies, validated with pydantic (strict: no "5" for 5), and
the tokenizer endpoints that lm-evaluation-harness calls beside them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# The bounds every number and list of these bodies is checked against where it enters (and the
# OpenAPI document states); the serving layer narrows them per model and per server setting
# (top_k and token ids to the model's vocabulary, max_tokens to its length, n and logprobs to
# max_completion_choices and max_logprobs, prompts x n to max_items_per_request).
MAX_VOCABULARY = 1 << 22  # subword vocabularies: Llama 3 has 128,256 tokens, Gemma 256,000
MAX_TOKENS = 4096  # tokens one choice may ask for
MAX_LOGPROBS = 1000  # the largest max_logprobs setting
MAX_CHOICES = 1024  # the largest max_completion_choices setting
MAX_PROMPTS = 1024  # prompts in one request (max_items_per_request's default)
MAX_STOP = 4  # stop strings
MAX_STOP_CHARS = 256  # characters of one stop string
MAX_TEXT_CHARS = 1 << 20  # characters of one text to tokenize or complete
MAX_TOKEN_IDS = 1 << 20  # token ids in one prompt or detokenize call
MAX_NAME_CHARS = 256  # a model's (or user's) name
SEED_MAX = 2**63 - 1  # a torch.Generator seed (int64) without wrapping

TokenId = Annotated[int, Field(ge=0, lt=MAX_VOCABULARY)]
TokenIds = Annotated[list[TokenId], Field(max_length=MAX_TOKEN_IDS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


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
    model: str = Field(
        max_length=MAX_NAME_CHARS, description="A language model of the server (task `score`)."
    )
    prompt: (
        Text
        | Annotated[list[Text], Field(max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(max_length=MAX_PROMPTS)]
    ) = Field(
        description="Text, texts, token ids, or lists of token ids (one choice set each). '<s>' "
        "and '</s>' in text are the start and end tokens. Token ids are within the model's "
        "vocabulary; prompts x n within the server's max_items_per_request."
    )
    max_tokens: int = Field(
        16,
        ge=0,
        le=MAX_TOKENS,
        description="Tokens to generate; 0 with echo scores. The prompt and these fit the "
        "model's length.",
    )
    echo: bool = Field(False, description="Return the prompt (and its log-probs) first.")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Log-probabilities, with this many alternatives per position (at most the "
        "server's max_logprobs).",
    )
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(
        0,
        ge=0,
        le=MAX_VOCABULARY,
        description="Keep the k most likely tokens; 0 keeps all. At most the model's vocabulary.",
    )
    n: int = Field(
        1,
        ge=1,
        le=MAX_CHOICES,
        description="Choices per prompt (at most the server's max_completion_choices).",
    )
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Same seed, same samples.")
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = Field(
        None, description="Up to 4 strings; generation stops before the first one."
    )
    stream: bool = Field(False, description="Server-sent events, one per generated token.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=MAX_NAME_CHARS, description="Accepted and ignored.")
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
    prompt: Text
    add_special_tokens: bool = Field(False, description="Put the start token first.")
    model: str | None = Field(
        None, max_length=MAX_NAME_CHARS, description="Default: the server's only language model."
    )


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeBody(_Strict):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"tokens": [44, 12, 8]}]}
    )
    tokens: TokenIds = Field(description="Token ids of the model's vocabulary.")
    model: str | None = Field(None, max_length=MAX_NAME_CHARS)


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    model: str
    eos_token: str
    bos_token: str
    pad_token: str | None
    model_max_length: int = Field(description="Longest prompt + completion, in tokens.")
    vocab_size: int
