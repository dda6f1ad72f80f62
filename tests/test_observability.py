"""What operators see: Prometheus series after real traffic, one JSON access line per request."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from tests.conftest import live_app, live_server, settings_for, write_tiny_repository

GRPC_CALLS = 3


def _samples(text: str, name: str) -> dict[str, float]:
    """{label string: value} for every sample of `name`."""
    pattern = re.compile(rf"^{name}(\{{[^}}]*\}})? (\S+)$", re.M)
    return {m.group(1) or "": float(m.group(2)) for m in pattern.finditer(text)}


async def _traffic(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        good = [
            client.post("/v1/models/names-rnn/predict", json={"inputs": ["Kim"]}) for _ in range(24)
        ]
        await asyncio.gather(*good)
        await client.post("/v1/models/names-rnn/predict", json={"inputs": ["K#m"]})
        await client.post("/v1/models/names-lm/score", json={"inputs": ["Kim"]})
        for unknown in ("no-such-model", "another-unknown-model"):
            await client.post(f"/v1/models/{unknown}/predict", json={"inputs": ["Kim"]})


def _grpc_traffic(target: str) -> None:
    tensor = triton_grpc.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["Kim"], dtype=object))
    with triton_grpc.InferenceServerClient(target) as client:
        for _ in range(GRPC_CALLS):
            client.infer("names-rnn", [tensor])
        with pytest.raises(triton_grpc.InferenceServerException):
            client.infer("no-such-model", [tensor])


@pytest.fixture
def scraped(tmp_path: Path) -> str:
    repository = write_tiny_repository(tmp_path / "repository")
    settings = settings_for(repository, max_batch_delay_ms=100, batch_idle_turns=0, grpc_port=0)
    with live_app(settings) as (url, app):
        asyncio.run(_traffic(url))
        _grpc_traffic(f"127.0.0.1:{app.grpc_port}")
        return httpx.get(f"{url}/metrics").text


def _labels(endpoint: str, model: str, status: int, version: str, protocol: str = "http") -> str:
    return (
        f'{{endpoint="{endpoint}",model="{model}",protocol="{protocol}",status="{status}",'
        f'version="{version}"}}'
    )


def test_requests_are_counted_by_model_version_endpoint_status_and_protocol(scraped: str) -> None:
    requests = _samples(scraped, "batchserve_requests_total")
    assert requests[_labels("predict", "names-rnn", 200, "1")] == 24
    assert requests[_labels("predict", "names-rnn", 422, "1")] == 1
    assert requests[_labels("score", "names-lm", 200, "1")] == 1
    assert requests[_labels("infer", "names-rnn", 200, "1", "grpc")] == GRPC_CALLS


def test_requests_for_unknown_models_are_counted_as_404_without_their_names(scraped: str) -> None:
    requests = _samples(scraped, "batchserve_requests_total")
    assert requests[_labels("predict", "", 404, "")] == 2  # both names, one series
    assert requests[_labels("infer", "", 404, "", "grpc")] == 1
    assert "no-such-model" not in scraped and "another-unknown-model" not in scraped


def test_batch_size_histogram_shows_batches_larger_than_one(scraped: str) -> None:
    count = _samples(scraped, "batchserve_batch_size_count")['{model="names-rnn",version="1"}']
    total = _samples(scraped, "batchserve_batch_size_sum")['{model="names-rnn",version="1"}']
    assert total == 24 + GRPC_CALLS and count < total
    one = _samples(scraped, "batchserve_batch_size_bucket")[
        '{le="1.0",model="names-rnn",version="1"}'
    ]
    assert one < count  # some batch held more than one item


@pytest.mark.parametrize(
    "histogram",
    ["batchserve_queue_duration_seconds", "batchserve_compute_duration_seconds"],
)
def test_queue_and_compute_times_are_histograms_with_nonzero_time(
    scraped: str, histogram: str
) -> None:
    labels = '{model="names-rnn",version="1"}'
    assert _samples(scraped, f"{histogram}_count")[labels] > 0
    assert _samples(scraped, f"{histogram}_sum")[labels] > 0
    assert any("le=" in k for k in _samples(scraped, f"{histogram}_bucket"))


def test_end_to_end_latency_is_a_histogram_per_model_and_endpoint(scraped: str) -> None:
    counts = _samples(scraped, "batchserve_request_duration_seconds_count")
    assert counts['{endpoint="predict",model="names-rnn"}'] == 25
    assert counts['{endpoint="infer",model="names-rnn"}'] == GRPC_CALLS


def test_rejected_requests_are_counted_by_reason(scraped: str) -> None:
    rejected = _samples(scraped, "batchserve_rejected_requests_total")
    assert rejected['{reason="invalid_input"}'] == 1
    assert rejected['{reason="model_not_found"}'] == 3


def test_queue_depth_and_model_state_gauges(scraped: str) -> None:
    assert _samples(scraped, "batchserve_queue_depth")['{model="names-rnn",version="1"}'] == 0
    states = _samples(scraped, "batchserve_model_state")
    assert states['{model="names-rnn",state="ready",version="1"}'] == 1
    assert states['{model="names-rnn",state="failed",version="1"}'] == 0


def test_each_request_writes_one_json_access_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    with (
        caplog.at_level("INFO", logger="batchserve.access"),
        live_server(settings_for(repository, access_log=True)) as url,
    ):
        httpx.post(
            f"{url}/v1/models/names-rnn/predict",
            json={"inputs": ["Kim", "Lee"]},
            headers={"X-Request-ID": "trace-42"},
        )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "batchserve.access"]
    (line,) = [entry for entry in lines if entry["request_id"] == "trace-42"]
    assert line["status"] == 200 and line["model"] == "names-rnn" and line["version"] == "1"
    assert line["protocol"] == "http"
    assert line["items"] == 2 and line["batch_size"] >= 2
    # The parts add up: waiting in the queue and computing are inside the request's duration.
    assert line["compute_ms"] > 0
    assert line["queue_ms"] + line["compute_ms"] <= line["duration_ms"]
