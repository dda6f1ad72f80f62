"""One endpoint table serves and documents every operation: what /openapi.json lists is exactly
what answers, under a mount point (root_path) as well as at the root."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import live_server, settings_for, write_tiny_repository

ADMIN_KEY = "routing-admin-key"
PARAMETERS = {"{name}": "names-rnn", "{version}": "1"}


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server mounted at /api behind a proxy: the proxy strips the prefix from the requests it
    passes on (as these tests send them), and the server is told its root_path so that the links
    it gives out (the docs page's) carry the prefix again."""
    repository = write_tiny_repository(tmp_path_factory.mktemp("repository"))
    settings = settings_for(repository, admin_api_key=ADMIN_KEY)
    with live_server(settings, root_path="/api") as url:
        yield url


def _concrete(path: str) -> str:
    for template, value in PARAMETERS.items():
        path = path.replace(template, value)
    return path


def test_every_documented_operation_is_served_under_the_mount_point(mounted: str) -> None:
    paths = httpx.get(f"{mounted}/openapi.json").json()["paths"]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for path, operations in paths.items():
        for method in operations:
            if path.endswith("/unload"):
                continue  # it would take the model away from the next calls
            response = httpx.request(
                method, f"{mounted}{_concrete(path)}", headers=headers, json={}
            )
            # Routed: whatever the operation thinks of an empty body, the path itself is known.
            assert response.status_code not in (404, 405), (method, path, response.text)


def test_predict_is_served_under_the_mount_point(mounted: str) -> None:
    response = httpx.post(
        f"{mounted}/v1/models/names-rnn/predict", json={"inputs": ["Nakamura"], "top_k": 2}
    )
    assert response.status_code == 200
    (prediction,) = response.json()["predictions"]
    assert prediction["top_k"][0]["label"] == prediction["label"]
    assert {p["label"] for p in prediction["top_k"]} < {"JP", "PL", "IT"}  # the tiny model's


def test_the_docs_page_points_at_the_mounted_openapi_document(mounted: str) -> None:
    page = httpx.get(f"{mounted}/docs").text
    assert "/api/openapi.json" in page and "/api/static/docs/swagger-ui-bundle.js" in page


def test_an_undocumented_path_is_a_json_404(mounted: str) -> None:
    response = httpx.post(f"{mounted}/v1/models/names-rnn/classify", json={})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_a_documented_path_with_the_wrong_method_is_a_405_naming_the_allowed_one(
    mounted: str,
) -> None:
    response = httpx.get(f"{mounted}/v1/models/names-rnn/predict")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST" and "POST" in response.json()["error"]


def test_the_client_library_loads_without_fastapi_or_torch() -> None:
    code = (
        "import sys, app.client; "
        "loaded = [m for m in ('fastapi', 'starlette', 'torch') if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
