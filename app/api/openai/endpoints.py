"""An OpenAI-compatible completions API for the character language models (`POST /v1/completions`,
streaming included), and the tokenizer endpoints that lm-evaluation-harness's
`local-completions` model calls beside it (`/tokenizer_info`, `/tokenize`, `/detokenize`).
Errors take OpenAI's shape, so that OpenAI clients show the message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ValidationError

from app.api.http import HttpResponse, HttpStream, json_response, parse_json
from app.api.openai.schemas import (
    CompletionRequestBody,
    CompletionResponseBody,
    DetokenizeBody,
    DetokenizeResponse,
    OpenAIError,
    TokenizeBody,
    TokenizeResponse,
    TokenizerInfo,
)
from app.api.router import Call, Endpoint
from app.errors import InvalidInput, ServiceError
from app.serving.completions import (
    ChoiceStream,
    CompletionChoice,
    CompletionDelta,
    CompletionRequest,
    CompletionToken,
)
from app.serving.loader import LoadedModel
from app.serving.servables import SequenceScorer
from models.sampling import SamplingParams

MAX_STOP_STRINGS = 4
SSE = b"text/event-stream"
# pydantic's error types for a value of the right type past a bound.
_BOUNDS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "finite_number",
    "too_long",
    "too_short",
    "string_too_long",
    "string_too_short",
}


def openai_error(message: str, code: str) -> bytes:
    """{"error": {"message", "type", "param", "code"}}; `param` is the field a message names."""
    field, sep, _ = message.partition(": ")
    param = field if sep and " " not in field else None
    kind = "invalid_request_error" if code not in ("internal", "item_failed") else "server_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


# Fields of several accepted shapes: one message instead of one per shape tried.
_SHAPES = {
    "prompt": "expected a text, a list of texts, a list of token ids or a list of such lists",
    "stop": "expected a string or a list of strings",
}


def _body(raw: bytes, schema: type[BaseModel]) -> Any:
    """The body as `schema`, or a 400 naming the fields that are wrong (the first problem of
    each)."""
    try:
        return schema.model_validate(parse_json(raw))
    except ValidationError as exc:
        problems: dict[str, str] = {}
        # A value past a bound says the bound, before the shapes it did not match.
        for error in sorted(exc.errors(), key=lambda e: e["type"] not in _BOUNDS):
            field = str(error["loc"][0]) if error["loc"] else "body"
            bound = error["type"] in _BOUNDS
            problems.setdefault(field, error["msg"] if bound else _SHAPES.get(field, error["msg"]))
        shown = [f"{field}: {problem}" for field, problem in list(problems.items())[:3]]
        raise InvalidInput("; ".join(shown)) from None


# -- completions --------------------------------------------------------------------------------


async def completions(call: Call) -> HttpResponse | HttpStream:
    body: CompletionRequestBody = _body(await call.body(), CompletionRequestBody)
    plane, ctx = call.plane, call.ctx
    model = plane.language_model(body.model)
    await plane.bind(model.name, model.version, ctx, "completions")
    request = _request(call, model, body)
    created, ident = int(time.time()), f"cmpl-{ctx.request_id}"
    prompt_tokens = sum(len(p) for p in request.prompts)
    if body.stream:
        streams = plane.complete(model, request, ctx)
        usage = body.stream_options is not None and body.stream_options.include_usage
        head = {"id": ident, "object": "text_completion", "created": created, "model": model.name}
        return HttpStream(_events(streams, head, prompt_tokens, usage, body.logprobs), SSE)
    choices = await plane.complete_all(model, request, ctx)
    completed = sum(c.completion_tokens for c in choices)
    return json_response(
        {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": model.name,
            "choices": [_choice(c, body.logprobs) for c in choices],
            "usage": _usage(prompt_tokens, completed),
        }
    )


def _request(call: Call, model: LoadedModel, body: CompletionRequestBody) -> CompletionRequest:
    settings = call.settings
    prompts = _prompts(call, model, body.prompt)
    if body.n > settings.max_completion_choices:
        raise InvalidInput(f"n: {body.n}; the limit is {settings.max_completion_choices}")
    if len(prompts) * body.n > settings.max_items_per_request:
        raise InvalidInput(
            f"prompt: {len(prompts)} prompts x n {body.n} choices; the limit is "
            f"{settings.max_items_per_request} per request"
        )
    if body.logprobs is not None and body.logprobs > settings.max_logprobs:
        raise InvalidInput(f"logprobs: {body.logprobs}; the limit is {settings.max_logprobs}")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stop) > MAX_STOP_STRINGS or not all(stop):
        raise InvalidInput(f"stop: up to {MAX_STOP_STRINGS} non-empty strings")
    return CompletionRequest(
        prompts=prompts,
        max_tokens=body.max_tokens,
        echo=body.echo,
        logprobs=body.logprobs,
        params=SamplingParams(body.temperature, body.top_k, body.top_p),
        n=body.n,
        seed=body.seed,
        stop=stop,
    )


def _prompts(call: Call, model: LoadedModel, prompt: Any) -> list[list[int]]:
    """Every prompt as token ids: a text, texts, token ids, or lists of token ids."""
    plane = call.plane
    if isinstance(prompt, str):
        return [plane.tokenize(model, prompt, "prompt")]
    if not prompt:
        raise InvalidInput("prompt: an empty array; send a text or token ids")
    limit = call.settings.max_items_per_request
    if isinstance(prompt[0], str | list) and len(prompt) > limit:
        raise InvalidInput(f"prompt: {len(prompt)} prompts; the limit is {limit} per request")
    if isinstance(prompt[0], str):
        return [plane.tokenize(model, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    if isinstance(prompt[0], list):
        return [plane.token_ids(model, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    return [plane.token_ids(model, prompt, "prompt")]


def _choice(choice: CompletionChoice, logprobs: int | None) -> dict[str, Any]:
    return {
        "index": choice.index,
        "text": choice.text,
        "logprobs": _logprobs(choice.tokens, logprobs),
        "finish_reason": choice.finish_reason,
    }


def _logprobs(tokens: list[CompletionToken], logprobs: int | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.log_prob for t in tokens],
        "top_logprobs": [t.top for t in tokens] if logprobs else None,
        "text_offset": [t.text_offset for t in tokens],
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": total}  # fmt: skip


async def _events(
    streams: list[ChoiceStream],
    head: dict[str, Any],
    prompt_tokens: int,
    usage: bool,
    logprobs: int | None,
) -> AsyncIterator[bytes]:
    """Server-sent events: a chunk per delta of any choice as it comes, then (with
    include_usage) the token counts, then [DONE]. A failure after the start is an error event."""
    queue: asyncio.Queue[CompletionDelta | BaseException | None] = asyncio.Queue()

    async def pump(stream: ChoiceStream) -> None:
        try:
            async for delta in stream.deltas():
                queue.put_nowait(delta)
        except ServiceError as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.ensure_future(pump(s)) for s in streams]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, ServiceError):
                yield _event(
                    {"error": orjson.loads(openai_error(item.message, item.code))["error"]}
                )
                return
            assert isinstance(item, CompletionDelta)
            choice = {"index": item.index, "text": item.text,
                      "logprobs": _logprobs(item.tokens, logprobs),
                      "finish_reason": item.finish_reason}  # fmt: skip
            yield _event({**head, "choices": [choice], "usage": None})
        if usage:
            completed = sum(s.completion_tokens for s in streams)
            yield _event({**head, "choices": [], "usage": _usage(prompt_tokens, completed)})
        yield b"data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.sequence.cancel()


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# -- the tokenizer ------------------------------------------------------------------------------


def _model_of(call: Call, name: str | None) -> tuple[LoadedModel, SequenceScorer]:
    model = call.plane.language_model(name)
    assert isinstance(model.servable, SequenceScorer)
    return model, model.servable


async def tokenizer_info(call: Call) -> HttpResponse:
    query = parse_qs(call.scope.get("query_string", b"").decode("latin-1"))
    model, scorer = _model_of(call, (query.get("model") or [None])[0])
    vocab = scorer.vocab
    return json_response(
        {
            "model": model.name,
            "eos_token": vocab.token(vocab.eos),
            "bos_token": vocab.token(vocab.bos),
            "pad_token": None,
            "model_max_length": scorer.max_length + 2,
            "vocab_size": vocab.lm_vocab_size,
        }
    )


async def tokenize(call: Call) -> HttpResponse:
    body: TokenizeBody = _body(await call.body(), TokenizeBody)
    model, scorer = _model_of(call, body.model)
    tokens = call.plane.tokenize(model, body.prompt, "prompt")
    if body.add_special_tokens and tokens[:1] != [scorer.vocab.bos]:
        tokens = [scorer.vocab.bos, *tokens]
    return json_response(
        {"tokens": tokens, "count": len(tokens), "max_model_len": scorer.max_length + 2}
    )


async def detokenize(call: Call) -> HttpResponse:
    body: DetokenizeBody = _body(await call.body(), DetokenizeBody)
    model, _ = _model_of(call, body.model)
    return json_response({"prompt": call.plane.detokenize(model, body.tokens, "tokens")})


def table() -> list[Endpoint]:
    tags = ("completions (OpenAI)",)
    errors = {
        400: "Invalid request: the message names the field",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Body too large",
        503: "Queue full (with Retry-After), model not ready, or shutting down",
        504: "The X-Request-Timeout-Ms deadline passed before the work started",
    }
    create = Endpoint(
        "POST",
        "/v1/completions",
        completions,
        "Complete or score text (OpenAI completions API; stream: server-sent events)",
        tags,
        inference=True,
        invalid_input_status=400,
        error_format=openai_error,
        request_schema=CompletionRequestBody,
        response_schema=CompletionResponseBody,
        errors=errors,
        docs={"stream": True, "error_schema": OpenAIError},
    )
    tokens = replace(
        create,
        path="/tokenize",
        handler=tokenize,
        summary="Token ids of a text (the character vocabulary; '<s>' and '</s>' are special)",
        inference=False,
        request_schema=TokenizeBody,
        response_schema=TokenizeResponse,
        errors={s: errors[s] for s in (400, 401, 404, 413, 503)},
        docs={"error_schema": OpenAIError},
    )
    return [
        create,
        tokens,
        replace(
            tokens,
            path="/detokenize",
            handler=detokenize,
            summary="The text of token ids",
            request_schema=DetokenizeBody,
            response_schema=DetokenizeResponse,
        ),
        replace(
            tokens,
            method="GET",
            path="/tokenizer_info",
            handler=tokenizer_info,
            summary="The tokenizer's special tokens and limits (?model=NAME, default: the only "
            "language model)",
            request_schema=None,
            response_schema=TokenizerInfo,
            errors={s: errors[s] for s in (400, 401, 404, 503)},
            docs={
                "error_schema": OpenAIError,
                "query": {"model": "The language model (default: the server's only one)."},
            },
        ),
    ]
