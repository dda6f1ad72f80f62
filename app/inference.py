"""The domain functions behind the routes: check the items against the model, send them through
its batcher, wait (honouring the deadline and the client's presence), and shape the results."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.batcher import DynamicBatcher, WorkItem
from app.errors import (
    DEADLINE_PASSED,
    ClientDisconnected,
    DeadlineExceeded,
    ModelNotReady,
    ServiceError,
    WrongEndpoint,
)
from app.registry import ModelVersion
from app.servables import SequenceScorer, TokenScores


@dataclass(slots=True)
class RequestContext:
    """Per-request facts that the domain needs from HTTP."""

    deadline: float | None = None  # time.monotonic() by which work must have started
    disconnected: Callable[[], Awaitable[Any]] | None = None  # completes if the client leaves
    stats: dict[str, Any] = field(default_factory=dict)  # for the access log


def check_room(entry: ModelVersion, ctx: RequestContext) -> None:
    """Refuse (503) before the body is parsed when the model's queue is full, or too long for
    the request's deadline."""
    _batcher(entry).check_room(1, ctx.deadline)


def _batcher(entry: ModelVersion) -> DynamicBatcher:
    # A version that was being unloaded after the registry handed it out has no batcher.
    if entry.batcher is None or entry.servable is None:
        raise ModelNotReady(f"model '{entry.name}' version '{entry.version}' is {entry.state}")
    return entry.batcher


def _servable(entry: ModelVersion, task: str) -> Any:
    _batcher(entry)
    servable = entry.servable
    assert servable is not None
    if servable.task != task:
        other = "score" if task == "classify" else "predict"
        raise WrongEndpoint(
            f"model '{entry.name}' is a {servable.task} model; call /v1/models/{entry.name}/{other}"
        )
    return servable


async def predict(
    entry: ModelVersion, inputs: list[Any], top_k: int, ctx: RequestContext
) -> dict[str, Any]:
    servable = _servable(entry, "classify")
    items = [servable.parse_item(raw, f"inputs[{i}]") for i, raw in enumerate(inputs)]
    probabilities = await run_items(entry, items, ctx, "inputs")
    labels: list[str] = entry.config.labels  # type: ignore[union-attr]
    top_k = min(top_k, len(labels))
    return {
        "model": entry.name,
        "version": entry.version,
        "predictions": [_prediction(row, labels, top_k) for row in probabilities],
    }


def _prediction(row: list[float], labels: list[str], top_k: int) -> dict[str, Any]:
    order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:top_k]
    ranked = [{"label": labels[i], "index": i, "probability": row[i]} for i in order]
    return {**ranked[0], "top_k": ranked}


async def score(
    entry: ModelVersion, kind: str, raw_items: list[Any], per_token: bool, ctx: RequestContext
) -> dict[str, Any]:
    servable: SequenceScorer = _servable(entry, "score")
    if kind == "pairs":
        items = [
            servable.parse_pair(p["context"], p["continuation"], f"pairs[{i}]")
            for i, p in enumerate(raw_items)
        ]
    else:
        items = [servable.parse_item(raw, f"inputs[{i}]") for i, raw in enumerate(raw_items)]
    results: list[TokenScores] = await run_items(entry, items, ctx, kind)
    scores = []
    for item, result in zip(items, results, strict=True):
        log_prob = math.fsum(result.log_probs)
        entry_score: dict[str, Any] = {"log_prob": log_prob, "num_tokens": len(result.log_probs)}
        if kind == "pairs":
            entry_score["is_greedy"] = result.is_greedy
        else:
            entry_score["perplexity"] = math.exp(-log_prob / len(result.log_probs))
        if per_token:
            names = servable.token_names(item)
            entry_score["tokens"] = [
                {"token": t, "log_prob": lp} for t, lp in zip(names, result.log_probs, strict=True)
            ]
        scores.append(entry_score)
    return {"model": entry.name, "version": entry.version, "scores": scores}


async def run_items(
    entry: ModelVersion, items: Sequence[Any], ctx: RequestContext, field_name: str
) -> list[Any]:
    """Queue the items, wait for all of them, and return their outputs in order."""
    batcher = _batcher(entry)
    work = batcher.submit(items, ctx.deadline)
    futures = [w.future for w in work]
    try:
        await _wait(work, ctx)
    finally:
        if not all(f.done() for f in futures):
            batcher.discard(work)  # dropped before compute, and out of the queue's count
    ctx.stats.update(
        items=len(work),
        batch_size=max(w.batch_size for w in work),
        queue_ms=round(max(w.queue_s for w in work) * 1000, 3),
        compute_ms=round(max(w.compute_s for w in work) * 1000, 3),
    )
    outputs = []
    for i, future in enumerate(futures):
        error = future.exception()
        if isinstance(error, ServiceError):
            if len(futures) > 1 and not isinstance(error, DeadlineExceeded):
                error.message = f"{field_name}[{i}]: {error.message}"
            raise error
        if error is not None:
            raise error
        outputs.append(future.result())
    return outputs


async def _wait(work: list[WorkItem], ctx: RequestContext) -> None:
    futures = [w.future for w in work]
    waiter: asyncio.Future[Any] = (
        futures[0] if len(futures) == 1 else asyncio.gather(*futures, return_exceptions=True)
    )
    watcher = asyncio.ensure_future(ctx.disconnected()) if ctx.disconnected else None
    timeout = None if ctx.deadline is None else max(0.0, ctx.deadline - time.monotonic())
    pending = {waiter} if watcher is None else {waiter, watcher}
    try:
        done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if watcher is not None:
            watcher.cancel()
    if waiter in done:
        return
    if watcher is not None and watcher in done:
        raise ClientDisconnected("the client disconnected before its answer was ready")
    # The deadline passed: what has not started is dropped; what has started is waited for.
    if any(not w.started and not w.future.done() for w in work):
        raise DeadlineExceeded(DEADLINE_PASSED)
    await asyncio.wait(futures)
