"""Dynamic batching: items from concurrent requests wait in one bounded queue per model version
and leave it together, as one forward pass on the device's inference thread."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from app.errors import (
    DEADLINE_PASSED,
    ClientDisconnected,
    DeadlineExceeded,
    DeadlineTooShort,
    ItemFailed,
    ModelNotReady,
    QueueFull,
    ServiceError,
)

CLIENT_GONE_MESSAGE = "the client disconnected before its answer was ready"


def client_gone() -> ClientDisconnected:
    """A fresh error for one abandoned item. Never share one instance: each raise chains its
    frames into the instance's traceback (keeping every abandoned request's locals alive), and
    the data plane prefixes the message of the error it raises."""
    return ClientDisconnected(CLIENT_GONE_MESSAGE)


BATCHES_IN_FLIGHT = 2  # one computing, the next waiting for the inference thread


@dataclass(slots=True)
class WorkItem:
    payload: Any
    future: asyncio.Future[Any]
    tokens: int
    enqueued_at: float
    deadline: float | None
    gone: Callable[[], bool] | None = None  # the client left: not worth computing
    started: bool = False
    batch_size: int = 0  # filled in when its batch ran, for the access log
    queue_s: float = 0.0
    compute_s: float = 0.0


@dataclass(slots=True)
class BatchReport:
    """What one forward pass did; given to the observer for metrics and access logs."""

    size: int
    tokens: int
    queue_s: list[float]
    compute_s: float
    failed_items: int


@dataclass
class BatchLimits:
    max_batch_size: int = 256
    max_batch_delay_ms: float = 2.0
    max_batch_tokens: int | None = None
    max_queue_size: int = 2048
    # A request that finds the queue full waits this long for room (within its deadline) before
    # it is refused; 0 refuses at once. At most max_waiting requests wait.
    max_queue_wait_ms: float = 0.0
    max_waiting: int = 4096
    retry_after_s: int = 1
    idle_turns_to_close: int = 4  # 0: always wait the full max_batch_delay_ms
    # A batch of one item, with no other batch computing, runs on the event loop itself when one
    # item has been taking at most this long: the hand-off to the inference thread and back
    # costs ~70 us, a third of a small model's answer at concurrency 1. 0: always the thread.
    inline_max_ms: float = 0.5


class _ItemError:
    """A per-item failure carried back from the inference thread."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


@dataclass
class DynamicBatcher:
    """`run_batch(payloads) -> outputs` is called on `executor`, never on the event loop."""

    run_batch: Callable[[list[Any]], Sequence[Any]]
    executor: Executor
    limits: BatchLimits = field(default_factory=BatchLimits)
    item_tokens: Callable[[Any], int] = lambda _: 1
    observer: Callable[[BatchReport], None] | None = None
    _queue: deque[WorkItem] = field(default_factory=deque, init=False)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _in_flight: int = field(default=0, init=False)
    # Seconds from a batch's dispatch until its answers are set, smoothed; it includes the event
    # loop's delay in picking the results up, which is what grows under overload.
    _turnaround_s: float = field(default=0.0, init=False)
    _fastest_s: float = field(default=0.0, init=False)  # the quickest turnaround seen
    _one_item_s: float = field(default=0.0, init=False)  # compute for one item, smoothed
    _last_finished: float = field(default=0.0, init=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    # Requests waiting for room in a full queue, first come first served (some may have given
    # up: `_waiting_live` counts the rest), and those woken whose items are not queued yet.
    _waiting: deque[asyncio.Future[None]] = field(default_factory=deque, init=False)
    _waiting_live: int = field(default=0, init=False)
    _woken: int = field(default=0, init=False)
    _turned_away: bool = field(default=False, init=False)  # refused for room since the last batch

    @property
    def queued_items(self) -> int:
        return len(self._queue)

    @property
    def busy_items(self) -> int:
        """Items queued or computing: zero means every accepted item has been answered."""
        return len(self._queue) + self._in_flight

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_forever())

    async def stop(self) -> None:
        """Finish everything accepted, then stop the collector. Requests still waiting for room
        are refused: the version is going away."""
        await self.drained()
        task, self._task = self._task, None
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(_not_accepting())
        self._waiting_live = 0
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def drained(self) -> None:
        while self.busy_items:
            self._idle.clear()
            await self._idle.wait()

    def discard(self, work: Sequence[WorkItem]) -> None:
        """Cancel items that have not started and free their queue places at once."""
        for item in work:
            if not item.started:
                item.future.cancel()
        self._queue = deque(w for w in self._queue if not w.future.done())
        self._wake_waiters()

    def expire(self, work: Sequence[WorkItem]) -> None:
        """The deadline of `work` passed: its items not started fail with DeadlineExceeded, and
        their queue places are freed at once."""
        for item in work:
            if not item.started and not item.future.done():
                item.future.set_exception(DeadlineExceeded(DEADLINE_PASSED))
        self._queue = deque(w for w in self._queue if not w.future.done())
        self._wake_waiters()

    async def wait_for_room(self, deadline: float | None = None) -> None:
        """Return once one more item fits, waiting behind earlier requests if the queue is
        full, for at most max_queue_wait_ms and never past `deadline`; then raise QueueFull.
        Called before a body is parsed: under overload a request waits as raw bytes instead of
        being parsed, refused and sent again by its client, which is what melts a server down.
        (DeadlineTooShort, ModelNotReady and an expected wait past the deadline: at once.)"""
        if self._task is None:
            raise _not_accepting()
        limits = self.limits
        queued = len(self._queue) + self._woken
        if not self._waiting_live and queued < limits.max_queue_size:
            if deadline is not None:
                self._check_deadline(deadline - time.monotonic(), queued + 1)
            return
        wait_s = limits.max_queue_wait_ms / 1000
        if deadline is not None:
            remaining_s = deadline - time.monotonic()
            self._check_deadline(remaining_s, queued + self._waiting_live + 1)
            wait_s = min(wait_s, remaining_s)
        if wait_s <= 0 or self._waiting_live >= limits.max_waiting:
            raise self._full(queued)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        self._waiting_live += 1
        timer = loop.call_later(wait_s, self._give_up, waiter, queued, wait_s)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter.cancelled():  # the request was cancelled while it waited
                self._waiting_live -= 1
            elif waiter.exception() is None:  # let in: its items go into the queue in this step
                self._woken -= 1

    def _give_up(self, waiter: asyncio.Future[None], queued: int, waited_s: float) -> None:
        if not waiter.done():
            self._waiting_live -= 1
            waiter.set_exception(self._full(queued, waited_s))

    def _wake_waiters(self) -> None:
        """Let in as many waiting requests as the queue now has room for, oldest first."""
        room = self.limits.max_queue_size - len(self._queue) - self._woken
        while room > 0 and self._waiting:
            waiter = self._waiting.popleft()
            if waiter.done():  # gave up
                continue
            waiter.set_result(None)
            self._waiting_live -= 1
            self._woken += 1
            room -= 1

    def _full(self, queued: int, waited_s: float = 0.0) -> QueueFull:
        limits = self.limits
        self._turned_away = True
        how = f"; this request waited {waited_s * 1000:.0f} ms for room" if waited_s else ""
        return QueueFull(
            f"the queue of this model is full ({queued} of {limits.max_queue_size} items "
            f"waiting{how}); retry later",
            headers={"Retry-After": str(limits.retry_after_s)},
        )

    def check_room(self, items: int = 1, deadline: float | None = None) -> None:
        """Raise QueueFull unless `items` more fit, and, for a request with a deadline, unless
        they can be expected to be answered by then (otherwise they would be computed for a
        client that has given up). Called before a body is parsed too: under overload,
        refusing costs microseconds instead of a full parse."""
        limits = self.limits
        if self._task is None:
            raise _not_accepting()
        queued = len(self._queue)
        if queued + items > limits.max_queue_size:
            raise self._full(queued)
        if deadline is not None:
            self._check_deadline(deadline - time.monotonic(), queued + items)

    def _check_deadline(self, remaining_s: float, items: int) -> None:
        """A deadline that even an idle model could not meet is the request's fault (504,
        retrying cannot help); one that only the queue ahead of it makes too short is a full
        queue (503, retry later)."""
        if remaining_s <= 0 or remaining_s < self._fastest_s:
            raise DeadlineTooShort(
                f"the request's deadline (X-Request-Timeout-Ms) leaves {remaining_s * 1000:.3g} "
                f"ms; one batch of this model takes at least {self._fastest_s * 1000:.3g} ms"
            )
        limits = self.limits
        per_batch = min(limits.max_batch_size, limits.max_queue_size)  # a batch is what is queued
        batches = items // per_batch + 1 + (self._in_flight > 0)
        expected_s = batches * self._turnaround_s
        if expected_s > remaining_s:
            raise QueueFull(
                f"the expected wait ({expected_s * 1000:.0f} ms for {len(self._queue)} queued "
                "items) exceeds the request's deadline (X-Request-Timeout-Ms); retry later",
                headers={"Retry-After": str(limits.retry_after_s)},
            )

    def submit(
        self,
        payloads: Sequence[Any],
        deadline: float | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> list[WorkItem]:
        """Queue the items of one request; all or none: a full queue raises QueueFull at once.
        `gone()`, when given, says that the client left (its items are then dropped)."""
        self.check_room(len(payloads), deadline)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        tokens = self.item_tokens
        work = [
            WorkItem(payload, loop.create_future(), tokens(payload), now, deadline, gone)
            for payload in payloads
        ]
        self._queue.extend(work)
        self._wakeup.set()
        return work

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        while True:
            if not self._queue:
                if not self._in_flight:
                    self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # While one batch computes, the next is formed and queued behind it on the inference
            # thread, which then goes from one to the next without waiting for the event loop
            # (under load a turn of the loop can take longer than a batch).
            await slots.acquire()
            await self._wait_for_batch()
            batch = self._take_batch()
            self._wake_waiters()
            if not batch:
                slots.release()
                continue
            self._in_flight += len(batch)
            payloads = [w.payload for w in batch]
            started = time.monotonic()
            if self._inline(batch):
                outputs, compute_s = _run_isolating_failures(self.run_batch, payloads)
                self._finish(batch, started, slots, outputs, compute_s)
                continue
            done = loop.run_in_executor(
                self.executor, _run_isolating_failures, self.run_batch, payloads
            )
            done.add_done_callback(functools.partial(self._returned, batch, started, slots))

    def _inline(self, batch: list[WorkItem]) -> bool:
        """Run this batch on the event loop? Only a lone item of a model known to be quick
        (one thread-run first, to know), with the inference thread idle: the loop is then
        blocked no longer than the thread would have kept the answer."""
        return (
            len(batch) == 1
            and self._in_flight == 1
            and 0 < self._one_item_s * 1000 <= self.limits.inline_max_ms
        )

    async def _wait_for_batch(self) -> None:
        """Wait until a full batch is queued, the first item has waited max_batch_delay_ms, or
        (with idle_turns_to_close) arrivals have stopped: that many event-loop turns passed
        without a new item, so waiting longer would only add latency."""
        limits, queue = self.limits, self._queue
        close_at = queue[0].enqueued_at + limits.max_batch_delay_ms / 1000
        idle_turns = 0
        while len(queue) < limits.max_batch_size and time.monotonic() < close_at:
            # A full queue cannot grow: once it has made a request wait or refused one, waiting
            # longer only turns more away.
            if len(queue) >= limits.max_queue_size and (self._waiting_live or self._turned_away):
                return
            seen = len(queue)
            await asyncio.sleep(0)  # one turn: request handlers that are ready submit their items
            idle_turns = idle_turns + 1 if len(queue) == seen else 0
            if idle_turns == limits.idle_turns_to_close:
                return

    def _take_batch(self) -> list[WorkItem]:
        """Pop up to max_batch_size live items, within max_batch_tokens (one item always fits)."""
        limits, now = self.limits, time.monotonic()
        self._turned_away = False
        batch: list[WorkItem] = []
        tokens = 0
        while self._queue and len(batch) < limits.max_batch_size:
            item = self._queue[0]
            if item.future.done():  # cancelled: the client went away or gave up
                self._queue.popleft()
                continue
            if item.deadline is not None and now > item.deadline:
                self._queue.popleft()
                item.future.set_exception(DeadlineExceeded(DEADLINE_PASSED))
                continue
            if item.gone is not None and item.gone():
                self._queue.popleft()
                item.future.set_exception(client_gone())
                continue
            if batch and limits.max_batch_tokens and tokens + item.tokens > limits.max_batch_tokens:
                break
            self._queue.popleft()
            item.started = True
            tokens += item.tokens
            batch.append(item)
        return batch

    def _returned(
        self,
        batch: list[WorkItem],
        started: float,
        slots: asyncio.Semaphore,
        done: asyncio.Future[tuple[list[Any], float]],
    ) -> None:
        """A batch came back from the inference thread."""
        if not done.cancelled() and done.exception() is None:
            self._finish(batch, started, slots, *done.result())
            return
        # The executor itself failed.
        self._release(batch, slots)
        error = done.exception() if not done.cancelled() else None
        for item in batch:
            if not item.future.done():
                item.future.set_exception(_item_error(error or RuntimeError("cancelled")))

    def _release(self, batch: list[WorkItem], slots: asyncio.Semaphore) -> None:
        self._in_flight -= len(batch)
        slots.release()
        if not self._queue and not self._in_flight:
            self._idle.set()

    def _finish(
        self,
        batch: list[WorkItem],
        started: float,
        slots: asyncio.Semaphore,
        outputs: list[Any],
        compute_s: float,
    ) -> None:
        """A batch was computed: answer its items."""
        self._release(batch, slots)
        if len(batch) == 1:
            previous = self._one_item_s or compute_s
            self._one_item_s = previous + 0.2 * (compute_s - previous)
        failed = 0
        for item, output in zip(batch, outputs, strict=True):
            item.batch_size, item.queue_s, item.compute_s = (
                len(batch),
                started - item.enqueued_at,
                compute_s,
            )
            if item.future.done():
                continue
            if isinstance(output, _ItemError):
                failed += 1
                item.future.set_exception(_item_error(output.error))
            else:
                item.future.set_result(output)
        # A batch's span: from when the thread could start it (its dispatch, or the end of the
        # batch ahead of it) to its answers; what the queue ahead of a new request will cost.
        now = time.monotonic()
        turnaround_s, self._last_finished = now - max(started, self._last_finished), now
        if self._turnaround_s:
            self._turnaround_s += 0.2 * (turnaround_s - self._turnaround_s)
        else:  # the first batch: no history to smooth against
            self._turnaround_s = turnaround_s
        self._fastest_s = min(self._fastest_s or turnaround_s, turnaround_s)
        if self.observer is not None:
            queue_s = [w.queue_s for w in batch]
            tokens = sum(w.tokens for w in batch)
            self.observer(BatchReport(len(batch), tokens, queue_s, compute_s, failed))


def _not_accepting() -> ModelNotReady:
    return ModelNotReady("this model version is not accepting work (it is being unloaded)")


def _item_error(error: BaseException) -> ServiceError:
    # A ServiceError says itself what was wrong with the item (e.g. a non-finite output).
    if isinstance(error, ServiceError):
        return error
    return ItemFailed(f"the model failed on this item: {error}")


def _run_isolating_failures(
    run_batch: Callable[[list[Any]], Sequence[Any]], payloads: list[Any]
) -> tuple[list[Any], float]:
    """The outputs and the seconds they took, timed here on the inference thread so that the
    event loop's delay in picking the result up is not counted as compute."""
    started = time.monotonic()
    outputs = _outputs_isolating_failures(run_batch, payloads)
    return outputs, time.monotonic() - started


def _outputs_isolating_failures(
    run_batch: Callable[[list[Any]], Sequence[Any]], payloads: list[Any]
) -> list[Any]:
    """Run the batch; if it raises (or answers the wrong number of outputs), run its items one
    by one so that only the item at fault fails."""
    try:
        return _checked(run_batch, payloads)
    except Exception as exc:  # noqa: BLE001 - any model error is narrowed down below
        if len(payloads) == 1:
            return [_ItemError(exc)]
    results: list[Any] = []
    for payload in payloads:
        try:
            results.append(_checked(run_batch, [payload])[0])
        except Exception as exc:  # noqa: BLE001
            results.append(_ItemError(exc))
    return results


def _checked(run_batch: Callable[[list[Any]], Sequence[Any]], payloads: list[Any]) -> list[Any]:
    outputs = list(run_batch(payloads))
    if len(outputs) != len(payloads):
        raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(payloads)} inputs")
    return outputs
