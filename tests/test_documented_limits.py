"""Every limit the schemas enforce is in the OpenAPI document, with the server's own values; a
request at a documented limit is accepted and one past it refused, naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import live_server, settings_for, write_tiny_repository

MAX_ITEMS = 6
MAX_TOP_K = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("limits") / "repository")
    settings = settings_for(repository, max_items_per_request=MAX_ITEMS, max_top_k=MAX_TOP_K)
    with live_server(settings) as url:
        yield url, httpx.get(f"{url}/openapi.json").json()


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def _array(field: dict[str, Any]) -> dict[str, Any]:
    """The array form of a field (which may also be null)."""
    if "anyOf" in field:
        (array,) = [s for s in field["anyOf"] if s.get("type") == "array"]
        return dict(array)
    return field


def test_the_document_states_the_item_caps_and_the_top_k_range(
    server: tuple[str, dict[str, Any]],
) -> None:
    _, document = server
    predict = _schema(document, "PredictRequest")["properties"]
    assert (predict["inputs"]["minItems"], predict["inputs"]["maxItems"]) == (1, MAX_ITEMS)
    assert (predict["top_k"]["minimum"], predict["top_k"]["maximum"]) == (1, MAX_TOP_K)
    score = _schema(document, "ScoreRequest")
    for field in ("inputs", "pairs"):
        array = _array(score["properties"][field])
        assert (array["minItems"], array["maxItems"]) == (1, MAX_ITEMS)
    # Exactly one of the two.
    assert [branch["required"] for branch in score["oneOf"]] == [["inputs"], ["pairs"]]
    kserve = _schema(document, "PredictRequestV1")["properties"]["instances"]
    assert (kserve["minItems"], kserve["maxItems"]) == (1, MAX_ITEMS)
    pair = _schema(document, "ScorePair")["properties"]
    assert pair["continuation"]["minLength"] == 1
    infer = _schema(document, "InferRequestV2")["properties"]
    assert infer["inputs"]["minItems"] == 1 and infer["inputs"]["maxItems"] >= 1


def _post(url: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30)


@pytest.mark.parametrize(
    ("path", "key", "item"),
    [
        ("/v1/models/names-rnn/predict", "inputs", "Kim"),
        ("/v1/models/names-lm/score", "inputs", "Kim"),
        ("/v1/models/names-lm/score", "pairs", {"context": "K", "continuation": "im"}),
        ("/v1/models/names-rnn:predict", "instances", "Kim"),
        ("/v1/models/names-lm:predict", "instances", "Kim"),
    ],
)
def test_the_item_cap_admits_as_many_items_as_documented_and_no_more(
    server: tuple[str, dict[str, Any]], path: str, key: str, item: Any
) -> None:
    url, _ = server
    at = _post(url, path, {key: [item] * MAX_ITEMS})
    assert at.status_code == 200, at.text
    past = _post(url, path, {key: [item] * (MAX_ITEMS + 1)})
    assert 400 <= past.status_code < 500
    message = past.json()["error"]
    assert key in message and f"{MAX_ITEMS + 1} items" in message and str(MAX_ITEMS) in message


def test_top_k_admits_its_documented_range_and_nothing_outside(
    server: tuple[str, dict[str, Any]],
) -> None:
    url, _ = server
    path = "/v1/models/names-rnn/predict"
    for top_k in (1, MAX_TOP_K):
        response = _post(url, path, {"inputs": ["Kim"], "top_k": top_k})
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"][0]["top_k"]) == top_k
    for top_k in (0, MAX_TOP_K + 1, -1, 2**63):
        response = _post(url, path, {"inputs": ["Kim"], "top_k": top_k})
        assert response.status_code == 422 and "top_k" in response.json()["error"]


def test_a_continuation_of_the_documented_minimum_length_is_accepted(
    server: tuple[str, dict[str, Any]],
) -> None:
    url, _ = server
    path = "/v1/models/names-lm/score"
    ok = _post(url, path, {"pairs": [{"context": "Ki", "continuation": "m"}]})
    assert ok.status_code == 200, ok.text
    empty = _post(url, path, {"pairs": [{"context": "Ki", "continuation": ""}]})
    assert empty.status_code == 422 and "pairs[0].continuation" in empty.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": ["Kim"], "pairs": [{"context": "K", "continuation": "im"}]},
        {},
        {"inputs": None, "pairs": None},
    ],
)
def test_score_takes_exactly_one_of_inputs_and_pairs(
    server: tuple[str, dict[str, Any]], body: dict[str, Any]
) -> None:
    url, _ = server
    response = _post(url, "/v1/models/names-lm/score", body)
    assert response.status_code == 422 and "exactly one" in response.json()["error"]


def test_the_v2_tensor_cap_is_documented_and_enforced(server: tuple[str, dict[str, Any]]) -> None:
    url, document = server
    most = _schema(document, "InferRequestV2")["properties"]["inputs"]["maxItems"]
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Kim"]}
    past = _post(url, "/v2/models/names-rnn/infer", {"inputs": [tensor] * (most + 1)})
    assert past.status_code == 400 and f"{most + 1} items" in past.json()["error"]
    rows = _post(
        url,
        "/v2/models/names-rnn/infer",
        {"inputs": [{**tensor, "shape": [MAX_ITEMS + 1], "data": ["Kim"] * (MAX_ITEMS + 1)}]},
    )
    assert rows.status_code == 400 and f"the limit is {MAX_ITEMS}" in rows.json()["error"]
