"""Two batchserve replicas behind a real HAProxy with the shipped deploy/haproxy/haproxy.cfg, under
continuous load from several client threads: a rolling restart costs the clients nothing, and
kill -9 of a replica costs them nothing the config's retry policy could have hidden."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bench.balancer import CONFIG, Balancer, find_haproxy, replicas_behind_haproxy

CLIENTS = 8
# Each request waits this long in a replica's batcher, so that several are in flight there when
# it is stopped or killed: the case a retry policy is for.
BATCH_DELAY_MS = 50
DRAIN_S = 3.0  # > HAProxy's `fall 2` x `inter 1s`: it marks a draining replica down in time
# One real trained model answering a known input, so that a wrong answer counts as a failure too.
REQUEST = ("/v1/models/names-rnn/predict", {"inputs": ["Nakamura"], "top_k": 1})
ANSWER = "JP"


@dataclass
class Failure:
    at_s: float
    # "status" (a 5xx from HAProxy), "no response", "truncated", "transport", "wrong answer"
    kind: str
    detail: str


@dataclass
class Load:
    """CLIENTS threads, each on its own keep-alive connection, posting until stopped."""

    url: str
    ok: list[float] = field(default_factory=list)  # when each good answer came (monotonic)
    failures: list[Failure] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> None:
        path, body = REQUEST
        with httpx.Client(base_url=self.url, timeout=20) as http:
            while not self.stop.is_set():
                failure = _one_request(http, path, body)
                with self.lock:
                    if failure is None:
                        self.ok.append(time.monotonic())
                    else:
                        self.failures.append(failure)

    def ok_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for t in self.ok if start <= t <= end)


def _one_request(http: httpx.Client, path: str, body: object) -> Failure | None:
    now = time.monotonic()
    try:
        response = http.post(path, json=body)
    except httpx.RemoteProtocolError as exc:
        # HAProxy closes a keep-alive client connection without an answer when it gives up on a
        # request; a response cut off half-way reads differently ("incomplete", "received").
        kind = "no response" if "without sending a response" in str(exc) else "truncated"
        return Failure(now, kind, repr(exc))
    except httpx.HTTPError as exc:
        return Failure(now, "transport", repr(exc))
    if response.status_code != 200:
        return Failure(now, "status", f"{response.status_code} {response.text[:200]}")
    label = response.json()["predictions"][0]["label"]
    return None if label == ANSWER else Failure(now, "wrong answer", label)


@pytest.fixture(scope="module")
def haproxy() -> str:
    found = find_haproxy()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have haproxy (apt-get install haproxy)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return found


@pytest.fixture
def balancer(haproxy: str, tmp_path: Path) -> Iterator[Balancer]:
    env = {
        "BATCHSERVE_SHUTDOWN_DRAIN_S": str(DRAIN_S),
        "BATCHSERVE_SHUTDOWN_GRACE_S": "20",
        "BATCHSERVE_ACCESS_LOG": "false",
        "BATCHSERVE_LOG_LEVEL": "warning",
        "BATCHSERVE_DEVICE": "cpu",
        "BATCHSERVE_MAX_BATCH_DELAY_MS": str(BATCH_DELAY_MS),
        "BATCHSERVE_BATCH_IDLE_TURNS": "0",  # wait out the delay even when arrivals stop
        "OMP_NUM_THREADS": "1",
    }
    with replicas_behind_haproxy(tmp_path, haproxy, env) as lb:
        yield lb


@pytest.fixture
def load(balancer: Balancer) -> Iterator[Load]:
    load = Load(balancer.url)
    threads = [threading.Thread(target=load.client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(30)


def _wait_for_answers(load: Load, count: int, timeout_s: float = 30.0) -> None:
    start = time.monotonic()
    while load.ok_between(start, time.monotonic()) < count:
        assert time.monotonic() - start < timeout_s, f"no {count} answers in {timeout_s} s"
        time.sleep(0.05)


def test_the_shipped_config_is_valid_for_haproxy(haproxy: str) -> None:
    # -c parses and checks, binding nothing: the default addresses are fine here.
    done = subprocess.run(
        [haproxy, "-c", "-f", str(CONFIG)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_a_rolling_restart_under_load_fails_no_request(balancer: Balancer, load: Load) -> None:
    _wait_for_answers(load, 50)
    for replica in balancer.replicas:
        began = time.monotonic()
        # Stop the old one (it drains, then exits 0), start its successor, wait until it is
        # ready and HAProxy routes to it again; only then go on to the next replica.
        assert replica.terminate() == 0, replica.log_tail()
        replica.start()
        replica.wait_ready()
        balancer.wait_state(replica.name, "UP")
        # The load went on while this replica was away: the other one answered.
        assert load.ok_between(began, time.monotonic()) > 0
        _wait_for_answers(load, 50)
    load.stop.set()
    assert load.failures == []
    assert len(load.ok) > 200


@pytest.mark.slow
def test_kill_9_of_a_replica_under_load_shows_no_failure_a_retry_could_hide(
    balancer: Balancer, load: Load
) -> None:
    _wait_for_answers(load, 50)
    victim = balancer.replicas[0]
    killed_at = time.monotonic()
    victim.kill()
    balancer.wait_state(victim.name, "DOWN")
    _wait_for_answers(load, 200)
    load.stop.set()
    # Connection refused or reset, an empty answer, a 503: HAProxy retries each on the other
    # replica, so none may reach a client. Only an answer already under way when the replica
    # died cannot be taken back; it would show up as "truncated".
    hideable = [f for f in load.failures if f.kind != "truncated"]
    assert hideable == []
    assert load.ok_between(killed_at, time.monotonic()) >= 200
