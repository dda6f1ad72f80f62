"""The hot endpoints, `POST /v1/models/{name}[/versions/{v}]/(predict|score)`, served as raw ASGI.

They run the same code as the FastAPI routes in `app.routes_v1` (`predict_call`, `score_call`)
and answer errors the same way; what they skip is FastAPI's routing, dependency solving,
`Request` objects and exception middleware, which together cost more than the model's forward
pass for a 784-float body (bench/RESULTS.md). FastAPI still documents these routes in OpenAPI."""

from __future__ import annotations

import logging
import re

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceError
from app.http import check_bearer, make_context, receive_body
from app.routes_v1 import CALLS
from app.service import Service

log = logging.getLogger("batchserve")

_V1_INFERENCE = re.compile(r"/v1/models/([^/]+)(?:/versions/([^/]+))?/(predict|score)")
_JSON = [(b"content-type", b"application/json")]


class FastPath:
    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _V1_INFERENCE.fullmatch(scope["path"])
            if match is not None:
                await self._serve(match, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, match: re.Match[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        name, version, endpoint = match.groups()
        scope.setdefault("state", {})
        service = self.service
        headers = dict(scope["headers"])
        extra: dict[str, str] = {}
        try:
            check_bearer(_text(headers.get(b"authorization")), service.api_keys)
            body = await receive_body(receive, service.settings.max_body_bytes)
            timeout = _text(headers.get(b"x-request-timeout-ms"))
            ctx = make_context(timeout, receive, scope["state"])
            result = await CALLS[endpoint](service, name, version, body, ctx)
            status, payload = 200, orjson.dumps(result)
        except ServiceError as exc:
            status, extra = exc.status, exc.headers
            scope["state"]["error"] = exc.code
            payload = orjson.dumps({"error": exc.message, "code": exc.code})
        except Exception as exc:  # a bug; the answer must still be JSON
            log.exception("unhandled error on POST %s", scope["path"])
            status = 500
            payload = orjson.dumps(
                {"error": f"internal error: {type(exc).__name__}", "code": "internal"}
            )
        response_headers = [*_JSON, (b"content-length", str(len(payload)).encode())]
        response_headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
