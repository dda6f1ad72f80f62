"""The wrong JSON type anywhere in a body (an object, an array, a boolean, null or nesting where a
number is expected; a number where a string is) is a 4xx naming the field, on every operation
that takes a body: the schemas refuse it before any model sees it. Among them the 500 that an
object among 784 numbers used to give."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import live_server, settings_for, write_tiny_repository

ADMIN_KEY = "confusion-admin-key"
PIXELS: list[Any] = [0.5] * 784
ROWS: list[Any] = [[0.5] * 28 for _ in range(28)]
NOT_NUMBERS: list[Any] = [{}, [], [0.5], True, False, None, "0.5", {"a": 1}]
NOT_STRINGS: list[Any] = [1, 1.5, {}, [], ["Kim"], True, None]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("confusion") / "repository")
    with live_server(settings_for(repository, admin_api_key=ADMIN_KEY)) as base:
        yield base


def _refused(response: httpx.Response, *fields: str) -> str:
    """A 4xx (never a 5xx) whose message names each of `fields`."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    body = response.json()
    message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    for field in fields:
        assert field in message, (field, message)
    return str(message)


def _post(url: str, path: str, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    return httpx.post(url + path, content=orjson.dumps(body), headers=headers, timeout=30)


# -- the 500 of the issue and its siblings -------------------------------------------------------


def test_784_objects_are_a_422_naming_the_first_element(url: str) -> None:
    body: dict[str, Any] = {"inputs": [[{}] * 784]}
    response = _post(url, "/v1/models/mnist-mlp/predict", body)
    assert response.status_code == 422
    _refused(response, "inputs[0][0]", "expected a number", "found an object")


def test_28x28_objects_are_a_422_naming_the_first_element(url: str) -> None:
    response = _post(url, "/v1/models/mnist-mlp/predict", {"inputs": [[[{}] * 28] * 28]})
    assert response.status_code == 422
    _refused(response, "inputs[0][0][0]", "found an object")


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
@pytest.mark.parametrize("position", [0, 400, 783])
def test_one_bad_value_among_784_numbers_is_a_422_naming_it(
    url: str, value: Any, position: int
) -> None:
    item = list(PIXELS)
    item[position] = value
    response = _post(url, "/v1/models/mnist-mlp/predict", {"inputs": [PIXELS, item]})
    assert response.status_code == 422
    # An array or a string first makes the item read as rows, or as no form at all.
    leads = position == 0 and isinstance(value, list | str)
    _refused(response, "inputs[1]" if leads else f"inputs[1][{position}]")


@pytest.mark.parametrize("row", [{}, None, True, "row", 0.5, [{}] * 28, [None] * 28])
def test_one_bad_row_of_the_28x28_form_is_a_422_naming_it(url: str, row: Any) -> None:
    item = [list(r) for r in ROWS]
    item[5] = row
    response = _post(url, "/v1/models/mnist-mlp/predict", {"inputs": [item]})
    assert response.status_code == 422
    _refused(response, "inputs[0][5]")


def test_nesting_deeper_than_rows_is_a_422(url: str) -> None:
    response = _post(url, "/v1/models/mnist-mlp/predict", {"inputs": [[[[0.5]] * 28] * 28]})
    _refused(response, "inputs[0][0][0]")


@pytest.mark.parametrize("value", [{}, [], True, None, "2", 1.5, [2]], ids=repr)
def test_top_k_of_the_wrong_type_is_a_422_naming_it(url: str, value: Any) -> None:
    response = _post(url, "/v1/models/names-rnn/predict", {"inputs": ["Kim"], "top_k": value})
    assert response.status_code == 422
    _refused(response, "top_k")


@pytest.mark.parametrize("value", [{}, 5, True, None, "Kim"], ids=repr)
def test_inputs_that_are_not_an_array_are_a_422(url: str, value: Any) -> None:
    response = _post(url, "/v1/models/names-rnn/predict", {"inputs": value})
    assert response.status_code == 422
    _refused(response, "inputs")


# -- strings where strings are expected ---------------------------------------------------------


@pytest.mark.parametrize("value", NOT_STRINGS, ids=repr)
def test_a_score_input_that_is_not_a_string_is_a_422_naming_it(url: str, value: Any) -> None:
    response = _post(url, "/v1/models/names-lm/score", {"inputs": ["Kim", value]})
    assert response.status_code == 422
    _refused(response, "inputs[1]")


@pytest.mark.parametrize("value", NOT_STRINGS, ids=repr)
@pytest.mark.parametrize("field", ["context", "continuation"])
def test_a_pair_field_that_is_not_a_string_is_a_422_naming_it(
    url: str, field: str, value: Any
) -> None:
    pair = {"context": "Sm", "continuation": "ith", field: value}
    response = _post(url, "/v1/models/names-lm/score", {"pairs": [pair]})
    assert response.status_code == 422
    _refused(response, f"pairs[0].{field}")


@pytest.mark.parametrize("value", [1, {}, [], "yes", None], ids=repr)
def test_per_token_of_the_wrong_type_is_a_422(url: str, value: Any) -> None:
    response = _post(url, "/v1/models/names-lm/score", {"inputs": ["Kim"], "per_token": value})
    if value is None:  # null is not a boolean either
        assert response.status_code == 422
    _refused(response, "per_token")


@pytest.mark.parametrize("value", [[{}] * 3, [None], [True], [1.5]], ids=repr)
def test_predict_text_items_of_the_wrong_type_are_a_422(url: str, value: Any) -> None:
    response = _post(url, "/v1/models/names-rnn/predict", {"inputs": value})
    _refused(response, "inputs[0]")


# -- KServe V1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models/mnist-mlp:predict", "/v1/models/names-lm:predict"])
@pytest.mark.parametrize(
    "instance", [{}, None, True, 5, [{}] * 784, [*PIXELS[:-1], None]], ids=repr
)
def test_kserve_instances_of_the_wrong_type_are_a_400_naming_them(
    url: str, path: str, instance: Any
) -> None:
    response = _post(url, path, {"instances": [instance]})
    assert response.status_code == 400
    _refused(response, "instances[0]")


@pytest.mark.parametrize("value", [{}, 5, None, "Kim", True], ids=repr)
def test_kserve_instances_that_are_not_an_array_are_a_400(url: str, value: Any) -> None:
    _refused(_post(url, "/v1/models/names-rnn:predict", {"instances": value}), "instances")


# -- /v2 ---------------------------------------------------------------------------------------


def _tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Kim"], **fields}


@pytest.mark.parametrize(
    ("tensor", "fields"),
    [
        ({}, ("inputs[0].name", "field required")),
        (_tensor(name=5), ("inputs[0].name", "expected a string")),
        (_tensor(name=None), ("inputs[0].name",)),
        (_tensor(datatype=5), ("inputs[0].datatype",)),
        (_tensor(shape=["1"]), ("inputs[0].shape[0]", "expected an integer")),
        (_tensor(shape=[1.5]), ("inputs[0].shape[0]",)),
        (_tensor(shape=[True]), ("inputs[0].shape[0]",)),
        (_tensor(shape=[-1]), ("inputs[0].shape[0]",)),
        (_tensor(shape={}), ("inputs[0].shape",)),
        (_tensor(data={}), ("inputs[0].data",)),
        (_tensor(data="Kim"), ("inputs[0].data",)),
        (_tensor(parameters=[]), ("inputs[0].parameters",)),
        (5, ("inputs[0]", "JSON object")),
        (None, ("inputs[0]",)),
    ],
    ids=repr,
)
def test_v2_input_tensors_of_the_wrong_type_are_a_400_naming_the_field(
    url: str, tensor: Any, fields: tuple[str, ...]
) -> None:
    response = _post(url, "/v2/models/names-rnn/infer", {"inputs": [tensor]})
    assert response.status_code == 400
    message = _refused(response, *fields)
    assert "'None'" not in message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": {}}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": [_tensor()], "id": 5}, "id"),
        ({"inputs": [_tensor()], "outputs": [{"name": 5}]}, "outputs[0].name"),
        ({"inputs": [_tensor()], "outputs": [{}]}, "outputs[0].name"),
        ({"inputs": [_tensor()], "outputs": {}}, "outputs"),
        ({"inputs": [_tensor()], "parameters": 5}, "parameters"),
    ],
    ids=repr,
)
def test_v2_envelopes_of_the_wrong_type_are_a_400_naming_the_field(
    url: str, body: Any, field: str
) -> None:
    response = _post(url, "/v2/models/names-rnn/infer", body)
    assert response.status_code == 400
    _refused(response, field)


@pytest.mark.parametrize("value", [{}, [0.5] * 783 + [{}], [True] * 784, [None] * 784], ids=repr)
def test_v2_numeric_data_of_the_wrong_type_is_a_400(url: str, value: Any) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 784], "data": value}
    response = _post(url, "/v2/models/mnist-mlp/infer", {"inputs": [tensor]})
    assert response.status_code == 400
    _refused(response, "input")


# -- completions and the tokenizer --------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", 5),
        ("prompt", {}),
        ("prompt", None),
        ("prompt", [{}]),
        ("prompt", [True]),
        ("max_tokens", "5"),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("n", {}),
        ("temperature", "hot"),
        ("top_k", []),
        ("seed", "1"),
        ("stop", 5),
        ("stream", "yes"),
        ("echo", 1),
        ("logprobs", "1"),
        ("stream_options", 5),
        ("user", 5),
    ],
    ids=repr,
)
def test_completion_fields_of_the_wrong_type_are_a_400_naming_them(
    url: str, field: str, value: Any
) -> None:
    body = {"model": "names-lm", "prompt": "Sm", "max_tokens": 2, field: value}
    response = _post(url, "/v1/completions", body)
    assert response.status_code == 400
    _refused(response, field)
    assert response.json()["error"]["param"] == field


@pytest.mark.parametrize("value", NOT_STRINGS, ids=repr)
def test_tokenize_prompts_of_the_wrong_type_are_a_400_about_text_only(url: str, value: Any) -> None:
    response = _post(url, "/tokenize", {"prompt": value})
    assert response.status_code == 400
    message = _refused(response, "prompt")
    assert "token ids" not in message and "list of texts" not in message  # completions' shapes


@pytest.mark.parametrize("value", [{}, "Kim", [1.5], ["a"], [None], [True], None], ids=repr)
def test_detokenize_tokens_of_the_wrong_type_are_a_400(url: str, value: Any) -> None:
    _refused(_post(url, "/detokenize", {"tokens": value}), "tokens")


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
def test_a_tokenizer_model_of_the_wrong_type_is_a_400(url: str, path: str) -> None:
    body = {"prompt": "Kim", "tokens": [1], "model": 5}
    body.pop("tokens" if path == "/tokenize" else "prompt")
    _refused(_post(url, path, body), "model")


# -- the model repository -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, "yes", {}, [], None], ids=repr)
def test_repository_index_ready_of_the_wrong_type_is_a_400(url: str, value: Any) -> None:
    response = _post(url, "/v2/repository/index", {"ready": value})
    assert response.status_code == 400
    _refused(response, "ready")


@pytest.mark.parametrize("value", [1, "x", [], True], ids=repr)
@pytest.mark.parametrize("action", ["load", "unload"])
def test_repository_parameters_of_the_wrong_type_are_a_400(
    url: str, action: str, value: Any
) -> None:
    response = _post(url, f"/v2/repository/models/no-such-model/{action}", {"parameters": value})
    assert response.status_code == 400
    _refused(response, "parameters")


@pytest.mark.parametrize("path", ["/v2/repository/index", "/v2/repository/models/x/load"])
def test_repository_bodies_that_are_not_objects_are_a_400(url: str, path: str) -> None:
    _refused(_post(url, path, [1, 2]), "body", "JSON object")


# -- what a message repeats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/names-rnn/predict", {"inputs": ["Kim"]}),
        ("/v1/models/names-lm/score", {"inputs": ["Kim"]}),
        ("/v1/models/names-rnn:predict", {"instances": ["Kim"]}),
        ("/v1/completions", {"model": "names-lm", "prompt": "Sm"}),
        ("/tokenize", {"prompt": "Sm"}),
        ("/v2/repository/index", {}),
    ],
)
def test_an_unknown_field_of_a_megabyte_is_not_echoed_whole(
    url: str, path: str, body: dict[str, Any]
) -> None:
    name = "k" * (1 << 20)
    response = _post(url, path, {**body, name: 1})
    message = _refused(response, "kkkk", "unknown field")
    assert len(response.content) < 1000, len(response.content)
    assert len(message) < 500


def test_two_gzip_members_are_one_body(url: str) -> None:
    """Two gzip members one after the other are valid gzip (RFC 1952): `cat a.gz b.gz`."""
    raw = orjson.dumps({"inputs": ["Kim", "Nakamura"]})
    half = len(raw) // 2
    content = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = httpx.post(f"{url}/v1/models/names-rnn/predict", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2


def test_deflate_data_after_its_stream_is_still_refused(url: str) -> None:
    import zlib

    raw = orjson.dumps({"inputs": ["Kim"]})
    content = zlib.compress(raw) + zlib.compress(raw)
    headers = {"Content-Encoding": "deflate", "Content-Type": "application/json"}
    response = httpx.post(f"{url}/v1/models/names-rnn/predict", content=content, headers=headers)
    assert response.status_code == 400 and "after the end" in response.json()["error"]


def test_the_server_is_healthy_after_all_that(url: str) -> None:
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    response = _post(url, "/v1/models/mnist-mlp/predict", {"inputs": [PIXELS]})
    assert response.status_code == 200
