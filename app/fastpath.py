"""The hot endpoints, `POST /v1/models/{name}[/versions/{v}]/(predict|score)`, served as raw ASGI.

They run the same code as the FastAPI routes in `app.routes_v1` (`predict_call`, `score_call`)
and answer errors the same way; what they skip is FastAPI's routing, dependency solving,
`Request` objects and exception middleware, which together cost more than the model's forward
pass for a 784-float body (bench/RESULTS.md). FastAPI still documents these routes in OpenAPI."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceError, error_body
from app.http import check_bearer, header, make_context, receive_body, send_json
from app.routes_v1 import CALLS
from app.service import Service

log = logging.getLogger("batchserve")

_V1_INFERENCE = re.compile(r"/v1/models/([^/]+)(?:/versions/([^/]+))?/(predict|score)")


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
        service, state = self.service, scope.setdefault("state", {})
        extra: Mapping[str, str] = {}
        try:
            check_bearer(header(scope, b"authorization"), service.api_keys)
            body = await receive_body(receive, service.settings.max_body_bytes)
            ctx = make_context(header(scope, b"x-request-timeout-ms"), receive, state)
            result = await CALLS[endpoint](service, name, version, body, ctx)
            status, payload = 200, orjson.dumps(result)
        except ServiceError as exc:
            status, extra, state["error"] = exc.status, exc.headers, exc.code
            payload = error_body(exc.message, exc.code)
        except Exception as exc:  # a bug; the answer must still be JSON
            log.exception("unhandled error on POST %s", scope["path"])
            status, payload = 500, error_body(f"internal error: {type(exc).__name__}", "internal")
        await send_json(send, status, payload, extra)
