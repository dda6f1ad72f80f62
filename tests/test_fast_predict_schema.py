"""The /v1 and KServe V1 predict bodies' fast validating models accept exactly the bodies their
documented models accept, into the same values (the endpoints validate with the fast one and
fall back to the documented one only to word a refusal)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from app.api.v1.kserve import fast_kserve_request, kserve_request
from app.api.v1.schemas import fast_predict_request, predict_request

BODIES: list[Any] = [
    {"inputs": [[0.5] * 784]},
    {"inputs": [[[0.25] * 28] * 28]},
    {"inputs": ["Nakamura", [1, 2.5], [[1], [2]]], "top_k": 3},
    {"inputs": [[]]},
    {"inputs": [[[]]]},
    {"inputs": [[], [[]], ""]},
    {"inputs": [[1, [2]]]},
    {"inputs": [[[1], 2]]},
    {"inputs": [["a"]]},
    {"inputs": [[["a"]]]},
    {"inputs": [[True]]},
    {"inputs": [[None]]},
    {"inputs": [[{}]]},
    {"inputs": [["1.5"]]},
    {"inputs": [[[[1]]]]},
    {"inputs": [1]},
    {"inputs": [None]},
    {"inputs": [{}]},
    {"inputs": [True]},
    {"inputs": []},
    {"inputs": [[0.1]] * 5},
    {"inputs": [[0.1]] * 4, "top_k": 0},
    {"inputs": [[0.1]], "top_k": 99},
    {"inputs": [[0.1]], "top_k": 2.0},
    {"inputs": [[0.1]], "extra": 1},
    {"top_k": 1},
    [],
    "inputs",
]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_fast_model_accepts_what_the_documented_model_accepts(body: Any) -> None:
    documented = TypeAdapter(predict_request(4, 5))
    fast = TypeAdapter(fast_predict_request(4, 5))
    raw = orjson.dumps(body)
    try:
        expected = documented.validate_json(raw).model_dump()
    except ValidationError:
        with pytest.raises(ValidationError):
            fast.validate_json(raw)
        return
    found = fast.validate_json(raw).model_dump()
    assert found == expected
    assert [type(item) for item in found["inputs"]] == [type(i) for i in expected["inputs"]]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_fast_kserve_model_accepts_what_the_documented_model_accepts(body: Any) -> None:
    documented = TypeAdapter(kserve_request(4))
    fast = TypeAdapter(fast_kserve_request(4))
    if isinstance(body, dict) and "inputs" in body:
        body = {"instances": body["inputs"], **{k: v for k, v in body.items() if k != "inputs"}}
    raw = orjson.dumps(body)
    try:
        expected = documented.validate_json(raw).model_dump()
    except ValidationError:
        with pytest.raises(ValidationError):
            fast.validate_json(raw)
        return
    assert fast.validate_json(raw).model_dump() == expected
