"""API keys: every inference and metadata operation needs one; health, metrics and docs stay open;
the repository control routes need the admin key and do not exist without it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import live_server, settings_for, write_tiny_repository

KEY, ADMIN_KEY = "user-key-1", "admin-key-1"
OPEN_PATHS = (
    "/",
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
)
BODIES = {
    "predict": {"inputs": ["Kim"]},
    "score": {"inputs": ["Kim"]},
    "infer": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Kim"]}]},
    "completions": {"model": "names-lm", "prompt": "Ki", "max_tokens": 2},
    "tokenize": {"prompt": "Kim"},
    "detokenize": {"tokens": [1, 2]},
    "names-rnn:predict": {"instances": ["Kim"]},
    "1:predict": {"instances": ["Kim"]},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository: Path = write_tiny_repository(tmp_path_factory.mktemp("auth") / "repository")
    settings = settings_for(repository, api_keys=f"{KEY},other-key", admin_api_key=ADMIN_KEY)
    with live_server(settings) as url:
        yield url


def _protected_operations(url: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{url}/openapi.json").json()
    operations = []
    for path, methods in spec["paths"].items():
        if path in OPEN_PATHS or path.startswith("/v2/repository"):
            continue
        concrete = path.replace("{name}", "names-rnn").replace("{version}", "1")
        if path.endswith("/score"):
            concrete = concrete.replace("names-rnn", "names-lm")
        operations += [(method.upper(), concrete) for method in methods]
    return operations


def _call(url: str, method: str, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = BODIES.get(path.rsplit("/", 1)[-1]) if method == "POST" else None
    return httpx.request(method, f"{url}{path}", json=body, headers=headers)


def test_every_protected_operation_is_listed(server: str) -> None:
    operations = _protected_operations(server)
    assert ("POST", "/v1/models/names-rnn/predict") in operations
    assert ("POST", "/v2/models/names-rnn/infer") in operations
    assert ("GET", "/v1/models") in operations and ("GET", "/v2/models/names-rnn") in operations


@pytest.mark.parametrize("key", [None, "wrong-key", ADMIN_KEY], ids=["missing", "wrong", "admin"])
def test_protected_operations_refuse_a_missing_or_wrong_key_with_401(
    server: str, key: str | None
) -> None:
    for method, path in _protected_operations(server):
        response = _call(server, method, path, key)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        error = response.json()["error"]  # OpenAI's shape on the completions API
        assert "Authorization" in (error["message"] if isinstance(error, dict) else error)
        assert not key or key not in response.text  # a refused key is never echoed


def test_protected_operations_serve_with_any_configured_key(server: str) -> None:
    for key in (KEY, "other-key"):
        for method, path in _protected_operations(server):
            response = _call(server, method, path, key)
            assert response.status_code == 200, (method, path, response.text)


def test_health_metrics_and_docs_stay_open(server: str) -> None:
    for path in OPEN_PATHS:
        assert httpx.get(f"{server}{path}").status_code == 200, path


@pytest.mark.parametrize("key", [None, "wrong-key", KEY], ids=["missing", "wrong", "user-key"])
def test_repository_control_needs_the_admin_key(server: str, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{server}/v2/repository/index", headers=headers)
    assert response.status_code == 401
    admin = httpx.post(
        f"{server}/v2/repository/index", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert admin.status_code == 200


def test_keys_never_reach_the_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    settings = settings_for(repository, api_keys=KEY, access_log=True)
    with caplog.at_level("INFO"), live_server(settings) as url:
        httpx.post(
            f"{url}/v1/models/names-rnn/predict",
            json=BODIES["predict"],
            headers={"Authorization": f"Bearer {KEY}"},
        )
        httpx.post(
            f"{url}/v1/models/names-rnn/predict",
            json=BODIES["predict"],
            headers={"Authorization": "Bearer guess"},
        )
    assert any('"status":200' in r.getMessage() for r in caplog.records)
    assert not any(KEY in r.getMessage() or "guess" in r.getMessage() for r in caplog.records)
