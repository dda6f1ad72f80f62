"""The raw-ASGI floor: a bare ASGI app on uvicorn that reads the whole body, parses it with orjson
and answers a constant JSON of batchserve's shape (one entry per input). No framework, no
validation, no model: the least any Python server on uvicorn can spend on these requests.

Run: `uvicorn --factory bench.raw_floor_app:create_app --loop uvloop --http httptools`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_TOP = {"label": "7", "index": 7, "probability": 0.99}
_PREDICTION = {**_TOP, "top_k": [_TOP]}
_SCORE = {"log_prob": -9.2, "num_tokens": 6, "perplexity": 4.6}
_HEADERS = [(b"content-type", b"application/json")]


def _predict(body: Any) -> dict[str, Any]:
    return {
        "model": "mnist-mlp",
        "version": "1",
        "predictions": [_PREDICTION] * len(body["inputs"]),
    }


def _score(body: Any) -> dict[str, Any]:
    return {"model": "names-lm", "version": "1", "scores": [_SCORE] * len(body["inputs"])}


_ROUTES: dict[tuple[str, str], Callable[[Any], dict[str, Any]] | None] = {
    ("POST", "/v1/models/mnist-mlp/predict"): _predict,
    ("POST", "/v1/models/names-lm/score"): _score,
    ("GET", "/health"): None,
}


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, status: int, payload: bytes) -> None:
    headers = [*_HEADERS, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    key = (scope["method"], scope["path"])
    if key not in _ROUTES:
        await _answer(send, 404, b'{"error":"not found"}')
        return
    handler = _ROUTES[key]
    if handler is None:
        await _answer(send, 200, b'{"status":"ok"}')
        return
    body = orjson.loads(await _read_body(receive))
    await _answer(send, 200, orjson.dumps(handler(body)))


def create_app() -> App:
    return app
