"""The fuzzer of `bench/fuzz.py`, bounded: schemathesis' positive and negative cases (and hostile
values planted into valid bodies) for every operation of the live server's /openapi.json, and
generated gRPC messages, each sent while innocent requests of every model run beside them. No
5xx (but documented 501/503s), no gRPC UNKNOWN/INTERNAL, no innocent request failed or answered
differently, every health probe answered, and the server healthy after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.main import Application
from bench import fuzz
from tests.conftest import live_app, settings_for, write_tiny_repository

pytestmark = pytest.mark.slow

MODELS = {"mnist-mlp", "names-rnn", "names-lm"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Application]]:
    repository = write_tiny_repository(tmp_path / "repository")
    settings = settings_for(
        repository, admin_api_key=fuzz.ADMIN_KEY, grpc_port=0, max_items_per_request=64
    )
    with live_app(settings) as served:
        yield served


def _operations(url: str) -> set[str]:
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    return {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}


def test_fuzzed_requests_fail_alone_and_the_server_stays_healthy(
    served: tuple[str, Application],
) -> None:
    url, app = served
    report = fuzz.run(url, f"127.0.0.1:{app.grpc_port}", MODELS, 1200, 150, seed=20261203)
    assert report.findings == [], "\n".join(report.findings)
    assert report.cases >= 300, report  # the bound is cases, or the time on a busy machine
    assert report.innocent > 0 and report.probes > 0
    assert report.grpc_cases > 0
    # Every documented operation was sent (a 150 s bound on a slow machine may cut it short).
    if report.http_cases >= 800:
        assert report.operations == _operations(url)


def test_the_fuzzer_reports_a_5xx_and_a_failed_neighbour(
    served: tuple[str, Application],
) -> None:
    """The checks can fail: a case answered 500 and an innocent request answered otherwise
    are findings; a documented 503 is not."""
    report = fuzz.Report()
    assert not fuzz._documented(500, '{"code":"internal"}')
    assert fuzz._documented(503, '{"error":"...","code":"model_not_ready"}')
    assert not fuzz._documented(503, '{"code":"internal"}')
    url, _ = served
    requests = fuzz.innocents(MODELS)
    beside = fuzz.Beside(url, report, requests)
    with beside:
        beside.expected[requests[0]] = ["not what the model answers"]
        while report.innocent < 8:
            beside.stop.wait(0.05)
    assert any("innocent /v1/models/mnist-mlp/predict" in f for f in report.findings)
