"""The OpenAPI document as tools read it: valid OpenAPI 3.1 (openapi-spec-validator), the binary
infer request described well enough for a generated client to send it, GET operations that
document only answers they can give, and examples that are real answers of the shipped models."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from app.main import create_app
from tests.conftest import SHIPPED, settings_for

INFER_PATHS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document with every operation in it (the admin key turns the repository ones on)."""
    spec: dict[str, Any] = create_app(settings_for(SHIPPED, admin_api_key="k")).openapi()
    return spec


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in OpenAPIV31SpecValidator(document).iter_errors()
    ]
    assert errors == []


def test_the_served_document_is_the_validated_one(shipped_server: str) -> None:
    served = httpx.get(f"{shipped_server}/openapi.json").json()
    assert list(OpenAPIV31SpecValidator(served).iter_errors()) == []


@pytest.mark.parametrize("path", INFER_PATHS)
def test_the_binary_infer_request_declares_its_header_and_body_layout(
    document: dict[str, Any], path: str
) -> None:
    operation = document["paths"][path]["post"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert set(headers) == {"Inference-Header-Content-Length", "X-Request-Timeout-Ms"}
    header = headers["Inference-Header-Content-Length"]
    assert not header["required"]
    # ASCII digits (a typed header parameter: its text, with the pattern it must match).
    (digits,) = [s for s in header["schema"]["anyOf"] if s["type"] == "string"]
    assert digits["pattern"] == "^[0-9]{1,18}$"
    body = operation["requestBody"]
    assert set(body["content"]) == {"application/json", "application/octet-stream"}
    assert (
        "binary_data_size" in header["description"] and "order of `inputs`" in body["description"]
    )
    answer = operation["responses"]["200"]
    assert "Inference-Header-Content-Length" in answer["headers"]
    assert "application/octet-stream" in answer["content"]


def _has_query(operation: dict[str, Any]) -> bool:
    return any(p["in"] == "query" for p in operation.get("parameters", []))


def test_get_operations_document_no_answer_that_needs_a_body_or_a_deadline(
    document: dict[str, Any],
) -> None:
    wrong = [
        f"GET {path}: {status}"
        for method, path, operation in _operations(document)
        if method == "GET"
        for status in operation["responses"]
        if status in {"413", "415", "422", "504"}
        # 400s only where a GET has something to get wrong: readiness' "known but not ready", or
        # a query parameter.
        or (status == "400" and not path.endswith("/ready") and not _has_query(operation))
    ]
    assert wrong == []


def test_the_new_operations_are_documented(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for path in (
        "/v2/models/{name}/config",
        "/v2/models/{name}/versions/{version}/config",
        "/v2/models/stats",
        "/v2/models/{name}/stats",
        "/v2/models/{name}/versions/{version}/stats",
        "/v1/models/{name}:predict",
        "/",
    ):
        assert path in paths, path


def test_the_predict_example_is_the_shipped_models_real_answer(
    document: dict[str, Any], shipped_server: str
) -> None:
    schemas = document["components"]["schemas"]
    request = schemas["PredictRequest"]["examples"][0]
    (example,) = schemas["PredictResponse"]["examples"]
    answer = httpx.post(f"{shipped_server}/v1/models/{example['model']}/predict", json=request)
    real = answer.json()["predictions"]
    assert len(example["predictions"]) == len(real)
    for shown, given in zip(example["predictions"], real, strict=True):
        assert [(t["label"], t["index"]) for t in shown["top_k"]] == [
            (t["label"], t["index"]) for t in given["top_k"]
        ]
        assert abs(shown["probability"] - given["probability"]) < 1e-3
