"""What the serving core needs to know about one request, whatever transport brought it, and what
it reports back about the work done for it (for the access log and the metrics)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestContext:
    request_id: str = ""
    received_ns: int = field(default_factory=time.perf_counter_ns)  # when the request arrived
    deadline: float | None = None  # time.monotonic() by which the work must have started
    # How the core learns that the client left: `client_gone()` is a cheap poll (the batcher
    # asks it before computing an item) where the transport offers one; otherwise
    # `disconnected()` completes when the client leaves, and a task has to wait on it.
    client_gone: Callable[[], bool] | None = None
    disconnected: Callable[[], Awaitable[Any]] | None = None
    # Filled in by the data plane as the request is served.
    endpoint: str = ""
    model: str = ""  # set only once the model is known: unknown names never become labels
    version: str = ""
    items: int = 0
    batch_size: int = 0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    error: str = ""  # the error's code, when the request failed
