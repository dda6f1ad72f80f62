"""The committed, trained checkpoints, served over real HTTP: every /v1 endpoint's happy path and
the promises the README makes about each model."""

from __future__ import annotations

import math

import httpx
import numpy as np
import orjson
import pytest

from models.data import MnistData
from tests.numbers import LOG_PROB_TOLERANCE, PROBABILITY_TOLERANCE, assert_same_numbers


@pytest.fixture(scope="module")
def http(shipped_server: str) -> httpx.Client:
    return httpx.Client(base_url=shipped_server, timeout=60)


def test_mnist_test_set_accuracy_over_http_matches_the_reported_metric(
    http: httpx.Client, mnist: MnistData
) -> None:
    test = mnist.test
    reported = http.get("/v1/models/mnist-mlp").json()["metrics"]["test_accuracy"]
    predicted: list[int] = []
    for start in range(0, len(test.labels), 1000):
        images = test.images[start : start + 1000]
        body = orjson.dumps({"inputs": images}, option=orjson.OPT_SERIALIZE_NUMPY)
        response = http.post("/v1/models/mnist-mlp/predict", content=body)
        assert response.status_code == 200, response.text
        predicted += [p["index"] for p in response.json()["predictions"]]
    accuracy = float(np.mean(np.array(predicted) == test.labels))
    assert accuracy >= 0.975
    assert accuracy == pytest.approx(reported, abs=1e-4)


def test_a_28x28_digit_gets_the_same_answer_as_its_flat_784_form(
    http: httpx.Client, mnist: MnistData
) -> None:
    image = mnist.test.images[0]
    flat = http.post("/v1/models/mnist-mlp/predict", json={"inputs": [image.tolist()]}).json()
    square = http.post(
        "/v1/models/mnist-mlp/predict", json={"inputs": [image.reshape(28, 28).tolist()]}
    ).json()
    assert_same_numbers(flat["predictions"], square["predictions"])


@pytest.mark.parametrize(("surname", "country"), [("Nakamura", "JP"), ("Kowalski", "PL")])
def test_names_rnn_places_surnames_in_their_country(
    http: httpx.Client, surname: str, country: str
) -> None:
    response = http.post("/v1/models/names-rnn/predict", json={"inputs": [surname], "top_k": 3})
    prediction = response.json()["predictions"][0]
    assert prediction["label"] == country
    assert prediction["top_k"][0]["label"] == country
    assert len(prediction["top_k"]) == 3
    probabilities = [p["probability"] for p in prediction["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_names_rnn_reports_accuracy_far_above_the_majority_baseline(http: httpx.Client) -> None:
    metrics = http.get("/v1/models/names-rnn").json()["metrics"]
    assert metrics["test_accuracy"] > 3 * metrics["majority_class_baseline"]


def test_names_lm_prefers_a_real_surname_to_noise(http: httpx.Client) -> None:
    scores = http.post("/v1/models/names-lm/score", json={"inputs": ["Johnson", "Xqjzvbk"]}).json()
    johnson, noise = scores["scores"]
    assert johnson["log_prob"] > noise["log_prob"]


def test_per_token_log_probs_sum_to_log_prob_and_give_the_perplexity(http: httpx.Client) -> None:
    body = {"inputs": ["Johnson", "O'Brien", "Li"], "per_token": True}
    for score in http.post("/v1/models/names-lm/score", json=body).json()["scores"]:
        tokens = score["tokens"]
        assert tokens[-1]["token"] == "</s>"
        assert score["num_tokens"] == len(tokens)
        assert math.fsum(t["log_prob"] for t in tokens) == pytest.approx(
            score["log_prob"], abs=1e-9
        )
        assert all(t["log_prob"] <= 0 for t in tokens)
        expected = math.exp(-score["log_prob"] / score["num_tokens"])
        assert score["perplexity"] == pytest.approx(expected, rel=1e-12)


def test_pair_scores_are_the_continuations_share_of_the_whole_string(http: httpx.Client) -> None:
    whole = http.post("/v1/models/names-lm/score", json={"inputs": ["Smith"], "per_token": True})
    pair = http.post(
        "/v1/models/names-lm/score", json={"pairs": [{"context": "Smi", "continuation": "th"}]}
    )
    tokens = whole.json()["scores"][0]["tokens"]
    expected = tokens[3]["log_prob"] + tokens[4]["log_prob"]  # "t", "h" after "Smi"; no </s>
    scored = pair.json()["scores"][0]
    assert scored["num_tokens"] == 2
    assert scored["log_prob"] == pytest.approx(expected, abs=1e-5)
    assert isinstance(scored["is_greedy"], bool)


def test_greedy_flag_follows_the_models_argmax(http: httpx.Client) -> None:
    # "Smith" is the most common surname: after "Smit", "h" should be the argmax; "q" is not.
    pairs = [{"context": "Smit", "continuation": "h"}, {"context": "Smit", "continuation": "q"}]
    scores = http.post("/v1/models/names-lm/score", json={"pairs": pairs}).json()["scores"]
    assert [s["is_greedy"] for s in scores] == [True, False]


def test_listing_shows_every_shipped_model_ready(http: httpx.Client) -> None:
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert set(models) == {"mnist-mlp", "names-rnn", "names-lm"}
    for model in models.values():
        assert model["state"] == "ready" and model["versions"] == ["1"]
        assert model["default_version"] == "1"
    assert models["names-lm"]["task"] == "score" and models["names-rnn"]["task"] == "classify"


def test_version_metadata_carries_provenance_and_checkpoint_hash(http: httpx.Client) -> None:
    meta = http.get("/v1/models/names-rnn/versions/1").json()
    assert "names-dataset==3.3.1" in orjson.dumps(meta["data"]).decode()
    assert len(meta["checkpoint_sha256"]) == 64
    assert "JP" in meta["labels"] and "PL" in meta["labels"]
    assert meta["input"]["kind"] == "text" and meta["input"]["max_length"] >= 20


def test_versioned_predict_answers_like_the_default(http: httpx.Client) -> None:
    body = {"inputs": ["Rossi"], "top_k": 2}
    default = http.post("/v1/models/names-rnn/predict", json=body).json()
    versioned = http.post("/v1/models/names-rnn/versions/1/predict", json=body).json()
    assert default == versioned and default["version"] == "1"


def test_request_id_is_echoed_and_generated_when_absent(http: httpx.Client) -> None:
    given = http.get("/v1/models", headers={"X-Request-ID": "abc-123"})
    generated = [http.get("/v1/models").headers["x-request-id"] for _ in range(2)]
    assert given.headers["x-request-id"] == "abc-123"
    assert generated[0] and generated[0] != generated[1]


# -- batch-size invariance ---------------------------------------------------------------------
# The same item may be computed alone or among up to max_batch_size others. Batching changes
# float results in the last bits (other kernels, other summation orders), never beyond the
# tolerance stated in tests/numbers.py.

SURNAMES = ["Nakamura", "Kowalski", "Rossi", "Smith", "Müller", "O'Brien", "Li", "Dvořák"] * 4


def _alone_and_together(http: httpx.Client, path: str, key: str, items: list) -> tuple[list, list]:
    alone = [http.post(path, json={key: [item]}).json() for item in items]
    together = http.post(path, json={key: items}).json()
    field = "predictions" if "predict" in path else "scores"
    return [a[field][0] for a in alone], together[field]


def test_mnist_answers_do_not_depend_on_the_batch_size(
    http: httpx.Client, mnist: MnistData
) -> None:
    digits = mnist.test.images[:48].tolist()
    alone, together = _alone_and_together(http, "/v1/models/mnist-mlp/predict", "inputs", digits)
    assert_same_numbers(alone, together, PROBABILITY_TOLERANCE)


def test_names_rnn_answers_do_not_depend_on_the_batch_size(http: httpx.Client) -> None:
    path = "/v1/models/names-rnn/predict"
    alone, together = _alone_and_together(http, path, "inputs", SURNAMES)
    assert_same_numbers(alone, together, PROBABILITY_TOLERANCE)


def test_names_lm_scores_do_not_depend_on_the_batch_size(http: httpx.Client) -> None:
    path = "/v1/models/names-lm/score"
    alone, together = _alone_and_together(http, path, "inputs", SURNAMES)
    assert_same_numbers(alone, together, LOG_PROB_TOLERANCE)
    pairs = [{"context": name[:-2], "continuation": name[-2:]} for name in SURNAMES]
    alone, together = _alone_and_together(http, path, "pairs", pairs)
    assert_same_numbers(alone, together, LOG_PROB_TOLERANCE)
