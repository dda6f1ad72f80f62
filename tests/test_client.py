"""The Python client (`app.client`) against a live server: typed results, auth, request ids,
retries on a real full-queue 503, deadlines and connection errors, for both sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.v1.schemas import Prediction
from app.client import AsyncClient, BatchserveError, Client, PredictResult, ScoreResult
from tests.conftest import free_port, live_server, settings_for, write_tiny_repository
from tests.numbers import LOG_PROB_TOLERANCE, assert_same_numbers

API_KEY = "test-key-123"
DIGIT = [0.5] * 784
BURST = 4  # concurrent calls at a server whose queue holds one item


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("client") / "repository")


def _live_server(repository: Path, **overrides: Any) -> AbstractContextManager[str]:
    return live_server(settings_for(repository, device="cpu", **overrides))


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[str]:
    with _live_server(repository) as url:
        yield url


@pytest.fixture(scope="module")
def secured_server(repository: Path) -> Iterator[str]:
    with _live_server(repository, api_keys=[API_KEY]) as url:
        yield url


@pytest.fixture(scope="module")
def busy_server(repository: Path) -> Iterator[str]:
    """One item fits in the queue and waits 400 ms there, and a request that finds it full is
    refused at once (no waiting for room): a burst of calls overflows it."""
    with _live_server(
        repository,
        max_queue_size=1,
        max_batch_delay_ms=400,
        batch_idle_turns=0,
        retry_after_s=1,
        max_queue_wait_ms=0,
    ) as url:
        yield url


@pytest.fixture(scope="module")
def slow_server(repository: Path) -> Iterator[str]:
    """Each item waits 400 ms in the queue for company before its batch starts."""
    with _live_server(repository, max_batch_delay_ms=400, batch_idle_turns=0) as url:
        yield url


# -- typed results ----------------------------------------------------------------------------


def test_predict_returns_typed_result_matching_the_http_response(server: str) -> None:
    inputs = [DIGIT, [0.0] * 784]
    body = {"inputs": inputs, "top_k": 3}
    raw = httpx.post(f"{server}/v1/models/mnist-mlp/predict", json=body).json()
    with Client(server) as client:
        result = client.predict("mnist-mlp", inputs, top_k=3)
    assert isinstance(result, PredictResult)
    assert result.model_dump(exclude={"request_id"}, exclude_unset=True) == raw
    first = result.predictions[0]
    assert isinstance(first, Prediction) and len(first.top_k) == 3


def test_score_returns_typed_result_matching_the_http_response(server: str) -> None:
    body = {"inputs": ["Smith", "Kowalski"], "per_token": True}
    raw = httpx.post(f"{server}/v1/models/names-lm/score", json=body).json()
    with Client(server) as client:
        result = client.score("names-lm", ["Smith", "Kowalski"], per_token=True)
    assert isinstance(result, ScoreResult)
    assert result.model_dump(exclude={"request_id"}, exclude_unset=True) == raw
    assert result.scores[0].tokens is not None


def test_score_pairs_returns_the_pair_scores(server: str) -> None:
    body = {
        "pairs": [{"context": "Smi", "continuation": "th"}, {"context": "", "continuation": "A"}]
    }
    raw = httpx.post(f"{server}/v1/models/names-lm/score", json=body).json()
    with Client(server) as client:
        result = client.score_pairs("names-lm", [("Smi", "th"), ("", "A")], version="1")
    assert result.model_dump(exclude={"request_id"}, exclude_unset=True) == raw
    assert all(score.is_greedy is not None for score in result.scores)


def test_models_and_metadata_are_listed(server: str) -> None:
    with Client(server) as client:
        models = {m.name: m for m in client.models()}
        metadata = client.model("mnist-mlp", version="1")
    assert models["mnist-mlp"].task == "classify"
    assert models["names-lm"].versions == ["1"]
    assert metadata["labels"] == [str(i) for i in range(10)]


def test_async_client_returns_the_same_results(server: str) -> None:
    async def calls() -> tuple[PredictResult, ScoreResult]:
        async with AsyncClient(server) as client:
            return await asyncio.gather(
                client.predict("mnist-mlp", [DIGIT]), client.score("names-lm", ["Smith"])
            )

    predicted, scored = asyncio.run(calls())
    with Client(server) as client:
        again = client.predict("mnist-mlp", [DIGIT]).predictions
        assert_same_numbers(predicted.model_dump()["predictions"], [p.model_dump() for p in again])
        rescored = [s.model_dump() for s in client.score("names-lm", ["Smith"]).scores]
        assert_same_numbers(scored.model_dump()["scores"], rescored, LOG_PROB_TOLERANCE)


# -- errors, auth and request ids -------------------------------------------------------------


def test_client_errors_raise_and_are_not_retried(server: str) -> None:
    with Client(server) as client:
        with pytest.raises(BatchserveError) as missing:
            client.predict("no-such-model", [DIGIT])
        with pytest.raises(BatchserveError) as wrong:
            client.predict("names-lm", ["Smith"])
        assert client.retries == 0
    assert (missing.value.status, missing.value.code) == (404, "model_not_found")
    assert (wrong.value.status, wrong.value.code) == (400, "wrong_endpoint")
    assert "score" in wrong.value.message


def test_missing_api_key_raises_401(secured_server: str) -> None:
    with Client(secured_server) as client, pytest.raises(BatchserveError) as error:
        client.models()
    assert (error.value.status, error.value.code) == (401, "unauthorized")


def test_wrong_api_key_raises_401(secured_server: str) -> None:
    with Client(secured_server, api_key="wrong") as client, pytest.raises(BatchserveError) as error:
        client.predict("mnist-mlp", [DIGIT])
    assert error.value.status == 401


def test_api_key_is_sent_as_bearer(secured_server: str) -> None:
    with Client(secured_server, api_key=API_KEY) as client:
        assert client.predict("mnist-mlp", [DIGIT]).predictions


def test_async_client_sends_the_api_key(secured_server: str) -> None:
    async def call(api_key: str | None) -> PredictResult:
        async with AsyncClient(secured_server, api_key=api_key) as client:
            return await client.predict("mnist-mlp", [DIGIT])

    assert asyncio.run(call(API_KEY)).predictions
    with pytest.raises(BatchserveError) as error:
        asyncio.run(call(None))
    assert error.value.status == 401


def test_request_id_is_sent_and_echoed(server: str) -> None:
    with Client(server) as client:
        result = client.score("names-lm", ["Smith"], request_id="trace-42")
        with pytest.raises(BatchserveError) as error:
            client.predict("no-such-model", [DIGIT], request_id="trace-43")
    assert result.request_id == "trace-42"
    assert error.value.request_id == "trace-43"


def test_request_id_is_generated_when_absent(server: str) -> None:
    with Client(server) as client:
        first = client.predict("mnist-mlp", [DIGIT])
        second = client.predict("mnist-mlp", [DIGIT])
    assert first.request_id and second.request_id
    assert first.request_id != second.request_id


# -- retries and deadlines --------------------------------------------------------------------


def test_plain_burst_at_a_full_queue_gets_503_with_retry_after(busy_server: str) -> None:
    """The premise of the retry tests: without the client's retries, a burst sees 503s."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=busy_server) as http:
            body = {"inputs": [DIGIT]}
            calls = [http.post("/v1/models/mnist-mlp/predict", json=body) for _ in range(BURST)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    refused = [r for r in responses if r.status_code == 503]
    assert refused
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert all(r.json()["code"] == "queue_full" for r in refused)
    assert len(refused) < BURST


def test_client_retries_503_until_a_burst_succeeds(busy_server: str) -> None:
    with Client(busy_server, max_retries=BURST + 1) as client, ThreadPoolExecutor(BURST) as pool:
        results = list(pool.map(lambda _: client.predict("mnist-mlp", [DIGIT]), range(BURST)))
        retries = client.retries
    assert all(r.predictions for r in results)
    assert retries >= 1


def test_async_client_retries_503_until_a_burst_succeeds(busy_server: str) -> None:
    async def burst() -> tuple[list[ScoreResult], int]:
        async with AsyncClient(busy_server, max_retries=BURST + 1) as client:
            calls = [client.score("names-lm", ["Smith"]) for _ in range(BURST)]
            return list(await asyncio.gather(*calls)), client.retries

    results, retries = asyncio.run(burst())
    assert all(r.scores for r in results)
    assert retries >= 1


def test_retries_give_up_with_the_last_503(busy_server: str) -> None:
    with Client(busy_server, max_retries=0) as client, ThreadPoolExecutor(BURST) as pool:
        futures = [pool.submit(client.predict, "mnist-mlp", [DIGIT]) for _ in range(BURST)]
        errors = [f.exception() for f in futures if f.exception() is not None]
    assert errors
    assert all(isinstance(e, BatchserveError) and e.status == 503 for e in errors)


def test_short_deadline_in_a_slow_queue_raises_504(slow_server: str) -> None:
    # The batcher holds an item for 400 ms waiting for company; a 50 ms deadline passes first.
    with Client(slow_server) as client, pytest.raises(BatchserveError) as error:
        client.predict("mnist-mlp", [DIGIT], deadline_s=0.05)
    assert (error.value.status, error.value.code) == (504, "deadline_exceeded")
    assert client.retries == 0


def test_client_timeout_is_sent_as_the_deadline(slow_server: str) -> None:
    with Client(slow_server, timeout_s=0.05) as client, pytest.raises(BatchserveError) as error:
        client.predict("mnist-mlp", [DIGIT])
    assert error.value.status == 504


def test_connection_errors_are_retried_then_raised() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, max_retries=2, backoff_s=0.001) as client:
        with pytest.raises(BatchserveError) as error:
            client.models()
        assert client.retries == 2
    assert (error.value.status, error.value.code) == (None, "connection_error")
