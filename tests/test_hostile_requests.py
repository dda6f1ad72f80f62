"""Requests an attacker would send to a live server: digits that are not ASCII digits, inputs whose
cost is in the transform rather than the body size, paths with encoded slashes, odd methods,
headers and deadlines. Each gets a clear 4xx (or the right answer), never a 500."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.conftest import live_server, settings_for, write_tiny_repository

ADMIN_KEY = "hostile-admin-key"
ODD_DIGITS = [
    "\u00b2",
    "\u0661\u0662",
    "+5",
    "-5",
    "0x10",
    "1e3",
    "1_000",
    "5 5",
    "Infinity",
    "NaN",
]
PIXELS = [0.5] * 784


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("hostile") / "repository")
    with live_server(settings_for(repository, admin_api_key=ADMIN_KEY)) as base:
        yield base


def _error(response: httpx.Response, status: int, *fragments: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body: dict[str, str] = response.json()
    for fragment in fragments:
        assert fragment in body["error"], body
    return body


def _text_tensor(texts: list[str]) -> dict[str, object]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


# -- 1. digits that are not digits -------------------------------------------------------------


@pytest.mark.parametrize("value", ODD_DIGITS)
def test_inference_header_content_length_takes_ascii_digits_only(url: str, value: str) -> None:
    body = orjson.dumps(_text_tensor(["Kim"]))
    response = httpx.post(
        f"{url}/v2/models/names-rnn/infer",
        content=body,
        headers={b"Inference-Header-Content-Length": value.encode()},
    )
    _error(response, 400, "Inference-Header-Content-Length", "ASCII digits")


@pytest.mark.parametrize("value", [*ODD_DIGITS, "0", "0.0"])
def test_the_deadline_header_takes_positive_ascii_decimals_only(url: str, value: str) -> None:
    response = httpx.post(
        f"{url}/v1/models/names-rnn/predict",
        json={"inputs": ["Kim"]},
        headers={b"X-Request-Timeout-Ms": value.encode()},
    )
    _error(response, 400, "X-Request-Timeout-Ms")


# -- 2. inputs whose cost is in the transform -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["\ufdfa" * 1_000_000, "a" * 4_000_000, "\u0301" * 2_000_000, "Smith" * 100_000],
    ids=["ligature-that-decomposes", "long-ascii", "combining-marks", "repeated-name"],
)
@pytest.mark.parametrize("where", ["predict", "score", "pairs", "v2"])
def test_a_huge_string_is_refused_by_its_length_before_it_is_normalized(
    url: str, text: str, where: str
) -> None:
    if where == "predict":
        response = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": [text]})
    elif where == "score":
        response = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": [text]})
    elif where == "pairs":
        pair = {"context": "Sm", "continuation": text}
        response = httpx.post(f"{url}/v1/models/names-lm/score", json={"pairs": [pair]})
    else:
        response = httpx.post(f"{url}/v2/models/names-lm/infer", json=_text_tensor([text]))
    expected = 400 if where == "v2" else 422
    _error(response, expected, f"has {len(text)} characters", "the limit is 24")


def test_a_name_with_decomposed_accents_still_fits(url: str) -> None:
    # 24 letters, each followed by a combining mark: 48 characters before folding to ASCII.
    name = "e\u0301" * 24
    response = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": [name]})
    assert response.status_code == 200


def test_a_binary_bytes_tensor_with_more_elements_than_its_shape_is_refused(url: str) -> None:
    payload = struct.pack("<I", 3) + b"Kim" + b"\x00\x00\x00\x00" * 4_000_000
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(payload)},
                }
            ]
        }
    )
    response = httpx.post(
        f"{url}/v2/models/names-lm/infer",
        content=header + payload,
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=60,
    )
    _error(response, 400, "more than the 1 elements")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/mnist-mlp/predict", b'{"inputs": [' + b",".join([b"[0]"] * 2_000_000) + b"]}"),
        ("/v1/models/names-rnn/predict", orjson.dumps({"inputs": ["a"] * 2_000_000})),
        ("/v1/models/names-lm/score", orjson.dumps({"pairs": [{}] * 1_000_000})),
        ("/v2/models/mnist-mlp/infer", orjson.dumps({"inputs": [{"data": [0] * 2_000_000}]})),
    ],
    ids=["tiny-arrays", "tiny-strings", "empty-pairs", "v2-numbers"],
)
def test_a_body_of_millions_of_tiny_values_is_refused_before_it_is_parsed(
    url: str, path: str, body: bytes
) -> None:
    response = httpx.post(url + path, content=body, timeout=60)
    _error(response, 413, "JSON values", "at most")


def test_an_image_with_the_wrong_number_of_rows_is_refused_before_its_elements(url: str) -> None:
    rows = [[0.5]] * 100_000
    response = httpx.post(f"{url}/v1/models/mnist-mlp/predict", json={"inputs": [rows]})
    _error(response, 422, "inputs[0]", "got shape [100000, 1]")


# -- 8. HTTP semantics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/models/names-rnn%2Fpredict", 405),  # /v1/models/{name}: GET only
        ("GET", "/v1/models/names-rnn%2Fpredict", 404),
        ("POST", "/v1/models/names-rnn%2fpredict", 405),
        ("POST", "/v2%2Frepository/index", 404),
        ("POST", "/v2/repository%2Findex", 404),
        ("GET", "/v1%2Fmodels", 404),
        ("POST", "/v2/models/names-lm%2Finfer", 405),
    ],
)
def test_an_encoded_slash_stays_inside_its_path_segment(
    url: str, method: str, path: str, status: int
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = httpx.request(method, url + path, json={"inputs": ["Kim"]}, headers=headers)
    assert response.status_code == status, response.text
    if status == 404 and "models" in path and "%2F" in path.split("models", 1)[1]:
        assert response.json()["code"] == "model_not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v1/models",
        "/v1/models/names-rnn",
        "/v2/models/names-rnn",
        "/v2/models/names-rnn/ready",
        "/metrics",
    ],
)
def test_head_is_answered_like_get_without_a_body(url: str, path: str) -> None:
    get, head = httpx.get(url + path), httpx.head(url + path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # the metrics change between the two scrapes
        assert head.headers["content-length"] == str(len(get.content))


def test_head_on_a_post_endpoint_is_a_405(url: str) -> None:
    response = httpx.head(f"{url}/v1/models/names-rnn/predict")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


@pytest.mark.parametrize("timeout_ms", ["0.001", "0.01", "0.000001"])
def test_a_deadline_no_batch_can_meet_is_a_504_of_its_own_kind(url: str, timeout_ms: str) -> None:
    httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": ["Kim"]})  # one batch ran
    response = httpx.post(
        f"{url}/v1/models/names-rnn/predict",
        json={"inputs": ["Kim"]},
        headers={"X-Request-Timeout-Ms": timeout_ms},
    )
    body = _error(response, 504, "deadline")
    assert body["code"] == "deadline_too_short" and "retry-after" not in response.headers
    metrics = httpx.get(f"{url}/metrics").text
    reason = 'batchserve_rejected_requests_total{reason="deadline_too_short"}'
    counted = re.search(re.escape(reason) + r" (\S+)", metrics)
    assert counted is not None and float(counted.group(1)) >= 1


@pytest.mark.parametrize(
    "supplied",
    ["x" * 8192, "x" * 129, "caf\u00e9-42", "has space", "tab\there", ""],
    ids=["8KiB", "129-chars", "non-ascii", "space", "tab", "empty"],
)
def test_an_unusable_request_id_is_replaced_by_a_generated_one(url: str, supplied: str) -> None:
    headers = {b"X-Request-ID": supplied.encode()}
    response = httpx.get(f"{url}/v2/health/live", headers=headers)
    echoed = response.headers["x-request-id"]
    assert response.status_code == 200 and echoed != supplied
    assert 0 < len(echoed) <= 128 and echoed.isascii() and echoed.isprintable()


def test_a_usable_request_id_is_echoed_verbatim(url: str) -> None:
    supplied = "trace-" + "0123456789abcdef" * 7 + ":/_.-~"
    response = httpx.get(f"{url}/v2/health/live", headers={"X-Request-ID": supplied})
    assert response.headers["x-request-id"] == supplied


@pytest.mark.parametrize(
    ("path", "content_type", "status"),
    [
        ("/v1/models/names-rnn/predict", "text/plain", 415),
        ("/v1/models/names-rnn/predict", "application/x-www-form-urlencoded", 415),
        ("/v1/models/names-rnn/predict", "application/octet-stream", 415),
        ("/v1/models/names-lm/score", "multipart/form-data; boundary=x", 415),
        ("/v2/models/names-rnn/infer", "text/plain", 415),
        ("/v1/models/names-rnn/predict", "application/json; charset=utf-8", 200),
        ("/v1/models/names-rnn/predict", "Application/JSON", 200),
        ("/v2/models/names-rnn/infer", "application/octet-stream", 200),
        ("/v2/models/names-rnn/infer", None, 200),
    ],
)
def test_a_body_declared_as_something_else_than_json_is_a_415(
    url: str, path: str, content_type: str | None, status: int
) -> None:
    body = _text_tensor(["Kim"]) if "/v2/" in path else {"inputs": ["Kim"]}
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = httpx.post(url + path, content=orjson.dumps(body), headers=headers)
    assert response.status_code == status, response.text
    if status == 415:
        assert response.json()["code"] == "unsupported_media_type"
        assert "application/json" in response.json()["error"]


def test_an_unknown_model_with_an_oversized_chunked_body_is_a_404(url: str) -> None:
    chunks = iter([b'{"inputs": ["', b"x" * (8 * 1024 * 1024)] * 3)  # no Content-Length
    response = httpx.post(f"{url}/v1/models/no-such-model/predict", content=chunks, timeout=60)
    _error(response, 404, "no-such-model")
