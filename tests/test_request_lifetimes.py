"""No accepted request is lost or kept: completions in flight while their model is unloaded are
all answered (each with an access-log line and a metric), and clients that leave leave nothing
reachable behind them. Live servers on loopback."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import ClientDisconnected
from app.serving.batcher import DynamicBatcher
from app.serving.generation import GeneratingSequence
from tests.conftest import SHIPPED, live_app, settings_for

ADMIN = {"Authorization": "Bearer admin-secret"}
COMPLETION = {"model": "names-lm", "prompt": "Ko", "max_tokens": 24, "n": 8, "temperature": 1.0}


def _counted(metrics: str, name: str, *labels: str) -> float:
    """The sum of the samples of `name` that have all of `labels` (each `key="value"`)."""
    pattern = re.compile(rf"^{name}\{{([^}}]*)\}} (\S+)$")
    matches = (pattern.match(line) for line in metrics.splitlines())
    return sum(
        float(m.group(2)) for m in matches if m and all(label in m.group(1) for label in labels)
    )


async def _plain(client: httpx.AsyncClient, seed: int) -> int:
    response = await client.post("/v1/completions", json={**COMPLETION, "seed": seed})
    if response.status_code == 200:
        assert len(response.json()["choices"]) == COMPLETION["n"]
    return response.status_code


async def _streamed(client: httpx.AsyncClient, seed: int) -> int:
    body = {**COMPLETION, "seed": seed, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    if response.status_code == 200:
        assert events[-1] == "data: [DONE]"
        finished = [json.loads(e[6:]) for e in events[:-1]]
        reasons = [c["finish_reason"] for e in finished for c in e["choices"]]
        assert sum(r is not None for r in reasons) == COMPLETION["n"], events[-3:]
    return response.status_code


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    shutil.copytree(SHIPPED / "names-lm", root / "names-lm")
    return root


def test_completions_in_flight_when_their_model_unloads_are_all_answered(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Streaming and plain completions are sent, and the model is unloaded while their first
    steps run. Each gets an answer (its whole completion, or a refusal if it came too late),
    none is left hanging, and each has an access-log line and a count in the metrics."""
    sent = 0
    statuses: list[int] = []
    settings = settings_for(repository, admin_api_key="admin-secret", access_log=True)
    with (
        caplog.at_level("INFO", logger="batchserve.access"),
        live_app(settings) as (url, app),
    ):

        async def round_(client: httpx.AsyncClient, calls: list[Any]) -> list[int]:
            # A slow forward pass holds the model's inference thread (a sleep stands in for
            # it), so that the first completion's first step waits behind it; the unload comes
            # while it waits (in its first step, neither queued nor running).
            executor = app.plane.registry.get("names-lm").batcher.executor
            held = executor.submit(time.sleep, 0.4)
            first = asyncio.ensure_future(calls[0])
            await asyncio.sleep(0.1)  # sent; its first step is queued on the thread
            unloading = asyncio.ensure_future(
                client.post("/v2/repository/models/names-lm/unload", headers=ADMIN)
            )
            await asyncio.sleep(0.05)
            rest = [asyncio.ensure_future(c) for c in calls[1:]]  # while it unloads
            answered = await asyncio.wait_for(asyncio.gather(first, *rest), timeout=30)
            assert (await unloading).status_code == 200
            held.result()
            loaded = await client.post("/v2/repository/models/names-lm/load", headers=ADMIN)
            assert loaded.status_code == 200
            return answered

        async def rounds() -> None:
            nonlocal sent
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                for r in range(6):
                    kind = _streamed if r % 2 else _plain
                    calls = [kind(client, 100 * r + i) for i in range(1 + 3 * (r >= 4))]
                    calls += [_streamed(client, 100 * r + 50), _plain(client, 100 * r + 60)]
                    statuses.extend(await round_(client, calls))
                    sent += len(calls)
                metrics = (await client.get("/metrics")).text
            # Answered ones are counted by endpoint and status; refused ones by reason too.
            answered = _counted(
                metrics, "batchserve_requests_total", 'endpoint="completions"', 'status="200"'
            )
            refused = _counted(metrics, "batchserve_rejected_requests_total")
            assert answered == statuses.count(200)
            assert refused == len(statuses) - statuses.count(200)

        asyncio.run(rounds())
    assert len(statuses) == sent
    assert set(statuses) <= {200, 400, 503}, statuses
    assert 200 in statuses
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "batchserve.access"]
    completions = [line for line in lines if line.get("path") == "/v1/completions"]
    assert len(completions) == sent, [line.get("status") for line in completions]
    assert sorted(line["status"] for line in completions) == sorted(statuses)


def _tracebacks() -> int:
    gc.collect()
    return sum(type(o) is types.TracebackType for o in gc.get_objects())


def _live_objects(kind: type[Any]) -> int:
    gc.collect()
    return sum(type(o) is kind for o in gc.get_objects())


async def _leave_streams(url: str, count: int) -> None:
    """Streaming completions whose clients read one event and leave."""
    body = {**COMPLETION, "stream": True, "n": 4}
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def leave(i: int) -> None:
            async with client.stream("POST", "/v1/completions", json={**body, "seed": i}) as r:
                async for _ in r.aiter_lines():
                    break

        for start in range(0, count, 50):
            await asyncio.gather(*(leave(i) for i in range(start, min(count, start + 50))))


async def _leave_plain(url: str, count: int) -> None:
    """Plain completions whose clients hang up before the answer is ready."""
    body = {**COMPLETION, "n": 16}
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=0.005, limits=limits) as client:

        async def leave(i: int) -> None:
            try:
                await client.post("/v1/completions", json={**body, "seed": i})
            except httpx.TimeoutException:
                pass

        for start in range(0, count, 50):
            await asyncio.gather(*(leave(i) for i in range(start, min(count, start + 50))))


def test_abandoned_completions_leave_nothing_reachable(repository: Path) -> None:
    """A thousand clients that leave (streams read once, plain calls hung up on) while their
    sequences generate: the number of live tracebacks and sequences in the server's process
    stays flat (a shared exception raised again and again kept every one of them alive)."""
    with live_app(settings_for(repository)) as (url, _):
        asyncio.run(_leave_plain(url, 100))  # warm: imports, caches, pools
        asyncio.run(_leave_streams(url, 100))
        asyncio.run(asyncio.sleep(0.5))
        before = _tracebacks(), _live_objects(GeneratingSequence)
        asyncio.run(_leave_plain(url, 500))
        asyncio.run(_leave_streams(url, 500))
        healthy = httpx.get(f"{url}/v2/health/ready", timeout=30)
        asyncio.run(asyncio.sleep(0.5))  # the last sequences see their clients gone
        after = _tracebacks(), _live_objects(GeneratingSequence)
    assert healthy.status_code == 200
    # Left alive would be a traceback chain link per raise and the sequences of each request.
    assert after[0] - before[0] < 100, (before, after)
    assert after[1] - before[1] < 200, (before, after)


class _Body:
    """Stands in for a request's parsed body: a megabyte that must not outlive its request."""

    def __init__(self) -> None:
        self.data = bytearray(1 << 20)


async def test_items_whose_clients_left_are_each_answered_with_their_own_error() -> None:
    """The batcher answers an item whose client left with ClientDisconnected; raised by each
    request's handler (as the data plane raises it), no error may hold an earlier request."""
    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(lambda payloads: payloads, executor)
        batcher.start()

        async def abandoned() -> None:
            body = _Body()  # a local of the handler's frame, as the parsed request is
            (item,) = batcher.submit([len(body.data)], gone=lambda: True)
            error = await asyncio.wait_for(asyncio.shield(item.future), 5)
            raise AssertionError(error)  # never: the future holds an exception

        errors = []
        for _ in range(1000):
            try:
                await abandoned()
            except ClientDisconnected as exc:
                errors.append(exc)
        await batcher.stop()
    assert len({id(e) for e in errors}) == 1000  # one error each, none shared
    del errors
    assert _live_objects(_Body) == 0
