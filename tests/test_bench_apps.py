"""The benchmark's comparison servers are fair: the naive baseline answers exactly what batchserve
answers with the same weights, and the no-model floors (FastAPI's, and a bare ASGI app's) parse the
same bodies into the same shape."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from bench import hostile, servers
from bench.baseline_app import create_app as create_baseline
from bench.fastapi_floor_app import create_app as create_fastapi_floor
from bench.floor_app import create_app as create_floor
from bench.raw_floor_app import create_app as create_raw_floor
from tests.conftest import live_server, settings_for, write_tiny_repository
from tests.numbers import LOG_PROB_TOLERANCE, PROBABILITY_TOLERANCE

PREDICT = "/v1/models/mnist-mlp/predict"
SCORE = "/v1/models/names-lm/score"
_rng = random.Random(0)
DIGITS = [[round(_rng.random(), 4) for _ in range(784)] for _ in range(3)]
NAMES = ["Smith", "Nakamura", "O'Neil", "Muller"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("bench") / "repository")


@pytest.fixture(scope="module")
def batchserve(repository: Path) -> Iterator[str]:
    with live_server(settings_for(repository)) as url:
        yield url


def client(app: FastAPI | Callable[..., Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")


@pytest.fixture(params=["def", "async"])
def baseline(request: pytest.FixtureRequest, repository: Path) -> httpx.AsyncClient:
    return client(create_baseline(repository, route=request.param))


async def test_baseline_predicts_what_batchserve_predicts(
    batchserve: str, baseline: httpx.AsyncClient
) -> None:
    body = {"inputs": DIGITS, "top_k": 3}
    expected = httpx.post(batchserve + PREDICT, json=body).json()
    answer = await baseline.post(PREDICT, json=body)
    assert answer.status_code == 200
    got = answer.json()
    assert (got["model"], got["version"]) == (expected["model"], expected["version"])
    for mine, theirs in zip(got["predictions"], expected["predictions"], strict=True):
        assert [p["label"] for p in mine["top_k"]] == [p["label"] for p in theirs["top_k"]]
        assert mine["label"] == theirs["label"]
        assert mine["probability"] == pytest.approx(
            theirs["probability"], abs=PROBABILITY_TOLERANCE
        )


async def test_baseline_scores_what_batchserve_scores(
    batchserve: str, baseline: httpx.AsyncClient
) -> None:
    body = {"inputs": NAMES}
    expected = httpx.post(batchserve + SCORE, json=body).json()["scores"]
    answer = await baseline.post(SCORE, json=body)
    assert answer.status_code == 200
    got = answer.json()["scores"]
    assert [s["num_tokens"] for s in got] == [s["num_tokens"] for s in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["log_prob"] == pytest.approx(theirs["log_prob"], abs=LOG_PROB_TOLERANCE)
        assert mine["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-4)


@pytest.mark.parametrize(
    "create",
    [create_floor, create_fastapi_floor, create_raw_floor],
    ids=["fastapi", "fastapi-from-bytes", "raw"],
)
async def test_floor_answers_in_batchserve_shape(
    batchserve: str, create: Callable[[], Callable[..., Any]]
) -> None:
    floor = client(create())
    for path, body, key in (
        (PREDICT, {"inputs": DIGITS}, "predictions"),
        (SCORE, {"inputs": NAMES}, "scores"),
    ):
        expected = httpx.post(batchserve + path, json=body).json()
        answer = await floor.post(path, json=body)
        assert answer.status_code == 200
        got = answer.json()
        assert got.keys() == expected.keys()
        assert len(got[key]) == len(expected[key])
        assert got[key][0].keys() == expected[key][0].keys()


async def test_baseline_and_floor_validate_the_body_with_pydantic(repository: Path) -> None:
    for app in (create_baseline(repository), create_floor(), create_fastapi_floor()):
        http = client(app)
        assert (await http.post(PREDICT, json={"inputs": [{"not": "numbers"}]})).status_code == 422
        assert (await http.post(SCORE, json={"inputs": [1, 2]})).status_code == 422


def test_an_older_commits_server_runs_that_commits_code(tmp_path: Path) -> None:
    """bench.hostile --before and bench.revisions serve another commit from a worktree: its
    `python -m app serve` must import that tree's app/, not this checkout's (as it once did,
    measuring this checkout twice)."""
    tree = tmp_path / "tree"
    (tree / "app").mkdir(parents=True)
    (tree / "app" / "__init__.py").write_text("")
    (tree / "app" / "__main__.py").write_text(
        "import sys\n"
        "from http.server import BaseHTTPRequestHandler, HTTPServer\n"
        "class H(BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = b'the other tree'\n"
        "        self.send_response(200)\n"
        "        self.send_header('Content-Length', str(len(body)))\n"
        "        self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "port = int(sys.argv[sys.argv.index('--port') + 1])\n"
        "HTTPServer(('127.0.0.1', port), H).serve_forever()\n"
    )
    spec = hostile.batchserve_spec(tree, tree / "models" / "repository")
    server = servers.start(spec, tmp_path, None, timeout_s=30)
    try:
        answer = httpx.get(f"{server.base_url}/v2/health/ready", timeout=5)
    finally:
        servers.stop(server)
    assert answer.text == "the other tree"
