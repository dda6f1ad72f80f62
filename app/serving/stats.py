"""Per-version inference statistics (Triton's statistics extension), counted in the serving core
so that every transport reports the same numbers: the data plane records each request, the
batcher's observer each forward pass. Everything here runs on the event loop: no locks."""

from __future__ import annotations

import copy
import time

from app.serving.batcher import BatchReport
from app.serving.context import RequestContext
from app.serving.results import Duration, VersionStatistics


class Statistics:
    """The counters of every model version that has served, kept across reloads of a version."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionStatistics] = {}

    def of(self, name: str, version: str) -> VersionStatistics:
        """A copy of one version's counters (zeros if it never served)."""
        found = self._versions.get((name, version))
        return copy.deepcopy(found) if found else VersionStatistics(name, version)

    def _counters(self, name: str, version: str) -> VersionStatistics:
        key = (name, version)
        found = self._versions.get(key)
        if found is None:
            found = self._versions[key] = VersionStatistics(name, version)
        return found

    def succeeded(self, ctx: RequestContext, input_ns: int) -> None:
        """A request answered: its items were checked in `input_ns`, queued and computed."""
        stats = self._counters(ctx.model, ctx.version)
        now_ns = time.perf_counter_ns()
        stats.success.add(now_ns - ctx.received_ns)
        stats.queue.add(round(ctx.queue_ms * 1e6))
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(round(ctx.compute_ms * 1e6))
        stats.compute_output.add(0)
        stats.last_inference_ms = time.time_ns() // 1_000_000

    def failed(self, ctx: RequestContext) -> None:
        """A request bound to this version that got an error (or whose client left)."""
        stats = self._counters(ctx.model, ctx.version)
        stats.fail.add(time.perf_counter_ns() - ctx.received_ns)

    def observe_batch(self, name: str, version: str, report: BatchReport) -> None:
        stats = self._counters(name, version)
        stats.execution_count += 1
        stats.inference_count += report.size
        stats.batches.setdefault(report.size, Duration()).add(round(report.compute_s * 1e9))
