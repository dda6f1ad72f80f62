"""`batchserve serve --workers 2`: the real command as a process, over loopback. Both workers
answer on the one port with the models' answers, /metrics from any worker counts every worker's
requests, a killed worker is replaced, SIGTERM and SIGINT drain them all, and workers that keep
failing to start make the supervisor give up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, live_server, settings_for, write_tiny_repository
from tests.numbers import same_numbers

pytestmark = pytest.mark.slow  # each server starts two interpreters that import torch

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
PREDICT = "/v1/models/mnist-mlp/predict"
START_S = 180.0  # a generous bound for two workers importing torch on a busy machine
WAIT_S = 60.0  # for anything else the tests wait on
# Requests sent one per connection until both workers have answered some: far more than needed
# unless the kernel never hands one of them a connection.
MOST_TRIES = 400


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    grpc_port: int | None = None
    health_port: int | None = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(repository: Path, log: Path, *argv: str, **env: str) -> Iterator[Served]:
    """`python -m app serve --workers 2 ARGV` until every worker serves; killed afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "app", "serve", "--workers", str(WORKERS)]
    command += ["--host", "127.0.0.1", "--port", str(port), *argv]
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BATCHSERVE_")},
        "BATCHSERVE_MODEL_REPOSITORY": str(repository),
        "BATCHSERVE_ACCESS_LOG": "false",
        "BATCHSERVE_DEVICE": "cpu",
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_for(lambda: len(worker_requests(served.url)) == WORKERS, START_S, served)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()  # the workers follow: they get SIGTERM when the supervisor dies
                process.wait()


def _wait_for(condition: Callable[[], bool], timeout_s: float, served: Served) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise AssertionError(f"the server exited:\n{served.log_text()[-3000:]}")
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting after {timeout_s:.0f} s:\n{served.log_text()[-3000:]}")


def samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named `name` in /metrics (one scrape, one connection)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def worker_requests(url: str) -> dict[int, float]:
    """pid -> inference requests answered, for each live worker."""
    return {int(labels["pid"]): v for labels, v in samples(url, "batchserve_worker_requests")}


def answered(url: str, protocol: str = "http") -> float:
    """batchserve_requests_total with status 200 over `protocol`, all workers together."""
    rows = samples(url, "batchserve_requests_total")
    wanted = {"status": "200", "protocol": protocol}
    return sum(v for labels, v in rows if wanted.items() <= labels.items())


def digit(i: int) -> list[float]:
    return [((i * 7 + j) % 11) / 10 for j in range(784)]


def predict(url: str, i: int) -> httpx.Response:
    """One predict request on a connection of its own (the kernel picks the worker for each)."""
    return httpx.post(f"{url}{PREDICT}", json={"inputs": [digit(i)]}, timeout=30)


# -------------------------------------------------------------------------- one shared server


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("workers") / "repository")


@pytest.fixture(scope="module")
def two_workers(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two workers with gRPC and the health port on, for the tests that do not stop them."""
    grpc_port, health_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("log") / "serve.log"
    argv = ["--grpc-port", str(grpc_port), "--health-port", str(health_port)]
    with serving(repository, log, *argv) as served:
        served.grpc_port, served.health_port = grpc_port, health_port
        yield served


def test_both_workers_answer_and_give_the_models_answers(
    two_workers: Served, repository: Path
) -> None:
    url = two_workers.url
    before = worker_requests(url)
    answers = []
    for i in range(MOST_TRIES):
        response = predict(url, i % 8)
        assert response.status_code == 200, response.text
        answers.append(response.json())
        if i % 20 == 19:
            _wait_for(_counted(url, before, i + 1), WAIT_S, two_workers)
            if all(worker_requests(url)[pid] > before[pid] for pid in before):
                break
    assert all(worker_requests(url)[pid] > before[pid] for pid in before), worker_requests(url)
    with live_server(settings_for(repository)) as one_process:
        expected = [predict(one_process, i % 8).json() for i in range(8)]
    for i, answer in enumerate(answers):
        assert same_numbers(answer, expected[i % 8]), (answer, expected[i % 8])


def _counted(url: str, before: dict[int, float], sent: int) -> Callable[[], bool]:
    """Whether the live workers' own counts, less `before`, have reached `sent` (each worker
    refreshes its own every second)."""
    return lambda: sum(worker_requests(url).values()) - sum(before.values()) == sent


def test_metrics_from_any_worker_count_every_workers_requests(two_workers: Served) -> None:
    url = two_workers.url
    start = answered(url)
    for i in range(30):
        assert predict(url, i).status_code == 200
    # Ten scrapes, each on a new connection: whichever worker answers, it counts all of them.
    totals = [answered(url) - start for _ in range(10)]
    assert totals == [30] * 10


def test_grpc_calls_reach_the_workers_and_are_counted(two_workers: Served) -> None:
    url, target = two_workers.url, f"127.0.0.1:{two_workers.grpc_port}"
    start = answered(url, "grpc")
    tensor = triton_grpc.InferInput("input", [1, 784], "FP32")
    tensor.set_data_from_numpy(np.asarray([digit(3)], dtype=np.float32))
    for _ in range(12):
        with triton_grpc.InferenceServerClient(target) as client:  # a connection per call
            result = client.infer("mnist-mlp", [tensor])
        assert result.as_numpy("probabilities").shape == (1, 10)
    assert answered(url, "grpc") - start == 12


def test_the_shared_health_port_answers_for_a_worker(two_workers: Served) -> None:
    probe = f"http://127.0.0.1:{two_workers.health_port}/v2/health/ready"
    assert [httpx.get(probe, timeout=10).status_code for _ in range(6)] == [200] * 6


# -------------------------------------------------------------------------- servers of their own


def test_a_killed_worker_is_replaced_and_requests_keep_succeeding(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    with serving(repository, tmp_path / "serve.log") as served:
        url = served.url
        victim = next(iter(worker_requests(url)))
        sent = 0
        while worker_requests(url)[victim] == 0 and sent < MOST_TRIES:  # it has counts to keep
            assert predict(url, sent).status_code == 200
            sent += 1
            if sent % 10 == 0:
                _wait_for(_counted(url, {}, sent), WAIT_S, served)
        os.kill(victim, signal.SIGKILL)
        # The other worker accepts from the same socket at once, before the replacement serves.
        for i in range(20):
            assert predict(url, i).status_code == 200
        sent += 20
        _wait_for(lambda: _replaced(url, victim), START_S, served)
        for i in range(10):
            assert predict(url, i).status_code == 200
        sent += 10

        assert answered(url) == sent  # the dead worker's counts stay in the totals
        assert samples(url, "batchserve_worker_restarts")[0][1] == 1
        assert f"pid {victim}) was killed by SIGKILL; starting a new one" in served.log_text()


def _replaced(url: str, victim: int) -> bool:
    pids = worker_requests(url)
    return len(pids) == WORKERS and victim not in pids


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_drains_every_worker_and_exits_0(
    tmp_path: Path, stop: signal.Signals
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    # A lone request waits 2 s for company: it is in a worker when the signal comes.
    slow = {"BATCHSERVE_MAX_BATCH_DELAY_MS": "2000", "BATCHSERVE_BATCH_IDLE_TURNS": "0"}
    with serving(repository, tmp_path / "serve.log", **slow) as served:
        pids = list(worker_requests(served.url))
        answers: list[httpx.Response] = []
        in_flight = threading.Thread(target=lambda: answers.append(predict(served.url, 1)))
        in_flight.start()
        time.sleep(0.5)  # sent and queued; not a timing assertion, the batch delay covers it
        served.process.send_signal(stop)
        in_flight.join(timeout=WAIT_S)

        assert served.process.wait(timeout=WAIT_S) == 0
        assert [a.status_code for a in answers] == [200]
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{served.url}/v2/health/live")


def test_workers_that_keep_failing_to_start_make_the_supervisor_give_up(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    port = free_port()
    with socket.socket() as taken:  # the gRPC port, held by someone else: no worker can start
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port = taken.getsockname()[1]
        log = tmp_path / "serve.log"
        with log.open("wb") as output:
            command = [sys.executable, "-m", "app", "serve", "--workers", str(WORKERS)]
            command += ["--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port)]
            env = {**os.environ, "BATCHSERVE_MODEL_REPOSITORY": str(repository)}
            process = subprocess.run(
                command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                timeout=START_S * 2, check=False,
            )  # fmt: skip
    text = log.read_text(errors="replace")
    assert process.returncode == 1, text[-3000:]
    assert "5 failed starts in a row; giving up" in text
    assert text.count("before it was ready; starting another in") == 4
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
