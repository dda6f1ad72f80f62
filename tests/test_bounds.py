"""Every number is bounded where it enters: a value past a bound of /v1/completions, /tokenize,
/detokenize, /v1 predict and score, or /v2 infer is a 4xx naming the field and the bound, the
OpenAPI document states the bounds, and a hostile request among innocent ones fails alone. The
shipped names-lm (57 tokens, 32 characters) on a live server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.errors import InvalidInput
from app.serving.completions import CompletionRequest, sequence_requests
from models.sampling import SamplingParams
from models.text import CharVocab
from tests.conftest import SHIPPED, live_server, settings_for

REPRODUCTION = {
    "model": "names-lm",
    "prompt": "Ko",
    "max_tokens": 30,
    "n": 16,
    "temperature": 2.0,
    "top_k": 57,
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with live_server(settings_for(SHIPPED, max_batch_delay_ms=5)) as base:
        yield base


def test_a_hostile_top_k_fails_alone_and_its_neighbours_get_what_they_get_alone(url: str) -> None:
    """The issue's reproduction: six completions generate together and a seventh with top_k
    2**63 joins them 20 ms later."""
    alone = httpx.post(f"{url}/v1/completions", json={**REPRODUCTION, "seed": 1}, timeout=60)
    assert alone.status_code == 200, alone.text
    expected = [c["text"] for c in alone.json()["choices"]]

    async def together() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = {**REPRODUCTION, "seed": 1}
            six = [asyncio.ensure_future(client.post("/v1/completions", json=body))]
            six += [
                asyncio.ensure_future(client.post("/v1/completions", json=body)) for _ in "12345"
            ]
            await asyncio.sleep(0.02)
            hostile = await client.post(
                "/v1/completions", json={**REPRODUCTION, "seed": 1, "top_k": 2**63}
            )
            return list(await asyncio.gather(*six)), hostile

    six, hostile = asyncio.run(together())
    assert [r.status_code for r in six] == [200] * 6
    assert all([c["text"] for c in r.json()["choices"]] == expected for r in six)
    assert 400 <= hostile.status_code < 500
    error = hostile.json()["error"]
    assert error["param"] == "top_k" and "4194304" in error["message"], error


# (field, value, a fragment of the message: the bound, or the model's own limit)
COMPLETION_BOUNDS = [
    ("top_k", 2**63, "4194304"),
    ("top_k", 2**23, "4194304"),
    ("top_k", 58, "57 tokens"),
    ("top_k", -1, "0"),
    ("seed", 2**63, "9223372036854775807"),
    ("seed", 2**64 - 1, "9223372036854775807"),
    ("seed", -1, "0"),
    ("temperature", 2.5, "2"),
    ("temperature", -0.5, "0"),
    ("temperature", 1e308, "2"),
    ("top_p", 0, "0"),
    ("top_p", 1.5, "1"),
    ("top_p", -1e-9, "0"),
    ("logprobs", 1001, "1000"),
    ("logprobs", 6, "the limit is 5"),
    ("logprobs", -1, "0"),
    ("n", 0, "1"),
    ("n", 1025, "1024"),
    ("n", 17, "the limit is 16"),
    ("max_tokens", -1, "0"),
    ("max_tokens", 4097, "4096"),
    ("max_tokens", 2**62, "4096"),
    ("max_tokens", 40, "at most 32 characters"),
    ("stop", ["a", "b", "c", "d", "e"], "4"),
    ("stop", "x" * 257, "256"),
    ("stop", [""], "1"),
    ("prompt", ["Ko"] * 1025, "1024"),
    ("prompt", [3, 2**22], "4194304"),
    ("prompt", [3, -1], "0"),
    ("prompt", [3, 57], "outside 0..56"),
    ("prompt", [[3], [2**40]], "4194304"),
    ("user", "u" * 257, "256"),
    ("model", "m" * 257, "256"),
]


@pytest.mark.parametrize(("field", "value", "bound"), COMPLETION_BOUNDS)
def test_a_completion_field_past_its_bound_is_a_4xx_naming_the_field_and_bound(
    url: str, field: str, value: Any, bound: str
) -> None:
    body = {"model": "names-lm", "prompt": "Ko", "max_tokens": 4, field: value}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["param"] == field, error
    assert bound in error["message"], error


@pytest.mark.parametrize(
    ("path", "body", "field", "bound"),
    [
        ("/tokenize", {"prompt": "K" * (2**20 + 1)}, "prompt", "1048576"),
        ("/tokenize", {"prompt": "Ko", "model": "m" * 257}, "model", "256"),
        ("/detokenize", {"tokens": [3, 2**22]}, "tokens", "4194304"),
        ("/detokenize", {"tokens": [3, 2**63]}, "tokens", "4194304"),
        ("/detokenize", {"tokens": [-1]}, "tokens", "0"),
        ("/detokenize", {"tokens": [57]}, "tokens", "outside 0..56"),
    ],
)
def test_a_tokenizer_field_past_its_bound_is_a_4xx_naming_the_field_and_bound(
    url: str, path: str, body: dict[str, Any], field: str, bound: str
) -> None:
    response = httpx.post(f"{url}{path}", json=body, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["error"]["message"]
    # The field, or the element of it (tokens[1]), then the bound.
    assert re.match(rf"{field}(\[\d+\])?: ", message) and bound in message, message


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/models/names-rnn/predict", {"inputs": ["Kim"], "top_k": 101}, "top_k"),
        ("/v1/models/names-rnn/predict", {"inputs": ["Kim"], "top_k": 2**63}, "top_k"),
        ("/v1/models/names-rnn/predict", {"inputs": ["Kim"], "top_k": 0}, "top_k"),
        ("/v1/models/names-rnn/predict", {"inputs": ["Kim"] * 1025}, "1024"),
        ("/v1/models/names-lm/score", {"inputs": ["Kim"] * 1025}, "1024"),
        (
            "/v1/models/names-lm/score",
            {"pairs": [{"context": "", "continuation": "K"}] * 1025},
            "1024",
        ),
        ("/v1/models/names-lm/score", {"inputs": ["Kim"], "per_token": 2**63}, "per_token"),
    ],
)
def test_v1_numbers_and_lengths_past_their_bounds_are_4xx_naming_the_field(
    url: str, path: str, body: dict[str, Any], fragment: str
) -> None:
    response = httpx.post(f"{url}{path}", json=body, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    assert fragment in response.json()["error"], response.text


def _v2(shape: list[Any], data: list[Any] | None = None, **tensor: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": shape, "data": data or ["Kim"], **tensor}
        ]
    }


@pytest.mark.parametrize(
    "body",
    [
        _v2([-1]),
        _v2([2**63 - 1]),
        _v2([2**64 - 1]),
        _v2([1, 2**62]),
        _v2([1.5]),
        _v2([1, 1, 1, 1, 1, 1, 1, 1, 1]),
        _v2([1], parameters={"binary_data_size": 2**63}),
        _v2([1], parameters={"binary_data_size": -1}),
        {**_v2([1]), "outputs": [{"name": "probabilities", "parameters": {"classification": -1}}]},
    ],
)
def test_v2_numbers_past_their_bounds_are_4xx_naming_the_input(
    url: str, body: dict[str, Any]
) -> None:
    response = httpx.post(f"{url}/v2/models/names-rnn/infer", json=body, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert "text" in error or "probabilities" in error or "shape" in error, error


def test_the_openapi_document_states_the_bounds(url: str) -> None:
    schemas = httpx.get(f"{url}/openapi.json").json()["components"]["schemas"]
    completion = schemas["CompletionRequestBody"]["properties"]
    assert completion["top_k"]["maximum"] == 2**22
    assert completion["seed"]["anyOf"][0]["maximum"] == 2**63 - 1
    assert completion["temperature"]["maximum"] == 2
    assert completion["top_p"]["exclusiveMinimum"] == 0
    assert completion["logprobs"]["anyOf"][0]["maximum"] == 1000
    assert completion["n"]["maximum"] == 1024
    assert completion["max_tokens"]["maximum"] == 4096
    assert schemas["DetokenizeBody"]["properties"]["tokens"]["items"]["exclusiveMaximum"] == 2**22


def test_all_the_tokens_of_a_completion_request_are_within_a_budget() -> None:
    """prompts x n x max_tokens: checked before any sequence is made."""
    vocab = CharVocab("abc")
    request = CompletionRequest(
        prompts=[vocab.encode("ab"), vocab.encode("c")],
        max_tokens=10,
        echo=False,
        logprobs=None,
        params=SamplingParams(),
        n=3,
        seed=1,
        stop=(),
    )
    assert len(sequence_requests(request, vocab, 32, max_generated=60)) == 6
    with pytest.raises(InvalidInput, match=r"max_tokens: .* = 60 tokens; the limit is 59"):
        sequence_requests(request, vocab, 32, max_generated=59)
