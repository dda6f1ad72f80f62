"""batchserve's HTTP API is FastAPI's: every documented operation is a path operation of the app
(and every path operation is documented), the document is FastAPI's own and valid, and the
uvicorn internals that app.api.connections builds on are still there."""

from __future__ import annotations

import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from openapi_spec_validator import validate
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.routing import ServiceRoute
from app.main import Application, create_app
from tests.conftest import settings_for, write_tiny_repository

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["open", "keys"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Application]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("routes") / "repository")
    keys: dict[str, Any] = {}
    if request.param == "keys":
        keys = {"api_keys": ["user-key"], "admin_api_key": "admin-key", "protect_metrics": True}
    yield create_app(settings_for(repository, **keys))


def _api_routes(app: Application) -> list[tuple[RouteContext, APIRoute]]:
    """Every path operation of the app, the included routers' included (FastAPI keeps each
    included router as one entry of app.routes)."""
    found = []
    for context in iter_route_contexts(app.fastapi.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema:
            found.append((context, route))
    return found


def _operations_of_routes(app: Application) -> set[tuple[str, str]]:
    found = set()
    for context, _ in _api_routes(app):
        assert context.path_format is not None and context.methods is not None
        for method in context.methods:
            found.add((method.lower(), context.path_format))
    return found


def _operations_of_document(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in document["paths"].items() for method in ops}


def test_the_routes_and_the_document_hold_the_same_operations(app: Application) -> None:
    document = app.openapi()
    routes = _operations_of_routes(app)
    assert routes == _operations_of_document(document)
    assert len(routes) >= 28 and ("post", "/v1/models/{name}/predict") in routes


def test_every_operation_is_served_by_a_batchserve_route(app: Application) -> None:
    routes = _api_routes(app)
    assert routes
    for _, route in routes:
        assert isinstance(route, ServiceRoute), route.path


def test_the_document_is_fastapis_and_valid(app: Application) -> None:
    document = app.openapi()
    assert document is app.fastapi.openapi()
    validate(document)  # type: ignore[arg-type]
    assert not (ROOT / "app" / "api" / "openapi.py").exists()
    assert not (ROOT / "app" / "api" / "router.py").exists()


def test_keys_are_security_schemes_when_set(app: Application) -> None:
    document = app.openapi()
    schemes = document.get("components", {}).get("securitySchemes", {})
    operations = document["paths"]
    predict = operations["/v1/models/{name}/predict"]["post"]
    live = operations["/v2/health/live"]["get"]
    if not app.settings.api_keys:
        assert not schemes and "security" not in predict
        assert "/v2/repository/index" not in operations  # no admin key: no repository extension
        return
    assert schemes["UserKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of BATCHSERVE_API_KEYS.",
    }
    assert schemes["AdminKey"]["scheme"] == "bearer"
    assert predict["security"] == [{"UserKey": []}]
    assert "security" not in live
    assert operations["/v2/repository/index"]["post"]["security"] == [{"AdminKey": []}]
    assert operations["/metrics"]["get"]["security"] == [{"UserKey": []}]


def test_no_module_parses_request_json_by_hand() -> None:
    """Request bodies are Pydantic's to parse: no json/orjson loads in the HTTP layer."""
    offenders = []
    for path in sorted((ROOT / "app" / "api").rglob("*.py")):
        if "grpc" in path.parts:
            continue
        text = path.read_text()
        if re.search(r"\b(orjson|json)\.loads\(", text):
            offenders.append(str(path.relative_to(ROOT)))
    # The stream's error event re-reads batchserve's own error body, not a request.
    assert offenders == ["app/api/openai/endpoints.py"], offenders
    assert (ROOT / "app/api/openai/endpoints.py").read_text().count("orjson.loads(") == 1


# -- the uvicorn internals app.api.connections subclasses ----------------------------------------

# Every attribute of uvicorn's HttpToolsProtocol that LimitedHttpToolsProtocol reads, calls or
# overrides: a uvicorn release that renames one breaks the connection limits.
PROTOCOL_METHODS = [
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_header",
    "on_headers_complete",
    "on_message_complete",
    "timeout_keep_alive_handler",
    "_unset_keepalive_if_required",
]
PROTOCOL_STATE = [
    "connections",
    "loop",
    "parser",
    "transport",
    "cycle",
    "scope",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
]


@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_uvicorns_protocol_still_has_the_method_connections_overrides(name: str) -> None:
    assert callable(getattr(HttpToolsProtocol, name, None)), (
        f"uvicorn {uvicorn.__version__}: HttpToolsProtocol.{name} is gone; "
        "app/api/connections.py depends on it"
    )


@pytest.mark.parametrize("name", PROTOCOL_STATE)
def test_uvicorns_protocol_still_sets_the_attribute_connections_reads(name: str) -> None:
    source = inspect.getsource(HttpToolsProtocol)
    assert re.search(rf"self\.{name}\b\s*(:[^=]+)?=", source), (
        f"uvicorn {uvicorn.__version__}: HttpToolsProtocol no longer sets self.{name}; "
        "app/api/connections.py reads it"
    )


def test_uvicorns_cycle_and_status_lines_are_still_there() -> None:
    assert "response_started" in inspect.getsource(httptools_impl.RequestResponseCycle), (
        "uvicorn: RequestResponseCycle.response_started is gone; app/api/connections.py reads it"
    )
    assert httptools_impl.STATUS_LINE[503].startswith(b"HTTP/1.1 503"), "uvicorn: STATUS_LINE"


def test_uvicorn_is_bounded_to_the_tested_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (spec,) = [d for d in project["dependencies"] if d.startswith("uvicorn")]
    assert "<" in spec, f"{spec}: bound uvicorn above (app/api/connections.py uses its internals)"
    low, high = re.findall(r"[0-9]+\.[0-9]+(?:\.[0-9]+)?", spec)
    installed = tuple(int(p) for p in uvicorn.__version__.split(".")[:2])
    assert tuple(int(p) for p in low.split(".")[:2]) <= installed
    assert installed < tuple(int(p) for p in high.split(".")[:2])
