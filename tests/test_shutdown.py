"""SIGTERM under load: new requests get 503, every accepted request is answered, the exit code is 0.
The server is the real `python -m app serve` process; the clients behave as a load balancer
would, stopping once the server says it is shutting down or refuses the connection."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from tests.conftest import free_port, write_tiny_repository

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 16
DRAIN_S = 1.0
# Each request waits this long in the batcher for company, so requests are in flight at SIGTERM.
BATCH_DELAY_MS = 100
SLOW_BATCH_S = 2


@dataclass
class Outcomes:
    ok_before_sigterm: int = 0
    ok_after_sigterm: int = 0
    shutting_down: int = 0
    refused: int = 0
    lost: list[str] = field(default_factory=list)  # accepted (or sent) but not answered with 200
    sigterm_at: float | None = None


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    grpc_target: str = ""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from _serve(tmp_path, grpc=False)


@pytest.fixture
def grpc_server(tmp_path: Path) -> Iterator[Server]:
    yield from _serve(tmp_path, grpc=True)


@pytest.fixture
def slow_grpc_server(tmp_path: Path) -> Iterator[Server]:
    """No drain, and batches that wait SLOW_BATCH_S for company: a call is in flight when the
    listeners close."""
    overrides = {
        "BATCHSERVE_SHUTDOWN_DRAIN_S": "0",
        "BATCHSERVE_MAX_BATCH_DELAY_MS": str(SLOW_BATCH_S * 1000),
        "BATCHSERVE_BATCH_IDLE_TURNS": "0",
    }
    yield from _serve(tmp_path, grpc=True, **overrides)


def _serve(tmp_path: Path, grpc: bool, **overrides: str) -> Iterator[Server]:
    port = free_port()
    env = {
        **os.environ,
        "BATCHSERVE_MODEL_REPOSITORY": str(write_tiny_repository(tmp_path / "repository")),
        "BATCHSERVE_SHUTDOWN_DRAIN_S": str(DRAIN_S),
        "BATCHSERVE_MAX_BATCH_DELAY_MS": str(BATCH_DELAY_MS),
        "BATCHSERVE_ACCESS_LOG": "false",
        "BATCHSERVE_DEVICE": "cpu",
        **overrides,
    }
    grpc_port = free_port() if grpc else None
    if grpc_port is not None:
        env["BATCHSERVE_GRPC_PORT"] = str(grpc_port)
    command = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_serving(url, process)
        yield Server(url, process, f"127.0.0.1:{grpc_port}" if grpc_port else "")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not start (exit code {process.poll()})")


async def _client_loop(client: httpx.AsyncClient, url: str, seen: Outcomes) -> None:
    body = {"inputs": [[0.5] * 784]}
    while True:
        try:
            response = await client.post(f"{url}/v1/models/mnist-mlp/predict", json=body)
        except httpx.ConnectError:
            seen.refused += 1  # the listener is closed: nothing was accepted
            return
        except httpx.TransportError as exc:
            seen.lost.append(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code == 200:
            if seen.sigterm_at is None:
                seen.ok_before_sigterm += 1
            else:
                seen.ok_after_sigterm += 1
        elif response.status_code == 503 and response.json().get("code") == "shutting_down":
            seen.shutting_down += 1
            return
        else:
            seen.lost.append(f"{response.status_code}: {response.text[:200]}")
            return


async def _load_then_sigterm(server: Server) -> Outcomes:
    seen = Outcomes()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        loops = [
            asyncio.create_task(_client_loop(client, server.url, seen)) for _ in range(CLIENTS)
        ]
        while seen.ok_before_sigterm < 5 * CLIENTS:  # a steady state, not the first requests
            await asyncio.sleep(0.05)
        # Mid-batch: the batch delay keeps each request in the server for ~BATCH_DELAY_MS.
        await asyncio.sleep(BATCH_DELAY_MS / 2000)
        seen.sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*loops), timeout=60)
    return seen


def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(server: Server) -> None:
    seen = asyncio.run(_load_then_sigterm(server))

    assert seen.lost == []
    assert seen.ok_after_sigterm > 0  # requests in flight at SIGTERM were answered, not dropped
    assert seen.shutting_down + seen.refused == CLIENTS
    assert server.process.wait(timeout=60) == 0


def test_while_draining_readiness_is_off_requests_get_503_and_metrics_stay_up(
    server: Server,
) -> None:
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    server.process.send_signal(signal.SIGTERM)
    time.sleep(DRAIN_S / 4)

    refused = httpx.get(f"{server.url}/v1/models")
    assert refused.status_code == 503
    assert refused.json()["code"] == "shutting_down"
    assert refused.headers["connection"] == "close"
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    assert server.process.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v1/models")


def _grpc_client_loop(target: str, seen: Outcomes, lock: threading.Lock) -> None:
    """Like `_client_loop`, over gRPC: UNAVAILABLE is the shutting-down answer (during the drain
    from batchserve, after it from grpc itself, as the listener closes)."""
    tensor = triton_grpc.InferInput("input", [1, 784], "FP32")
    tensor.set_data_from_numpy(np.full((1, 784), 0.5, dtype=np.float32))
    with triton_grpc.InferenceServerClient(target) as client:
        while True:
            try:
                client.infer("mnist-mlp", [tensor], client_timeout=60)
            except triton_grpc.InferenceServerException as exc:
                with lock:
                    if exc.status() == "StatusCode.UNAVAILABLE":
                        seen.shutting_down += 1
                    else:
                        seen.lost.append(f"{exc.status()}: {exc.message()}")
                return
            with lock:
                if seen.sigterm_at is None:
                    seen.ok_before_sigterm += 1
                else:
                    seen.ok_after_sigterm += 1


def test_sigterm_drains_grpc_calls_with_the_http_ones_and_exits_0(grpc_server: Server) -> None:
    seen, lock = Outcomes(), threading.Lock()
    threads = [
        threading.Thread(target=_grpc_client_loop, args=(grpc_server.grpc_target, seen, lock))
        for _ in range(CLIENTS // 2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while seen.ok_before_sigterm < 2 * CLIENTS and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(BATCH_DELAY_MS / 2000)  # mid-batch
    seen.sigterm_at = time.monotonic()
    grpc_server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)

    assert seen.lost == []
    assert seen.ok_after_sigterm > 0  # calls in flight at SIGTERM were answered, not dropped
    assert seen.shutting_down == len(threads)
    assert grpc_server.process.wait(timeout=60) == 0


def test_a_grpc_call_in_flight_when_the_listener_closes_is_answered_within_the_grace(
    slow_grpc_server: Server,
) -> None:
    tensor = triton_grpc.InferInput("input", [1, 784], "FP32")
    tensor.set_data_from_numpy(np.full((1, 784), 0.5, dtype=np.float32))
    answers: list[Any] = []

    def call() -> None:
        with triton_grpc.InferenceServerClient(slow_grpc_server.grpc_target) as client:
            answers.append(client.infer("mnist-mlp", [tensor], client_timeout=60))

    in_flight = threading.Thread(target=call)
    in_flight.start()
    time.sleep(SLOW_BATCH_S / 4)  # queued, waiting for company
    slow_grpc_server.process.send_signal(signal.SIGTERM)
    time.sleep(SLOW_BATCH_S / 4)  # no drain: the listeners are closed by now
    with (
        triton_grpc.InferenceServerClient(slow_grpc_server.grpc_target) as late,
        pytest.raises(triton_grpc.InferenceServerException) as refused,
    ):
        late.infer("mnist-mlp", [tensor], client_timeout=10)
    in_flight.join(timeout=60)

    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert len(answers) == 1 and answers[0].as_numpy("probabilities").shape == (1, 10)
    assert slow_grpc_server.process.wait(timeout=60) == 0
