"""Prometheus metrics, in a registry per app so that several apps can share a process."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        self.queue_depth = Gauge(
            "batchserve_queue_depth", "Items waiting or computing.", ["model", "version"],
            registry=r,
        )  # fmt: skip
        self.model_state = Gauge(
            "batchserve_model_state", "1 for the state each model version is in.",
            ["model", "version", "state"], registry=r,
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
