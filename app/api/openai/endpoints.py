"""An OpenAI-compatible completions API for the character language models (`POST /v1/completions`,
streaming included), and the tokenizer endpoints that lm-evaluation-harness's
`local-completions` model calls beside it (`/tokenizer_info`, `/tokenize`, `/detokenize`).
Errors take OpenAI's shape, so that OpenAI clients show the message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import TypeAdapter
from starlette.responses import Response

from app.api.http import EventStream, json_response
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
from app.api.routing import ServiceRoute, inference, json_body
from app.api.schema import BodySchemas, errors
from app.api.v1.endpoints import Timeout
from app.errors import InvalidInput, ServiceError
from app.serving.completions import (
    ChoiceStream,
    CompletionChoice,
    CompletionDelta,
    CompletionRequest,
    CompletionToken,
)
from app.serving.dataplane import DataPlane
from app.serving.loader import LoadedModel
from app.serving.servables import SequenceScorer
from models.sampling import SamplingParams

MAX_STOP_STRINGS = 4
SSE = b"text/event-stream"


def openai_error(message: str, code: str) -> bytes:
    """{"error": {"message", "type", "param", "code"}}; `param` is the field a message names."""
    field, sep, _ = message.partition(": ")
    param = field if sep and " " not in field else None
    kind = "invalid_request_error" if code not in ("internal", "item_failed") else "server_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


class OpenAIRoute(ServiceRoute):
    """Errors in OpenAI's shape, invalid input answered 400, as OpenAI's API does."""

    error_format = staticmethod(openai_error)
    invalid_input_status = 400


# Fields of several accepted shapes: one message instead of one per shape tried.
COMPLETION_SHAPES = {
    "prompt": "expected a text, a list of texts, a list of token ids or a list of such lists",
    "stop": "expected a string or a list of strings",
}


# -- completions --------------------------------------------------------------------------------


async def _complete(
    plane: DataPlane, request: Request, body: CompletionRequestBody, timeout: str | None
) -> Response:
    ctx = inference(request, "", timeout)
    model = plane.language_model(body.model)
    await plane.bind(model.name, model.version, ctx, "completions")
    settings = plane.settings
    completion = _request(plane, settings.max_items_per_request, model, body)
    created, ident = int(time.time()), f"cmpl-{ctx.request_id}"
    prompt_tokens = sum(len(p) for p in completion.prompts)
    if body.stream:
        streams = plane.complete(model, completion, ctx)
        usage = body.stream_options is not None and body.stream_options.include_usage
        head = {"id": ident, "object": "text_completion", "created": created, "model": model.name}
        return EventStream(_events(streams, head, prompt_tokens, usage, body.logprobs))
    choices = await plane.complete_all(model, completion, ctx)
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


def _request(
    plane: DataPlane, limit: int, model: LoadedModel, body: CompletionRequestBody
) -> CompletionRequest:
    settings = plane.settings
    prompts = _prompts(plane, limit, model, body.prompt)
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


def _prompts(plane: DataPlane, limit: int, model: LoadedModel, prompt: Any) -> list[list[int]]:
    """Every prompt as token ids: a text, texts, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return [plane.tokenize(model, prompt, "prompt")]
    if not prompt:
        raise InvalidInput("prompt: an empty array; send a text or token ids")
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


def _model_of(plane: DataPlane, name: str | None) -> tuple[LoadedModel, SequenceScorer]:
    model = plane.language_model(name)
    assert isinstance(model.servable, SequenceScorer)
    return model, model.servable


ERRORS = {
    400: "Invalid request: the message names the field",
    401: "Missing or wrong API key",
    404: "Unknown model",
    413: "Body too large",
    415: "A body that is not JSON, or in an unsupported Content-Encoding",
    503: "Queue full (with Retry-After), model not ready, or shutting down",
    504: "The X-Request-Timeout-Ms deadline passed before the work started",
}
SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {
            "type": "string",
            "description": "A chunk in the answer's shape, as JSON; `[DONE]` ends the stream.",
        },
        "event": {"type": "string"},
    },
    "required": ["data"],
}
STREAM_ANSWER = {
    "description": "Successful Response. With stream: server-sent events, `data: <a chunk in "
    "the response's shape>` per generated token, then `data: [DONE]`.",
    "content": {"text/event-stream": {"schema": SSE_EVENT}},
}
ModelQuery = Annotated[
    str | None, Query(description="The language model (default: the server's only one).")
]


def router(plane: DataPlane, bodies: BodySchemas, guard: list[Any]) -> APIRouter:
    """/v1/completions and the tokenizer endpoints, behind `guard`."""
    api = APIRouter(route_class=OpenAIRoute, tags=["completions (OpenAI)"], dependencies=guard)
    completion_bodies: TypeAdapter[CompletionRequestBody] = TypeAdapter(CompletionRequestBody)
    tokenize_bodies: TypeAdapter[TokenizeBody] = TypeAdapter(TokenizeBody)
    detokenize_bodies: TypeAdapter[DetokenizeBody] = TypeAdapter(DetokenizeBody)

    def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
        return errors({s: ERRORS[s] for s in statuses}, OpenAIError)

    @api.post(
        "/v1/completions",
        summary="Complete or score text (OpenAI completions API; stream: server-sent events)",
        response_model=CompletionResponseBody,
        responses={200: STREAM_ANSWER, **answers(*ERRORS)},
        openapi_extra=bodies(CompletionRequestBody),
    )
    async def completions(request: Request, timeout: Timeout = None) -> Response:
        body = await json_body(request, completion_bodies, shapes=COMPLETION_SHAPES)
        return await _complete(plane, request, body, timeout)

    @api.post(
        "/tokenize",
        summary="Token ids of a text (the character vocabulary; '<s>' and '</s>' are special)",
        response_model=TokenizeResponse,
        responses=answers(400, 401, 404, 413, 415, 503),
        openapi_extra=bodies(TokenizeBody),
    )
    async def tokenize(request: Request) -> Response:
        body = await json_body(request, tokenize_bodies)
        model, scorer = _model_of(plane, body.model)
        tokens = plane.tokenize(model, body.prompt, "prompt")
        if body.add_special_tokens and tokens[:1] != [scorer.vocab.bos]:
            tokens = [scorer.vocab.bos, *tokens]
        return json_response(
            {"tokens": tokens, "count": len(tokens), "max_model_len": scorer.max_length + 2}
        )

    @api.post(
        "/detokenize",
        summary="The text of token ids",
        response_model=DetokenizeResponse,
        responses=answers(400, 401, 404, 413, 415, 503),
        openapi_extra=bodies(DetokenizeBody),
    )
    async def detokenize(request: Request) -> Response:
        body = await json_body(request, detokenize_bodies)
        model, _ = _model_of(plane, body.model)
        return json_response({"prompt": plane.detokenize(model, body.tokens, "tokens")})

    @api.get(
        "/tokenizer_info",
        summary="The tokenizer's special tokens and limits (?model=NAME, default: the only "
        "language model)",
        response_model=TokenizerInfo,
        responses=answers(400, 401, 404, 503),
    )
    async def tokenizer_info(model: ModelQuery = None) -> Response:
        loaded, scorer = _model_of(plane, model)
        vocab = scorer.vocab
        return json_response(
            {
                "model": loaded.name,
                "eos_token": vocab.token(vocab.eos),
                "bos_token": vocab.token(vocab.bos),
                "pad_token": None,
                "model_max_length": scorer.max_length + 2,
                "vocab_size": vocab.lm_vocab_size,
            }
        )

    return api
