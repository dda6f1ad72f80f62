"""The documentation site, a FastAPI app behind the HTTP front: `/openapi.json`, and the `/docs`
(Swagger UI) and `/redoc` pages served with their JS and CSS from batchserve itself (the service
often runs where no CDN can be reached, and its docs must work there too). It also answers, in
batchserve's JSON error shape, every path that is neither an endpoint nor a page."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response

from app.api.http import error_body

log = logging.getLogger("batchserve")

# fastapi-offline ships the swagger-ui-dist bundle and the redoc standalone build: files only.
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
ASSETS_URL = "/static/docs"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"
OPENAPI_URL = "/openapi.json"
# What the site serves; every other path is the HTTP front's.
SITE_PATHS = (DOCS_URL, REDOC_URL, OPENAPI_URL, ASSETS_URL)
# The browser enforces "nothing from elsewhere": it blocks, for one, the Redocly logo that redoc
# fetches from its CDN (the logo then hides itself). Inline scripts are the pages' own set-up code;
# redoc's search runs in a blob: worker.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def docs_site(
    document: Callable[[], dict[str, Any]],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
) -> FastAPI:
    """The site; `document()` gives the OpenAPI document (made once, on the first request)."""
    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # install_docs serves them without a CDN
        redoc_url=None,
        # batchserve exports its own Prometheus metrics; no OpenTelemetry work per request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(document())
        return cached

    app.openapi = openapi  # type: ignore[method-assign]
    install_docs(app)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else "http_error"
        body = error_body(str(exc.detail), code)
        return Response(body, exc.status_code, exc.headers, media_type="application/json")

    async def unexpected(request: Request, exc: Exception) -> Response:
        # The promise is "never a 500 for any input"; reaching here is a bug, logged with its trace.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = error_body(f"internal error: {type(exc).__name__}", "internal")
        return Response(body, 500, media_type="application/json")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def install_docs(app: FastAPI) -> None:
    """Mount the assets and add the docs routes; create the app with docs_url=redoc_url=None."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title="batchserve - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # No validator badge: it would send the schema's URL to validator.swagger.io.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )
        return _self_contained(page)

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title="batchserve - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # Google Fonts is a CDN too; redoc falls back to the system fonts.
            with_google_fonts=False,
        )
        return _self_contained(page)


def _self_contained(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page
