"""The OpenAPI document is FastAPI's, made from the routes; what this adds: the request bodies,
which the routes validate from the bytes themselves (their schemas go in through `openapi_extra`,
as FastAPI documents for that), and the error answers in batchserve's shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.api.v1.schemas import ErrorResponse

REF = "#/components/schemas/{model}"
BINARY_BODY = (
    "With the binary tensor data extension: the JSON request, then each input's binary data in "
    "the order of `inputs`; the Inference-Header-Content-Length header gives the JSON's length."
)


class BodySchemas:
    """The request bodies of an app's operations, by schema name."""

    def __init__(self) -> None:
        self.models: dict[str, type[BaseModel]] = {}

    def __call__(
        self, model: type[BaseModel], required: bool = True, binary: bool = False
    ) -> dict[str, Any]:
        """The operation's `openapi_extra`: its request body is `model` as JSON."""
        name = model.__name__
        self.models[name] = model
        content: dict[str, Any] = {"application/json": {"schema": {"$ref": REF.format(model=name)}}}
        body: dict[str, Any] = {"required": required, "content": content}
        if binary:
            content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
            body["description"] = BINARY_BODY
        return {"requestBody": body}


def errors(
    table: Mapping[int, str], schema: type[BaseModel] = ErrorResponse
) -> dict[int | str, dict[str, Any]]:
    """FastAPI's `responses` for the error statuses an operation can give."""
    return {status: {"model": schema, "description": text} for status, text in table.items()}


def openapi_document(
    app: FastAPI, bodies: BodySchemas, title: str, version: str, description: str
) -> dict[str, Any]:
    document = get_openapi(
        title=title,
        version=version,
        description=description,
        routes=app.routes,
        openapi_version="3.1.0",
    )
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    if bodies.models:
        pairs = [(model, "validation") for model in bodies.models.values()]
        _, defs = models_json_schema(pairs, ref_template=REF)  # type: ignore[arg-type]
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)
    # A parameter that does not fit its type is a 400 in batchserve's shape (documented as such),
    # never FastAPI's 422 HTTPValidationError.
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document
