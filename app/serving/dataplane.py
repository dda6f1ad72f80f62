"""The data plane: every operation the server offers, on typed requests and typed results, with no
transport in sight. /v1, the Open Inference Protocol and gRPC each decode a request, call one of
these, and encode what comes back.

Inference is two steps, so that a transport can refuse cheaply before it parses a body: `bind`
picks the model version and checks that its queue has room (and labels the request context);
then `classify`/`score` check the items, queue them and wait. Nothing awaits between the two when
the body is already read, so a version swap cannot slip in between."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.errors import (
    DEADLINE_PASSED,
    ClientDisconnected,
    DeadlineExceeded,
    InvalidInput,
    ServiceError,
    WrongEndpoint,
)
from app.serving.batcher import BatchReport, DynamicBatcher, WorkItem
from app.serving.completions import (
    MAX_GENERATED_TOKENS,
    ChoiceStream,
    CompletionChoice,
    CompletionRequest,
    sequence_requests,
)
from app.serving.context import RequestContext
from app.serving.loader import LoadedModel
from app.serving.registry import ModelRegistry, ModelVersion
from app.serving.results import (
    BatchingInfo,
    Classification,
    IndexEntry,
    ModelState,
    ModelSummary,
    Readiness,
    Scores,
    VersionInfo,
    VersionStatistics,
)
from app.serving.servables import SequenceScorer
from app.serving.stats import Statistics
from app.settings import Settings
from models.families.base import Task


@dataclass
class Lifecycle:
    """Shared by the SIGTERM handler, the transports and the readiness check."""

    draining: bool = False  # set on SIGTERM: new requests are refused, accepted ones finish
    starting: bool = False  # while the repository's models load at start-up: not ready yet


class DataPlane:
    def __init__(self, settings: Settings, registry: ModelRegistry, lifecycle: Lifecycle) -> None:
        self.settings = settings
        self.registry = registry
        self.lifecycle = lifecycle
        self.stats = Statistics()

    # -- inference ----------------------------------------------------------------------------
    def require(self, name: str, version: str | None) -> None:
        """Raise 404/503 now if the model cannot serve: before a transport reads the body."""
        self.registry.get(name, version)

    async def bind(
        self, name: str, version: str | None, ctx: RequestContext, endpoint: str
    ) -> LoadedModel:
        """The version that will serve this request, once its queue has room for it (a full
        queue is waited on, first come first served, for max_queue_wait_ms)."""
        ctx.endpoint = endpoint
        model = self.registry.get(name, version)
        # Labelled only once the model is known: unknown names must not grow the metrics' labels.
        ctx.model, ctx.version = model.name, model.version
        await model.batcher.wait_for_room(ctx.deadline)
        return model

    async def classify(
        self,
        model: LoadedModel,
        raw_items: Sequence[Any],
        ctx: RequestContext,
        field: str,
        numbers_checked: bool = False,
    ) -> Classification:
        """The predict head's answer for each item (class probabilities, multilabel
        probabilities, or regression values: `task` says which); `field` names the items in
        error messages; `numbers_checked`: the transport's decoder already saw that the leaves
        are numbers."""
        results = await self._infer(
            model, lambda: _parse(model, "predict", raw_items, field, numbers_checked), ctx, field
        )
        config = model.config
        return Classification(model.name, model.version, config.labels, results, config.task)

    async def score(
        self, model: LoadedModel, raw_items: Sequence[Any], ctx: RequestContext, field: str
    ) -> Scores:
        """ln P of each whole string, end-of-sequence included."""
        results = await self._infer(
            model, lambda: _parse(model, "score", raw_items, field), ctx, field
        )
        return Scores(model.name, model.version, results)

    async def score_pairs(
        self,
        model: LoadedModel,
        pairs: Sequence[tuple[Any, Any]],
        ctx: RequestContext,
        field: str,
    ) -> Scores:
        """ln P(continuation | context) of each (context, continuation), and whether the
        continuation is the model's greedy choice."""

        def parse() -> list[Any]:
            _expect(model, "score")
            servable = model.servable
            assert isinstance(servable, SequenceScorer)
            return [
                servable.parse_pair(context, continuation, f"{field}[{i}]")
                for i, (context, continuation) in enumerate(pairs)
            ]

        return Scores(model.name, model.version, await self._infer(model, parse, ctx, field))

    async def _infer(
        self,
        model: LoadedModel,
        parse: Callable[[], list[Any]],
        ctx: RequestContext,
        field: str,
    ) -> list[Any]:
        """Check the items, run them, and count the request in the version's statistics."""
        try:
            started_ns = time.perf_counter_ns()
            items = parse()
            input_ns = time.perf_counter_ns() - started_ns
            results = await self._run(model, items, ctx, field)
        except BaseException:  # cancelled or disconnected clients included
            self.stats.failed(ctx)
            raise
        self.stats.succeeded(ctx, input_ns)
        return results

    async def _run(
        self, model: LoadedModel, items: Sequence[Any], ctx: RequestContext, field: str
    ) -> list[Any]:
        """Queue the items, wait for all of them, and return their results in order."""
        batcher = model.batcher
        work = batcher.submit(items, ctx.deadline, ctx.client_gone)
        futures = [w.future for w in work]
        try:
            await _wait(batcher, work, ctx)
        finally:
            if not all(f.done() for f in futures):
                batcher.discard(work)  # dropped before compute, and out of the queue's count
        _note_work(ctx, work)
        results = []
        for i, future in enumerate(futures):
            error = future.exception()
            if isinstance(error, ServiceError) and len(futures) > 1:
                if not isinstance(error, DeadlineExceeded):
                    error.message = f"{field}[{i}]: {error.message}"
            if error is not None:
                raise error
            results.append(future.result())
        return results

    # -- generation and tokens ----------------------------------------------------------------
    def language_model(self, name: str | None) -> LoadedModel:
        """The ready language model `name`, or, with no name, the only one the server has."""
        if name is None:
            names = [m.name for m in self.models() if m.task == "score" and m.default_version]
            if len(names) != 1:
                raise InvalidInput(
                    f"model: name the language model; this server has {len(names)}: {names}"
                )
            name = names[0]
        model = self.registry.get(name)
        if model.generator is None or not isinstance(model.servable, SequenceScorer):
            raise WrongEndpoint(f"model '{name}' is not a language model that can generate")
        return model

    def tokenize(self, model: LoadedModel, text: Any, field: str) -> list[int]:
        return _scorer(model).tokenize(text, field)

    def detokenize(self, model: LoadedModel, ids: Any, field: str) -> str:
        scorer = _scorer(model)
        return scorer.vocab.detokenize(scorer.check_token_ids(ids, field))

    def token_ids(self, model: LoadedModel, ids: Any, field: str) -> list[int]:
        return _scorer(model).check_token_ids(ids, field)

    def complete(
        self, model: LoadedModel, request: CompletionRequest, ctx: RequestContext
    ) -> list[ChoiceStream]:
        """Start every choice of a completions call (all queued, or none); each is read as it
        is generated. Choice i*n + j continues prompt i."""
        scorer, generator = _scorer(model), model.generator
        assert generator is not None
        requests = sequence_requests(request, scorer.vocab, scorer.max_length, MAX_GENERATED_TOKENS)
        sequences = generator.submit(requests, ctx.deadline, ctx.client_gone)
        ctx.items = len(sequences)
        return [ChoiceStream(s, i, request, scorer.vocab) for i, s in enumerate(sequences)]

    async def complete_all(
        self, model: LoadedModel, request: CompletionRequest, ctx: RequestContext
    ) -> list[CompletionChoice]:
        """Every choice, whole; a client that leaves stops them all at the next step."""
        streams = self.complete(model, request, ctx)
        collecting = asyncio.gather(*(s.collect() for s in streams))
        watcher = asyncio.ensure_future(ctx.disconnected()) if ctx.disconnected else None
        try:
            pending = {collecting} if watcher is None else {collecting, watcher}
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if collecting not in done:
                raise ClientDisconnected("the client disconnected before its answer was ready")
            return collecting.result()
        finally:
            if watcher is not None:
                watcher.cancel()
            for stream in streams:
                stream.sequence.cancel()
            if not collecting.done():
                collecting.cancel()

    # -- metadata and health ------------------------------------------------------------------
    def models(self) -> list[ModelSummary]:
        summaries = []
        for name in self.registry.names():
            versions = self.registry.versions(name)
            default = self.registry.default_version(name)
            shown = default or versions[-1]
            config = shown.config
            summaries.append(
                ModelSummary(
                    name=name,
                    versions=[v.version for v in versions],
                    default_version=default.version if default else None,
                    task=config.task if config else None,
                    state=shown.state,
                    device=shown.loaded.device if shown.loaded else None,
                )
            )
        return summaries

    def describe(self, name: str, version: str | None = None) -> VersionInfo:
        """The named version (or the default one), in whatever state it is."""
        entry = self.registry.find(name, version)
        return _version_info(entry, [v.version for v in self.registry.versions(name)])

    def readiness(self) -> Readiness:
        """Strict (the default): every model meant to serve has a ready version. Otherwise: at
        least one model has. Never while shutting down."""
        if self.lifecycle.draining:
            return Readiness(False, "the server is shutting down")
        if self.lifecycle.starting:
            # Models not yet scanned are not in the registry: without this, the first one
            # loaded would make the server look ready.
            return Readiness(False, "the server is starting: its models are loading")
        missing = self.registry.not_ready()
        if not missing:
            return Readiness(True)
        if not self.settings.strict_readiness and self.registry.ready_models():
            return Readiness(True)
        return Readiness(False, f"no ready version of: {', '.join(missing)}")

    def queue_depths(self) -> list[tuple[str, str, int, ModelState]]:
        """(name, version, items queued or computing, state) of every version known."""
        rows = []
        for name in self.registry.names():
            for entry in self.registry.versions(name):
                busy = _busy(entry.loaded) if entry.loaded else 0
                rows.append((name, entry.version, busy, entry.state))
        return rows

    # -- statistics ---------------------------------------------------------------------------
    def observe_batch(self, model: LoadedModel, report: BatchReport) -> None:
        """One forward pass of `model` (called by the batcher's observer)."""
        self.stats.observe_batch(model.name, model.version, report)

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[VersionStatistics]:
        """The counters of one version, of every ready version of a model (no version named),
        or of every ready version of every model (no name)."""
        if name is None:
            names = self.registry.names()
        else:
            names = [name]
            if version is not None:
                self.registry.find(name, version)  # 404 for an unknown version
                return [self.stats.of(name, version)]
        return [
            self.stats.of(entry.name, entry.version)
            for each in names
            for entry in self.registry.versions(each)
            if entry.ready
        ]

    # -- the model repository -----------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows = [IndexEntry(*row) for row in self.registry.index()]
        return [r for r in rows if r.state is ModelState.READY or not ready_only]

    async def load(self, name: str) -> list[str]:
        """Serve what the model's version policy wants; returns the versions now served."""
        return [entry.version for entry in await self.registry.load_model(name)]

    async def unload(self, name: str) -> None:
        await self.registry.unload_model(name)


def _busy(model: LoadedModel) -> int:
    """Items queued or computing, and sequences waiting or generating."""
    generating = model.generator.busy if model.generator is not None else 0
    return model.batcher.busy_items + generating


def _scorer(model: LoadedModel) -> SequenceScorer:
    if not isinstance(model.servable, SequenceScorer):
        raise WrongEndpoint(f"model '{model.name}' is not a language model")
    return model.servable


def _parse(
    model: LoadedModel,
    task: Task | Literal["predict"],
    raw_items: Sequence[Any],
    field: str,
    numbers_checked: bool = False,
) -> list[Any]:
    """The model's checked items, named `field[i]` in error messages."""
    _expect(model, task)
    parse = model.servable.parse_item
    return [parse(raw, f"{field}[{i}]", numbers_checked) for i, raw in enumerate(raw_items)]


def _expect(model: LoadedModel, task: Task | Literal["predict"]) -> None:
    """`task` "predict": any head but score (classify, multilabel, regress)."""
    if model.task != task and (task != "predict" or model.task == "score"):
        raise WrongEndpoint(
            f"model '{model.name}' is a {model.task} model and cannot {task} (it answers "
            f"{model.task} requests)"
        )


def _version_info(entry: ModelVersion, versions: list[str]) -> VersionInfo:
    loaded = entry.loaded
    batching = None
    if loaded is not None:
        limits = loaded.batcher.limits
        batching = BatchingInfo(
            max_batch_size=limits.max_batch_size,
            max_batch_delay_ms=limits.max_batch_delay_ms,
            max_batch_tokens=limits.max_batch_tokens,
            max_queue_size=limits.max_queue_size,
            queued_items=loaded.batcher.queued_items,
        )
    return VersionInfo(
        name=entry.name,
        version=entry.version,
        versions=versions,
        state=entry.state,
        reason=entry.reason,
        device=loaded.device if loaded else None,
        checkpoint_sha256=loaded.weights_sha256 if loaded else None,
        last_load_error=entry.last_load_error,
        config=entry.config,
        batching=batching,
    )


def _note_work(ctx: RequestContext, work: list[WorkItem]) -> None:
    """The request's items, its largest batch and its longest queue and compute times."""
    ctx.items = len(work)
    if len(work) == 1:
        (item,) = work
        batch_size, queue_s, compute_s = item.batch_size, item.queue_s, item.compute_s
    else:
        batch_size = max(w.batch_size for w in work)
        queue_s, compute_s = max(w.queue_s for w in work), max(w.compute_s for w in work)
    ctx.batch_size = batch_size
    ctx.queue_ms = round(queue_s * 1000, 3)
    ctx.compute_ms = round(compute_s * 1000, 3)


async def _wait(batcher: DynamicBatcher, work: list[WorkItem], ctx: RequestContext) -> None:
    """Until every item is answered, its deadline dropped it, or (watching `disconnected`, where
    the transport has no cheap `client_gone`) the client left."""
    disconnected = ctx.disconnected
    if disconnected is None:
        await _wait_polled(batcher, work, ctx.deadline)
        return
    futures = [w.future for w in work]
    waiter: asyncio.Future[Any] = (
        futures[0] if len(futures) == 1 else asyncio.gather(*futures, return_exceptions=True)
    )
    watcher = asyncio.ensure_future(disconnected())
    timeout = None if ctx.deadline is None else max(0.0, ctx.deadline - time.monotonic())
    try:
        done, _ = await asyncio.wait(
            {waiter, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watcher.cancel()
    if waiter in done:
        return
    if watcher in done:
        raise ClientDisconnected("the client disconnected before its answer was ready")
    # The deadline passed: what has not started is dropped; what has started is waited for.
    if any(not w.started and not w.future.done() for w in work):
        raise DeadlineExceeded(DEADLINE_PASSED)
    await asyncio.wait(futures)


async def _wait_polled(
    batcher: DynamicBatcher, work: list[WorkItem], deadline: float | None
) -> None:
    """The common path: no task watching the connection (the batcher polls `client_gone`), and
    a timer only when there is a deadline, which drops the items not started by then."""
    timer = None
    if deadline is not None:
        delay = max(0.0, deadline - time.monotonic())
        timer = asyncio.get_running_loop().call_later(delay, batcher.expire, work)
    try:
        if len(work) == 1:
            with contextlib.suppress(Exception):  # the item's error is read by the caller
                await work[0].future
        else:
            await asyncio.gather(*(w.future for w in work), return_exceptions=True)
    finally:
        if timer is not None:
            timer.cancel()
