"""The OpenAPI document, made from the same endpoint table that `app.api.router` serves: each
operation's path parameters, body, answer and the error statuses it can really give."""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.api.router import Endpoint
from app.api.v1.schemas import ErrorResponse

REF = "#/components/schemas/{model}"
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "name": {
        "description": "The model's name.",
        "examples": ["mnist-mlp", "names-rnn", "names-lm"],
    },
    "version": {"description": "A version of the model (a positive integer).", "examples": ["1"]},
}
BINARY_BODY = (
    "With the binary tensor data extension: the JSON request, then each input's binary data in "
    "the order of `inputs`; the Inference-Header-Content-Length header gives the JSON's length."
)
# One server-sent event (the schema describes each event of the stream).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {
            "type": "string",
            "description": "A chunk in the answer's shape, as JSON; `[DONE]` ends the stream.",
        },
        "event": {"type": "string"},
    },
    "required": ["data"],
}
STREAM_ANSWER = (
    "With stream: server-sent events, `data: <a chunk in the response's shape>` per generated "
    "token, then `data: [DONE]`."
)
BINARY_ANSWER = (
    "With binary outputs: the JSON response (Inference-Header-Content-Length bytes), then each "
    "binary output in order."
)
HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_LENGTH_PARAMETER: dict[str, Any] = {
    "name": HEADER_LENGTH,
    "in": "header",
    "required": False,
    "description": "Binary tensor data extension: the length in bytes of the JSON request at the "
    "start of the body; the inputs' binary data follows it (each input's "
    "parameters.binary_data_size bytes, in the order of `inputs`). Without it the whole body is "
    "JSON. With Content-Encoding, the length of the decompressed JSON.",
    "schema": {"type": "integer", "minimum": 0},
}


def openapi_document(
    endpoints: list[Endpoint], title: str, version: str, description: str
) -> dict[str, Any]:
    components = _components(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": components},
    }


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": list(endpoint.tags),
        "summary": endpoint.summary,
        "operationId": _operation_id(endpoint),
        "responses": _responses(endpoint),
    }
    names = re.findall(r"\{(\w+)\}", endpoint.path)
    parameters = [_path_parameter(name) for name in names]
    if endpoint.docs.get("binary"):
        parameters.append(HEADER_LENGTH_PARAMETER)
    for name, description in endpoint.docs.get("query", {}).items():
        schema = {"type": "string", "title": name.title(), "description": description}
        parameters.append(
            {"name": name, "in": "query", "required": False, "description": description,
             "schema": schema}
        )  # fmt: skip
    if parameters:
        operation["parameters"] = parameters
    if endpoint.request_schema is not None:
        operation["requestBody"] = _request_body(endpoint)
    return operation


def _operation_id(endpoint: Endpoint) -> str:
    # FastAPI's scheme, so that ids (and the clients generated from them) stay as they were.
    name = endpoint.operation or endpoint.handler.__name__
    return re.sub(r"\W", "_", f"{name}{endpoint.path}") + "_" + endpoint.method.lower()


def _path_parameter(name: str) -> dict[str, Any]:
    documented = PATH_PARAMETERS[name]
    schema = {"type": "string", "title": name.title(), **documented}
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": documented["description"],
        "schema": schema,
    }


def _request_body(endpoint: Endpoint) -> dict[str, Any]:
    assert endpoint.request_schema is not None
    content: dict[str, Any] = {"application/json": {"schema": _schema_of(endpoint.request_schema)}}
    body: dict[str, Any] = {"required": endpoint.request_required, "content": content}
    if endpoint.docs.get("binary"):
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        body["description"] = BINARY_BODY
    return body


def _responses(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.docs.get("produces") == "text/plain":
        content: dict[str, Any] = {"text/plain": {"schema": {"type": "string"}}}
    else:
        content = {"application/json": {"schema": _schema_of(endpoint.response_schema)}}
    ok: dict[str, Any] = {"description": "Successful Response", "content": content}
    if endpoint.docs.get("binary"):
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        ok["description"] = f"Successful Response. {BINARY_ANSWER}"
        ok["headers"] = {
            HEADER_LENGTH: {
                "description": "Present when binary outputs follow the JSON: its length in bytes.",
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    if endpoint.docs.get("stream"):
        content["text/event-stream"] = {"schema": SSE_EVENT}
        ok["description"] = f"Successful Response. {STREAM_ANSWER}"
    responses: dict[str, Any] = {"200": ok}
    error = {
        "application/json": {"schema": _schema_of(endpoint.docs.get("error_schema", ErrorResponse))}
    }
    for status in sorted(endpoint.errors):
        responses[str(status)] = {"description": endpoint.errors[status], "content": error}
    return responses


def _schema_of(annotation: Any) -> dict[str, Any]:
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return {"type": "array", "items": _schema_of(item)}
    return {"$ref": REF.format(model=annotation.__name__)}


def _components(endpoints: list[Endpoint]) -> dict[str, Any]:
    models: dict[type[BaseModel], None] = {ErrorResponse: None}
    for endpoint in endpoints:
        error = endpoint.docs.get("error_schema")
        for annotation in (endpoint.request_schema, endpoint.response_schema, error):
            while get_origin(annotation) is list:
                (annotation,) = get_args(annotation)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                models[annotation] = None
    _, schemas = models_json_schema([(model, "validation") for model in models], ref_template=REF)
    defs: dict[str, Any] = schemas.get("$defs", {})
    return defs
