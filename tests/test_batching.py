"""Dynamic batching, observed through the real server and on the batcher itself."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import DeadlineTooShort, ItemFailed, QueueFull
from app.serving.batcher import BatchLimits, BatchReport, DynamicBatcher
from tests.conftest import live_server, settings_for, write_tiny_repository
from tests.numbers import LOG_PROB_TOLERANCE, PROBABILITY_TOLERANCE

NAMES = ["Nakamura", "Kowalski", "Rossi", "Smith", "Ng", "Papadopoulos", "Li", "Schmidt"]


def _images(count: int, seed: int = 0) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.random() for _ in range(784)] for _ in range(count)]


def _metric(text: str, name: str, model: str) -> float:
    pattern = rf'^{name}\{{model="{model}",version="1"\}} (\S+)$'
    values = [float(m.group(1)) for m in re.finditer(pattern, text, re.M)]
    return sum(values)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return write_tiny_repository(tmp_path / "repository")


async def _post_all(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def test_concurrent_requests_share_one_forward_pass(repository: Path) -> None:
    settings = settings_for(repository, max_batch_delay_ms=200, batch_idle_turns=0)
    with live_server(settings) as url:
        bodies = [{"inputs": [image]} for image in _images(16)]
        responses = asyncio.run(_post_all(url, "/v1/models/mnist-mlp/predict", bodies))
        metrics = httpx.get(f"{url}/metrics").text
    assert all(r.status_code == 200 for r in responses)
    batches = _metric(metrics, "batchserve_batch_size_count", "mnist-mlp")
    items = _metric(metrics, "batchserve_batch_size_sum", "mnist-mlp")
    assert items == 16
    assert batches < 16, "no two requests shared a forward pass"


@pytest.fixture(scope="module")
def batching_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose batches wait up to 100 ms, shared by the tests that only read from it."""
    repository = write_tiny_repository(tmp_path_factory.mktemp("repository"))
    with live_server(settings_for(repository, max_batch_delay_ms=100)) as url:
        yield url


def test_batched_results_equal_results_sent_alone_in_order(batching_url: str) -> None:
    images = _images(12, seed=1)
    url = batching_url
    alone = [
        httpx.post(f"{url}/v1/models/mnist-mlp/predict", json={"inputs": [im], "top_k": 10})
        for im in images
    ]
    together = asyncio.run(
        _post_all(
            url,
            "/v1/models/mnist-mlp/predict",
            [{"inputs": [im], "top_k": 10} for im in images],
        )
    )
    one_request = httpx.post(
        f"{url}/v1/models/mnist-mlp/predict", json={"inputs": images, "top_k": 10}
    )
    expected = [r.json()["predictions"][0] for r in alone]
    for got in ([r.json()["predictions"][0] for r in together], one_request.json()["predictions"]):
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert g["label"] == e["label"]
            by_label = {p["label"]: p["probability"] for p in e["top_k"]}
            for p in g["top_k"]:
                assert abs(p["probability"] - by_label[p["label"]]) <= PROBABILITY_TOLERANCE


def test_text_items_of_mixed_lengths_batch_like_alone(batching_url: str) -> None:
    url = batching_url
    alone = [
        httpx.post(
            f"{url}/v1/models/names-lm/score", json={"inputs": [n], "per_token": True}
        ).json()
        for n in NAMES
    ]
    together = httpx.post(
        f"{url}/v1/models/names-lm/score", json={"inputs": NAMES, "per_token": True}
    )
    rnn_alone = [
        httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": [n]}).json() for n in NAMES
    ]
    rnn_together = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": NAMES}).json()
    for one, batched in zip(alone, together.json()["scores"], strict=True):
        assert abs(one["scores"][0]["log_prob"] - batched["log_prob"]) <= LOG_PROB_TOLERANCE
        assert [t["token"] for t in batched["tokens"]] == [
            t["token"] for t in one["scores"][0]["tokens"]
        ]
    for one, batched in zip(rnn_alone, rnn_together["predictions"], strict=True):
        difference = one["predictions"][0]["probability"] - batched["probability"]
        assert abs(difference) <= PROBABILITY_TOLERANCE


def test_large_request_is_split_across_batches_and_reassembled(repository: Path) -> None:
    images = _images(10, seed=2)
    settings = settings_for(repository, max_batch_size=4, max_batch_delay_ms=0)
    with live_server(settings) as url:
        alone = [
            httpx.post(f"{url}/v1/models/mnist-mlp/predict", json={"inputs": [im]}).json()
            for im in images
        ]
        before = _metric(
            httpx.get(f"{url}/metrics").text, "batchserve_batch_size_count", "mnist-mlp"
        )
        split = httpx.post(f"{url}/v1/models/mnist-mlp/predict", json={"inputs": images}).json()
        after = _metric(
            httpx.get(f"{url}/metrics").text, "batchserve_batch_size_count", "mnist-mlp"
        )
    assert after - before == 3  # 4 + 4 + 2
    for one, part in zip(alone, split["predictions"], strict=True):
        assert abs(one["predictions"][0]["probability"] - part["probability"]) <= 1e-6


def test_queue_full_returns_503_with_retry_after(repository: Path) -> None:
    # A queue of 4 items has no room for a request of 5 (a request's items go in all or none);
    # one of 4 fits. Bursts of many requests against a full queue: tests/test_client.py.
    settings = settings_for(repository, max_queue_size=4, retry_after_s=3)
    with live_server(settings) as url:
        fits = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": NAMES[:4]})
        too_many = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": NAMES[:5]})
    assert fits.status_code == 200
    assert too_many.status_code == 503
    assert too_many.headers["retry-after"] == "3"
    assert "queue" in too_many.json()["error"]


def test_expired_deadline_returns_504_and_skips_the_work(repository: Path) -> None:
    settings = settings_for(repository, max_batch_delay_ms=300, batch_idle_turns=0)
    with live_server(settings) as url:
        response = httpx.post(
            f"{url}/v1/models/names-rnn/predict",
            json={"inputs": ["Kim"]},
            headers={"X-Request-Timeout-Ms": "20"},
        )
        time.sleep(0.5)
        computed = _metric(httpx.get(f"{url}/metrics").text, "batchserve_items_total", "names-rnn")
    assert response.status_code == 504
    assert "deadline" in response.json()["error"]
    assert computed == 0


def test_disconnected_clients_items_are_not_computed(repository: Path) -> None:
    settings = settings_for(repository, max_batch_delay_ms=500, batch_idle_turns=0)
    with live_server(settings) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": NAMES}, timeout=0.1)
        time.sleep(0.8)  # past the batch delay: the batch would have run by now
        metrics = httpx.get(f"{url}/metrics").text
        still_serving = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": ["Kim"]})
    assert _metric(metrics, "batchserve_items_total", "names-rnn") == 0
    assert still_serving.status_code == 200


# -- the batcher on its own ----------------------------------------------------------------------


def _double_unless_poisoned(items: list[int]) -> list[int]:
    if any(i < 0 for i in items):
        raise ValueError("poisoned item")
    return [2 * i for i in items]


async def test_poisoned_item_fails_alone_and_its_neighbours_are_answered() -> None:
    reports: list[BatchReport] = []
    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(
            _double_unless_poisoned,
            executor,
            BatchLimits(max_batch_delay_ms=50),
            observer=reports.append,
        )
        batcher.start()
        work = batcher.submit([1, 2, -3, 4])
        results = await asyncio.gather(*(w.future for w in work), return_exceptions=True)
        await batcher.stop()
    assert results[:2] == [2, 4] and results[3] == 8
    assert isinstance(results[2], ItemFailed) and "poisoned" in results[2].message
    assert reports[0].size == 4 and reports[0].failed_items == 1


async def test_wrong_number_of_outputs_is_caught_per_item() -> None:
    def drops_last(items: list[int]) -> list[int]:
        return items[:-1] if len(items) > 1 else items

    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(drops_last, executor, BatchLimits(max_batch_delay_ms=50))
        batcher.start()
        work = batcher.submit([5, 6, 7])
        results = await asyncio.gather(*(w.future for w in work))
        await batcher.stop()
    assert results == [5, 6, 7]  # retried one by one, each answered correctly


async def test_token_cap_closes_a_batch_before_a_long_item() -> None:
    sizes: list[int] = []

    def record(items: list[str]) -> list[int]:
        sizes.append(len(items))
        return [len(i) for i in items]

    with ThreadPoolExecutor(1) as executor:
        limits = BatchLimits(max_batch_delay_ms=50, max_batch_tokens=10)
        batcher = DynamicBatcher(record, executor, limits, item_tokens=len)
        batcher.start()
        work = batcher.submit(["abc", "defg", "x" * 30, "hi"])
        results = await asyncio.gather(*(w.future for w in work))
        await batcher.stop()
    assert results == [3, 4, 30, 2]
    assert sizes == [2, 1, 1]  # 3+4 fit in 10; the 30-token string runs alone; then "hi"


async def test_full_queue_refuses_the_whole_request_at_once() -> None:
    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(
            _double_unless_poisoned,
            executor,
            BatchLimits(max_batch_delay_ms=1000, max_queue_size=3),
        )
        batcher.start()
        accepted = batcher.submit([1, 2])
        with pytest.raises(QueueFull):
            batcher.submit([3, 4])
        assert batcher.queued_items == 2  # nothing of the refused request was queued
        assert await asyncio.gather(*(w.future for w in accepted)) == [2, 4]
        await batcher.stop()


async def test_a_batch_closes_early_once_arrivals_stop() -> None:
    # The delay is an upper bound: with nothing else arriving, the lone item runs at once.
    with ThreadPoolExecutor(1) as executor:
        limits = BatchLimits(max_batch_delay_ms=600_000, idle_turns_to_close=4)
        batcher = DynamicBatcher(_double_unless_poisoned, executor, limits)
        batcher.start()
        work = batcher.submit([21])
        assert await asyncio.wait_for(work[0].future, timeout=60) == 42
        await batcher.stop()


async def test_a_batch_keeps_collecting_while_items_keep_arriving() -> None:
    sizes: list[int] = []

    def record(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    with ThreadPoolExecutor(1) as executor:
        limits = BatchLimits(max_batch_delay_ms=600_000, idle_turns_to_close=4)
        batcher = DynamicBatcher(record, executor, limits)
        batcher.start()
        work = batcher.submit([0])
        for i in range(1, 6):  # one new item every other loop turn: never 4 idle turns
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            work += batcher.submit([i])
        results = await asyncio.wait_for(asyncio.gather(*(w.future for w in work)), timeout=60)
        await batcher.stop()
    assert results == list(range(6))
    assert sizes == [6]


def _slow(items: list[int]) -> list[int]:
    time.sleep(0.2)  # a model whose batches take 200 ms
    return items


async def test_a_deadline_shorter_than_any_batch_is_refused_at_once_as_too_short() -> None:
    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(_slow, executor, BatchLimits(max_batch_delay_ms=0))
        batcher.start()
        await batcher.submit([1])[0].future  # one batch teaches it how long batches take
        # The queue is empty: no load could make 20 ms enough, so retrying cannot help.
        with pytest.raises(DeadlineTooShort, match="at least 2"):
            batcher.submit([2], deadline=time.monotonic() + 0.02)
        assert batcher.queued_items == 0
        assert await batcher.submit([3], deadline=time.monotonic() + 30)[0].future == 3
        await batcher.stop()


async def test_a_deadline_that_only_the_queue_ahead_makes_too_short_is_a_full_queue() -> None:
    limits = BatchLimits(max_batch_size=1, max_batch_delay_ms=0)
    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(_slow, executor, limits)
        batcher.start()
        await batcher.submit([1])[0].future
        ahead = batcher.submit([2, 3, 4])  # about 600 ms of work queued
        with pytest.raises(QueueFull, match="expected wait") as refused:
            batcher.submit([5], deadline=time.monotonic() + 0.3)  # idle, 300 ms would do
        assert refused.value.headers["Retry-After"] == "1"
        assert await asyncio.gather(*(w.future for w in ahead)) == [2, 3, 4]
        await batcher.stop()


# -- waiting for room in a full queue ------------------------------------------------------------


def _held_batcher(wait_ms: float) -> tuple[DynamicBatcher, threading.Event, ThreadPoolExecutor]:
    """A batcher of one-item batches whose forward passes block until the event is set: with
    two batches in flight and a queue of one item, a fourth request finds the queue full."""
    gate = threading.Event()

    def held(items: list[int]) -> list[int]:
        gate.wait(30)
        return items

    limits = BatchLimits(
        max_batch_size=1, max_batch_delay_ms=0, max_queue_size=1, max_queue_wait_ms=wait_ms
    )
    executor = ThreadPoolExecutor(1)
    batcher = DynamicBatcher(held, executor, limits)
    batcher.start()
    return batcher, gate, executor


async def _fill(batcher: DynamicBatcher) -> list[asyncio.Future[int]]:
    """Two items taken into batches (one computing, one next), then one queued: full."""
    futures = []
    for i in range(3):
        futures += [w.future for w in batcher.submit([i])]
        for _ in range(1000):  # bounded: the batcher takes the first two at once
            if i == 2 or batcher.queued_items == 0:
                break
            await asyncio.sleep(0.001)
    assert batcher.queued_items == 1
    return futures


async def test_requests_that_find_the_queue_full_wait_their_turn_and_are_all_served() -> None:
    batcher, gate, executor = _held_batcher(wait_ms=30_000)
    let_in: list[int] = []

    async def late(i: int) -> int:
        await batcher.wait_for_room()
        let_in.append(i)
        return int(await batcher.submit([i])[0].future)

    with executor:
        early = await _fill(batcher)
        waiting = [asyncio.create_task(late(i)) for i in (3, 4, 5)]
        await asyncio.sleep(0.05)
        assert let_in == [] and batcher.queued_items == 1  # they wait, unparsed, unrefused
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*early, *waiting), timeout=30)
        await batcher.stop()
    assert let_in == [3, 4, 5]  # first come, first served
    assert results == [0, 1, 2, 3, 4, 5]


async def test_a_request_waits_for_room_no_longer_than_the_wait_then_gets_a_full_queue() -> None:
    batcher, gate, executor = _held_batcher(wait_ms=50)
    with executor:
        early = await _fill(batcher)
        started = time.monotonic()
        with pytest.raises(QueueFull, match="waited 50 ms") as refused:
            await batcher.wait_for_room()
        waited = time.monotonic() - started
        gate.set()
        await asyncio.wait_for(asyncio.gather(*early), timeout=30)
        # Nothing of the one that gave up is left behind: the next request gets in at once.
        await asyncio.wait_for(batcher.wait_for_room(), timeout=5)
        await batcher.stop()
    assert refused.value.headers["Retry-After"] == "1"
    assert waited >= 0.04


async def test_a_deadline_shortens_the_wait_for_room() -> None:
    batcher, gate, executor = _held_batcher(wait_ms=30_000)
    with executor:
        early = await _fill(batcher)
        with pytest.raises(QueueFull, match="waited 100 ms"):
            await batcher.wait_for_room(deadline=time.monotonic() + 0.1)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*early), timeout=30)
        await batcher.stop()


async def test_a_request_cancelled_while_waiting_leaves_no_place_taken() -> None:
    batcher, gate, executor = _held_batcher(wait_ms=30_000)
    with executor:
        early = await _fill(batcher)
        waiter = asyncio.create_task(batcher.wait_for_room())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.set()
        await asyncio.wait_for(asyncio.gather(*early), timeout=30)
        # With the queue empty and no one live waiting, a request goes straight in.
        await asyncio.wait_for(batcher.wait_for_room(), timeout=5)
        assert await batcher.submit([7])[0].future == 7
        await batcher.stop()


def test_a_burst_at_a_full_queue_waits_for_room_instead_of_503(repository: Path) -> None:
    # The same burst at a queue of one item that refuses at once gets 503s (tests/test_client.py).
    settings = settings_for(
        repository, max_queue_size=1, max_batch_delay_ms=50, batch_idle_turns=0,
        max_queue_wait_ms=20_000,
    )  # fmt: skip
    with live_server(settings) as url:
        bodies = [{"inputs": [image]} for image in _images(24, seed=3)]
        responses = asyncio.run(_post_all(url, "/v1/models/mnist-mlp/predict", bodies))
        alone = [
            httpx.post(f"{url}/v1/models/mnist-mlp/predict", json=b).json() for b in bodies[:4]
        ]
    assert [r.status_code for r in responses] == [200] * 24
    for one, answered in zip(alone, responses, strict=False):
        got, want = answered.json()["predictions"][0], one["predictions"][0]
        assert got["label"] == want["label"]
        assert abs(got["probability"] - want["probability"]) <= PROBABILITY_TOLERANCE


def _threads_recorded(seconds: float = 0.0) -> tuple[list[int], Any]:
    threads: list[int] = []

    def run(items: list[int]) -> list[int]:
        threads.append(threading.get_ident())
        time.sleep(seconds)
        return [2 * i for i in items]

    return threads, run


async def test_a_lone_item_of_a_quick_model_runs_on_the_event_loop() -> None:
    """The hand-off to the inference thread is most of a small model's answer at concurrency
    1: once one item is known to be quick, a lone item with the thread idle runs on the loop."""
    loop_thread = threading.get_ident()
    threads, run = _threads_recorded()
    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(run, executor, BatchLimits(max_batch_delay_ms=0))
        batcher.start()
        answers = [await batcher.submit([i])[0].future for i in range(4)]
        together = batcher.submit([10, 11, 12])  # a batch of three: the thread, as always
        answers += await asyncio.gather(*(w.future for w in together))
        await batcher.stop()
    assert answers == [0, 2, 4, 6, 20, 22, 24]
    assert threads[0] != loop_thread  # nothing known yet: the thread
    assert threads[1:4] == [loop_thread] * 3
    assert loop_thread not in threads[4:]


async def test_a_slow_model_or_inline_max_0_always_uses_the_inference_thread() -> None:
    loop_thread = threading.get_ident()
    for seconds, inline_max_ms in ((0.002, 0.5), (0.0, 0.0)):
        threads, run = _threads_recorded(seconds)
        with ThreadPoolExecutor(1) as executor:
            limits = BatchLimits(max_batch_delay_ms=0, inline_max_ms=inline_max_ms)
            batcher = DynamicBatcher(run, executor, limits)
            batcher.start()
            answers = [await batcher.submit([i])[0].future for i in range(4)]
            await batcher.stop()
        assert answers == [0, 2, 4, 6]
        assert loop_thread not in threads, (seconds, inline_max_ms)


async def test_a_lone_item_waits_for_the_thread_while_a_batch_computes_there() -> None:
    """Two computations at once would contend for the device: with a batch on the inference
    thread, a lone item queues behind it there instead of running on the loop."""
    loop_thread = threading.get_ident()
    threads: list[tuple[list[int], int]] = []
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        threads.append((items, threading.get_ident()))
        if 100 in items:
            release.wait(10)
        return items

    with ThreadPoolExecutor(1) as executor:
        batcher = DynamicBatcher(run, executor, BatchLimits(max_batch_delay_ms=0))
        batcher.start()
        assert await batcher.submit([1])[0].future == 1  # now known to be quick
        held = batcher.submit([100, 101])  # two items: the thread, held there
        while len(threads) < 2:
            await asyncio.sleep(0.001)
        lone = batcher.submit([5])[0]
        for _ in range(20):
            await asyncio.sleep(0.001)
        assert not lone.future.done()  # not run on the loop past the held batch
        release.set()
        assert await lone.future == 5
        assert [await w.future for w in held] == [100, 101]
        await batcher.stop()
    assert [t for items, t in threads if items == [5]] != [loop_thread]
