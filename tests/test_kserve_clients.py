"""KServe's V1 protocol and KServe's own clients against a live server over the shipped models.
The KServe SDK (the `kserve` extra) runs in a subprocess (tests/kserve_clients.py): its protobuf
messages clash with tritonclient's in one process. The plain-HTTP tests of the V1 protocol need
no SDK."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.numbers import LOG_PROB_TOLERANCE, PROBABILITY_TOLERANCE, assert_same_numbers

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["Nakamura", "Kowalski", "Rossi"]
IMAGES = np.random.default_rng(1).random((2, 784), dtype=np.float32)  # as kserve_clients.py


@pytest.fixture(scope="module")
def url(shipped_server: str) -> str:
    return shipped_server


def _v1_predictions(url: str, model: str, items: list[Any]) -> list[dict[str, Any]]:
    """What /v1 answers, in the shape KServe's V1 predict gives."""
    if model == "names-lm":
        scores = httpx.post(f"{url}/v1/models/{model}/score", json={"inputs": items}).json()
        return [
            {k: s[k] for k in ("log_prob", "num_tokens", "perplexity")} for s in scores["scores"]
        ]
    labels = httpx.get(f"{url}/v1/models/{model}").json()["labels"]
    body = {"inputs": items, "top_k": len(labels)}
    predictions = httpx.post(f"{url}/v1/models/{model}/predict", json=body).json()["predictions"]
    answers = []
    for prediction in predictions:
        row = [0.0] * len(labels)
        for ranked in prediction["top_k"]:
            row[ranked["index"]] = ranked["probability"]
        answers.append({"probabilities": row, "label": prediction["label"]})
    return answers


# -- the V1 protocol over plain HTTP -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "items"),
    [("names-rnn", NAMES), ("names-lm", NAMES), ("mnist-mlp", IMAGES.tolist())],
)
def test_predict_with_instances_answers_one_prediction_per_instance(
    url: str, model: str, items: list[Any]
) -> None:
    response = httpx.post(f"{url}/v1/models/{model}:predict", json={"instances": items})
    assert response.status_code == 200, response.text
    tolerance = LOG_PROB_TOLERANCE if model == "names-lm" else PROBABILITY_TOLERANCE
    expected = _v1_predictions(url, model, items)
    assert_same_numbers(response.json()["predictions"], expected, tolerance)


def test_predict_on_a_named_version(url: str) -> None:
    response = httpx.post(
        f"{url}/v1/models/names-rnn/versions/1:predict", json={"instances": NAMES}
    )
    assert response.status_code == 200 and len(response.json()["predictions"]) == len(NAMES)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"inputs": NAMES}, 400, "instances"),
        ({"instances": []}, 400, "instances"),
        ({"instances": ["K#m"]}, 400, "instances[0]"),
    ],
    ids=["no-instances", "empty", "bad-instance"],
)
def test_bad_predict_bodies_are_a_400_naming_the_problem(
    url: str, body: dict[str, Any], status: int, says: str
) -> None:
    response = httpx.post(f"{url}/v1/models/names-rnn:predict", json=body)
    assert response.status_code == status and says in response.json()["error"]


def test_predict_on_an_unknown_model_is_a_404(url: str) -> None:
    response = httpx.post(f"{url}/v1/models/no-such-model:predict", json={"instances": NAMES})
    assert response.status_code == 404


def test_the_predict_path_is_its_own_resource_not_a_model_named_with_a_colon(url: str) -> None:
    response = httpx.get(f"{url}/v1/models/names-rnn:predict")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_get_model_says_whether_it_is_ready_and_the_root_says_alive(url: str) -> None:
    assert httpx.get(f"{url}/v1/models/names-rnn").json()["ready"] is True
    assert httpx.get(f"{url}/").json() == {"status": "alive"}


def test_batchserves_own_v1_routes_are_unchanged_beside_it(url: str) -> None:
    own = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": NAMES[:1]})
    assert own.status_code == 200 and "predictions" in own.json() and "model" in own.json()
    explain = httpx.post(f"{url}/v1/models/names-rnn:explain", json={"instances": NAMES})
    assert explain.status_code == 405  # a path batchserve has, with a verb it does not offer


# -- KServe's SDK -------------------------------------------------------------------------------

needs_kserve = pytest.mark.skipif(
    importlib.util.find_spec("kserve") is None,
    reason="KServe's SDK is the `kserve` extra: pip install -e '.[kserve]' (.ci/run does)",
)


@pytest.fixture(scope="module")
def kserve_answers(url: str, shipped_grpc: str) -> dict[str, Any]:
    done = subprocess.run(
        # As a module: run as a file, tests/ would come first on sys.path, and tests/numbers.py
        # would hide the standard library's numbers.
        [sys.executable, "-m", "tests.kserve_clients", shipped_grpc, url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answers


def _items(model: str) -> list[Any]:
    return IMAGES.tolist() if model == "mnist-mlp" else NAMES


@needs_kserve
def test_kserves_grpc_client_sees_a_live_and_ready_server(kserve_answers: dict[str, Any]) -> None:
    answers = kserve_answers["grpc"]
    assert answers["live"] is True and answers["ready"] is True and answers["model_ready"] is True


@needs_kserve
@pytest.mark.parametrize("kind", ["raw", "typed"])
@pytest.mark.parametrize("model", ["names-rnn", "names-lm", "mnist-mlp"])
def test_kserves_grpc_client_gets_the_v1_answers(
    kserve_answers: dict[str, Any], url: str, kind: str, model: str
) -> None:
    outputs = kserve_answers["grpc"][kind][model]
    expected = _v1_predictions(url, model, _items(model))
    tolerance = LOG_PROB_TOLERANCE if model == "names-lm" else PROBABILITY_TOLERANCE
    rows = [
        dict(zip(outputs, values, strict=True)) for values in zip(*outputs.values(), strict=True)
    ]
    assert_same_numbers(rows, expected, tolerance)


@needs_kserve
def test_kserves_rest_v1_client_sees_a_live_server_and_a_ready_model(
    kserve_answers: dict[str, Any],
) -> None:
    answers = kserve_answers["rest_v1"]
    assert answers["live"] is True and answers["model_ready"] is True


@needs_kserve
@pytest.mark.parametrize("model", ["names-rnn", "names-lm", "mnist-mlp"])
def test_kserves_rest_v1_client_gets_the_v1_answers(
    kserve_answers: dict[str, Any], url: str, model: str
) -> None:
    predictions = kserve_answers["rest_v1"]["predict"][model]["predictions"]
    tolerance = LOG_PROB_TOLERANCE if model == "names-lm" else PROBABILITY_TOLERANCE
    assert_same_numbers(predictions, _v1_predictions(url, model, _items(model)), tolerance)
