"""The playground: one page (`GET /playground`) that shows a person what each served model does,
a panel per model built in the browser from the models' metadata, and its own JS and CSS. Like
/docs it is served by batchserve itself, with nothing from elsewhere: the same content security
policy. The page is plain ES modules, no build step."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException
from starlette.responses import FileResponse

from app.api.docs import CONTENT_SECURITY_POLICY

PAGE_URL = "/playground"
ASSETS_URL = "/static/playground"
# What the playground serves, for the HTTP front's fallback paths.
PATHS = (PAGE_URL, ASSETS_URL)
ASSETS_DIR = Path(str(files("app.api") / "static" / "playground"))
# The page's files by name: only these are served, so no path from a request reaches the disk.
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
ASSETS = {path.name: path for path in sorted(ASSETS_DIR.iterdir()) if path.suffix in MEDIA_TYPES}
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get(PAGE_URL)
async def playground() -> FileResponse:
    # The page's links are relative, so it works under a root_path as well.
    return FileResponse(ASSETS["playground.html"], media_type="text/html", headers=HEADERS)


@router.get(ASSETS_URL + "/{name}")
async def asset(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise HTTPException(404, f"no playground file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)
