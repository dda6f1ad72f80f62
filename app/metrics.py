"""Prometheus metrics, in a registry per app so that several apps can share a process; with
several worker processes, prometheus_client's multiprocess mode sums them for every scrape."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """`multiprocess_dir`: this process is one of several workers whose values prometheus_client
    writes to files there (PROMETHEUS_MULTIPROC_DIR, set before it was imported); a scrape then
    reads every worker's files. None: this process alone, as a plain registry."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.workers: WorkerMetrics | None = None  # see serving_as_worker
        self._scraped = self.registry
        if multiprocess_dir is not None:
            self._scraped = CollectorRegistry()
            self._scraped.register(WorkerFiles(multiprocess_dir))
        r = self.registry
        self.requests = Counter(
            "batchserve_requests",
            "Inference requests answered (status: HTTP's, or gRPC's outcome as HTTP would say it).",
            ["model", "version", "endpoint", "status", "protocol"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "batchserve_request_duration_seconds", "End-to-end request latency.",
            ["model", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "batchserve_queue_duration_seconds", "Time items wait in the batch queue.",
            ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "batchserve_compute_duration_seconds", "Time of one batched forward pass.",
            ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "batchserve_batch_size", "Items per forward pass.",
            ["model", "version"], buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.items = Counter(
            "batchserve_items", "Items computed.", ["model", "version"], registry=r
        )
        self.item_failures = Counter(
            "batchserve_item_failures", "Items the model failed on.", ["model", "version"],
            registry=r,
        )  # fmt: skip
        # Across workers: queue depth is the sum over the live ones; model state is each live
        # worker's own, labelled with its pid (a sum of "1 for the state it is in" would say 2).
        self.queue_depth = Gauge(
            "batchserve_queue_depth", "Items waiting or computing.", ["model", "version"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.model_state = Gauge(
            "batchserve_model_state", "1 for the state each model version is in.",
            ["model", "version", "state"], registry=r, multiprocess_mode="liveall",
        )  # fmt: skip
        self.step_sequences = Histogram(
            "batchserve_generation_step_sequences", "Sequences advanced by one generation step.",
            ["model", "version"], buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.generated_tokens = Counter(
            "batchserve_generated_tokens", "Tokens generated.", ["model", "version"], registry=r
        )
        self.rejected = Counter(
            "batchserve_rejected_requests", "Requests refused, by reason.", ["reason"], registry=r
        )

    def observe_batch(
        self,
        model: str,
        version: str,
        compute_s: float,
        queue_s: Sequence[float],
        failed_items: int,
    ) -> None:
        """One forward pass of `len(queue_s)` items, each of which waited `queue_s[i]`."""
        self.batch_size.labels(model, version).observe(len(queue_s))
        self.compute_seconds.labels(model, version).observe(compute_s)
        self.items.labels(model, version).inc(len(queue_s))
        queue = self.queue_seconds.labels(model, version)
        for waited in queue_s:
            queue.observe(waited)
        if failed_items:
            self.item_failures.labels(model, version).inc(failed_items)

    def observe_step(self, model: str, version: str, sequences: int, tokens: int) -> None:
        self.step_sequences.labels(model, version).observe(sequences)
        self.generated_tokens.labels(model, version).inc(tokens)

    def serving_as_worker(self, restarts: int) -> WorkerMetrics:
        """The worker series, from the moment this worker serves: a gauge without labels is
        written as 0 to its file as soon as it exists, and a worker still loading its models
        must not be counted as serving."""
        self.workers = WorkerMetrics(self.registry)
        self.workers.restarts.set(restarts)
        self.workers.observe_requests(self.requests)
        return self.workers

    def render(self) -> bytes:
        if self.workers is not None:
            self.workers.observe_requests(self.requests)
        return generate_latest(self._scraped)


class WorkerMetrics:
    """Series only a worker among several has: which workers are alive, how many requests each
    answered (how evenly the kernel spreads connections), and how many were replaced."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Gauge(
            "batchserve_worker_requests",
            "Inference requests this worker has answered since it started (a series per live "
            "worker, labelled pid).",
            registry=registry, multiprocess_mode="liveall",
        )  # fmt: skip
        self.restarts = Gauge(
            "batchserve_worker_restarts",
            "Workers the supervisor has started in place of dead ones since it started.",
            registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip

    def observe_requests(self, requests: Counter) -> None:
        """Copy this process's own total of `requests` (its own values: in multiprocess mode a
        metric object reads only its own process's file) into its series."""
        total = sum(
            sample.value
            for family in requests.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
        self.requests.set(total)


class WorkerFiles(Collector):
    """Every worker's values, merged by prometheus_client from their files in `directory`. A
    scrape can meet a file a starting worker has created but not yet sized, or one the
    supervisor is removing for a dead worker; either fails prometheus_client's whole read, so
    such files are left out and the read is tried again."""

    TRIES = 3

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        merge: Any = MultiProcessCollector.merge  # untyped
        for tries_left in reversed(range(self.TRIES)):
            files = [str(f) for f in self.directory.glob("*.db") if _sized(f)]
            try:
                return list(merge(files, accumulate=True))
            except (FileNotFoundError, struct.error):
                if not tries_left:
                    raise
        return []  # not reached: the last try returns or raises


def _sized(file: Path) -> bool:
    try:
        return file.stat().st_size > 0
    except FileNotFoundError:
        return False
