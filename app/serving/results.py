"""Typed results of the serving core. Transports only translate them: /v1 into its JSON, the Open
Inference Protocol into tensors, gRPC into protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from models.checkpoint import ModelConfig


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class ClassScores:
    """One item's class probabilities, in the order of the model's labels."""

    probabilities: list[float]

    def top(self, k: int) -> list[int]:
        """The indices of the `k` most likely classes, most likely first."""
        row = self.probabilities
        return sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]

    def best(self) -> int:
        row = self.probabilities
        return max(range(len(row)), key=row.__getitem__)


@dataclass(frozen=True, slots=True)
class LabelScores:
    """A multilabel item: each label's own probability (a sigmoid per label, in label order);
    the item's labels are those at or above `threshold`."""

    probabilities: list[float]
    threshold: float

    def chosen(self) -> list[int]:
        """The indices of the labels at or above the threshold, most likely first."""
        row = self.probabilities
        over = [i for i, p in enumerate(row) if p >= self.threshold]
        return sorted(over, key=row.__getitem__, reverse=True)

    def as_json(self, labels: Sequence[str]) -> dict[str, Any]:
        """/v1's and KServe V1's form (schema: MultilabelPrediction)."""
        return {
            "labels": [labels[i] for i in self.chosen()],
            "probabilities": dict(zip(labels, self.probabilities, strict=True)),
            "threshold": self.threshold,
        }


@dataclass(frozen=True, slots=True)
class Regression:
    """A regress item: one real value per named output, in the targets' own units (the
    training's target scaling undone)."""

    values: list[float]

    def as_json(self, names: Sequence[str]) -> dict[str, Any]:
        """/v1's and KServe V1's form (schema: RegressionPrediction)."""
        return {"values": dict(zip(names, self.values, strict=True))}


PredictItem = ClassScores | LabelScores | Regression


@dataclass(frozen=True, slots=True)
class SequenceScore:
    """ln P of a string (end-of-sequence included), or of a continuation given its context."""

    log_prob: float  # natural log, summed over `tokens`
    tokens: tuple[str, ...]  # the scored tokens, e.g. ("S", "m", "i", "t", "h", "</s>")
    token_log_probs: tuple[float, ...]
    perplexity: float | None  # whole strings only: exp(-log_prob / num_tokens)
    is_greedy: bool | None  # pairs only: is the continuation the model's argmax at every step?

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True, slots=True)
class Classification:
    """The answer of a predict head: `task` classify (items ClassScores), multilabel
    (LabelScores) or regress (Regression; `labels` are the outputs' names)."""

    model: str
    version: str
    labels: Sequence[str]
    items: list[Any]  # PredictItem, all of the one kind `task` says
    task: str = "classify"


@dataclass(frozen=True, slots=True)
class Scores:
    model: str
    version: str
    items: list[SequenceScore]


@dataclass(frozen=True, slots=True)
class BatchingInfo:
    max_batch_size: int
    max_batch_delay_ms: float
    max_batch_tokens: int | None
    max_queue_size: int
    queued_items: int


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What is known of one model version, loaded or not."""

    name: str
    version: str
    versions: list[str]  # every version of the model
    state: ModelState
    reason: str | None
    device: str | None
    checkpoint_sha256: str | None
    last_load_error: str | None
    config: ModelConfig | None  # None when the config itself could not be read
    batching: BatchingInfo | None  # None unless loaded


@dataclass(frozen=True, slots=True)
class ModelSummary:
    name: str
    versions: list[str]
    default_version: str | None
    task: str | None
    state: ModelState
    device: str | None


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: ModelState
    reason: str


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str | None = None


@dataclass(slots=True)
class Duration:
    """How many times something happened and how long it took in all, in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass(slots=True)
class VersionStatistics:
    """What one model version has done since it was first loaded, in Triton's statistics terms:
    `success`, `fail`, `queue` and the `compute_*` durations count requests (success.ns is the
    time from a request's arrival to its answer; queue.ns the longest wait of its items);
    `inference_count` counts items computed and `execution_count` forward passes; `batches` maps
    a batch size to the forward passes of that size and their compute time."""

    name: str
    version: str
    last_inference_ms: int = 0  # milliseconds since the epoch; 0 = never
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)  # checking the request's items
    compute_infer: Duration = field(default_factory=Duration)  # the forward pass(es)
    compute_output: Duration = field(default_factory=Duration)  # encoding: the transport's
    batches: dict[int, Duration] = field(default_factory=dict)
