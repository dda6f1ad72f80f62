"""Every kind of bad input is a 4xx whose message names the field and the problem."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import live_server, settings_for, write_tiny_repository

PIXELS = [0.5] * 784


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("bad-input") / "repository")
    settings = settings_for(repository, max_items_per_request=8, max_top_k=5)
    with live_server(settings) as url, httpx.Client(base_url=url) as http:
        yield http


def _error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("item", "fragments"),
    [
        (PIXELS[:-1], ("inputs[0]", "784 numbers", "[783]")),
        ([[0.5] * 28] * 27, ("inputs[0]", "[27, 28]")),
        ([[0.5] * 28] * 27 + [[0.5] * 27], ("inputs[0]", "unequal")),
        ([*PIXELS[:-1], 1.5], ("inputs[0]", "element 783", "outside the range")),
        ([*PIXELS[:-1], -0.1], ("inputs[0]", "element 783", "outside the range")),
        ([*PIXELS[:-1], "0.5"], ("inputs[0]", "found a string")),
        ([*PIXELS[:-1], True], ("inputs[0]", "found a boolean")),
        ([*PIXELS[:-1], None], ("inputs[0]", "found null")),
        ("Nakamura", ("inputs[0]", "got a string")),
        ([], ("inputs[0]",)),
    ],
)
def test_bad_image_is_422_naming_the_item(
    client: httpx.Client, item: object, fragments: tuple[str, ...]
) -> None:
    response = client.post("/v1/models/mnist-mlp/predict", json={"inputs": [PIXELS, item]})
    _error(response, 422, *(f.replace("inputs[0]", "inputs[1]") for f in fragments))


def test_number_beyond_float32_is_422_naming_the_element(client: httpx.Client) -> None:
    # 1e300 is a finite double but infinity as float32, the model's precision.
    response = client.post("/v1/models/mnist-mlp/predict", json={"inputs": [[*PIXELS[:-1], 1e300]]})
    _error(response, 422, "inputs[0]", "element 783", "not a finite number")


# Pydantic's JSON parser reads 1e999 as infinity and NaN as a number; the model takes finite
# numbers only, so both are a 422 naming the element (orjson refused them as malformed JSON).
def test_infinity_literal_is_refused_naming_the_element(client: httpx.Client) -> None:
    body = b'{"inputs": [[' + b",".join([b"0.5"] * 783 + [b"1e999"]) + b"]]}"
    response = client.post("/v1/models/mnist-mlp/predict", content=body)
    _error(response, 422, "inputs[0]", "element 783", "not a finite number")


def test_nan_literal_is_refused_naming_the_element(client: httpx.Client) -> None:
    body = b'{"inputs": [[NaN' + b", 0.5" * 783 + b"]]}"
    response = client.post("/v1/models/mnist-mlp/predict", content=body)
    _error(response, 422, "inputs[0]", "element 0", "not a finite number")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ("inputs[0]", "empty")),
        ("x" * 25, ("inputs[0]", "25 characters", "limit is 24")),
        ("Na#ka$mura", ("inputs[0]", "outside the model's alphabet", "'#'", "'$'")),
        ("山田", ("inputs[0]", "outside the model's alphabet", "'山'")),
        (42, ("inputs[0]", "expected a string", "a number")),
        (["Nakamura"], ("inputs[0]", "expected a string", "an array")),
    ],
)
def test_bad_string_is_422_naming_the_problem(
    client: httpx.Client, text: object, fragments: tuple[str, ...]
) -> None:
    _error(client.post("/v1/models/names-rnn/predict", json={"inputs": [text]}), 422, *fragments)
    _error(client.post("/v1/models/names-lm/score", json={"inputs": [text]}), 422, *fragments)


def test_accented_letters_are_folded_not_refused(client: httpx.Client) -> None:
    response = client.post("/v1/models/names-rnn/predict", json={"inputs": ["Müller"]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "status", "fragments"),
    [
        ({}, 422, ("inputs", "required")),
        ({"inputs": []}, 422, ("inputs", "empty")),
        ({"inputs": "Nakamura"}, 422, ("inputs", "array")),
        ({"inputs": ["a"] * 9}, 422, ("inputs", "9 items", "limit is 8")),
        ({"inputs": ["Kim"], "top_k": 0}, 422, ("top_k",)),
        ({"inputs": ["Kim"], "top_k": 6}, 422, ("top_k", "less than or equal to 5")),
        ({"inputs": ["Kim"], "top_k": "2"}, 422, ("top_k",)),
        ({"inputs": ["Kim"], "topk": 2}, 422, ("unknown field", "topk")),
        ([1, 2], 422, ("body", "JSON object")),
    ],
)
def test_bad_predict_envelope(
    client: httpx.Client, body: object, status: int, fragments: tuple[str, ...]
) -> None:
    _error(client.post("/v1/models/names-rnn/predict", json=body), status, *fragments)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"inputs": ["a"], "pairs": [{"context": "a", "continuation": "b"}]}, ("exactly one",)),
        ({"pairs": [{"context": "a"}]}, ("pairs[0]", "continuation")),
        ({"pairs": [{"context": "a", "continuation": ""}]}, ("pairs[0].continuation", "empty")),
        ({"pairs": [{"context": 1, "continuation": "b"}]}, ("pairs[0].context", "string")),
        ({"pairs": [{"context": "x" * 20, "continuation": "y" * 5}]}, ("pairs[0]", "25", "24")),
        ({"inputs": ["a"], "per_token": "yes"}, ("per_token",)),
    ],
)
def test_bad_score_request(client: httpx.Client, body: object, fragments: tuple[str, ...]) -> None:
    _error(client.post("/v1/models/names-lm/score", json=body), 422, *fragments)


def test_malformed_json_is_400(client: httpx.Client) -> None:
    _error(
        client.post("/v1/models/names-rnn/predict", content=b'{"inputs": ['), 400, "malformed JSON"
    )


def test_empty_body_is_400(client: httpx.Client) -> None:
    _error(client.post("/v1/models/names-rnn/predict", content=b""), 400, "empty")


def test_unknown_model_is_404_listing_the_known_ones(client: httpx.Client) -> None:
    _error(client.post("/v1/models/gpt/predict", json={"inputs": ["a"]}), 404, "'gpt'", "names-rnn")


def test_unknown_version_is_404_listing_the_versions(client: httpx.Client) -> None:
    response = client.post("/v1/models/names-rnn/versions/7/predict", json={"inputs": ["a"]})
    _error(response, 404, "no version '7'", "'1'")


def test_score_on_a_classifier_says_to_call_predict(client: httpx.Client) -> None:
    _error(client.post("/v1/models/names-rnn/score", json={"inputs": ["a"]}), 400, "/predict")


def test_predict_on_a_language_model_says_to_call_score(client: httpx.Client) -> None:
    _error(client.post("/v1/models/names-lm/predict", json={"inputs": ["a"]}), 400, "/score")


def test_bad_deadline_header_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/names-rnn/predict",
        json={"inputs": ["a"]},
        headers={"X-Request-Timeout-Ms": "-5"},
    )
    _error(response, 400, "X-Request-Timeout-Ms")


@pytest.fixture(scope="module")
def small_body_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("small-body") / "repository")
    with live_server(settings_for(repository, max_body_bytes=4096)) as url:
        yield url


def test_body_over_the_limit_is_413(small_body_url: str) -> None:
    body = {"inputs": [PIXELS, PIXELS]}
    response = httpx.post(f"{small_body_url}/v1/models/mnist-mlp/predict", json=body)
    _error(response, 413, "4096 bytes")


def test_chunked_body_over_the_limit_is_413(small_body_url: str) -> None:
    chunks = [b'{"inputs": [["', b"x" * 3000, b"x" * 3000, b'"]]}']  # no Content-Length
    url = f"{small_body_url}/v1/models/names-rnn/predict"
    _error(httpx.post(url, content=iter(chunks)), 413, "4096 bytes")
