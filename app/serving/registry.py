"""The model registry: loads the versions of `<repository>/<name>/` that each model's version
policy wants and hands out ready ones (the newest when none is named). Models can be loaded again
(new versions go live, old ones drain and are freed) and unloaded while the server runs; one lock
per model name keeps those changes in order."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from app.errors import (
    LoadRequestFailed,
    ModelNotFound,
    ModelNotReady,
    RepositoryUnavailable,
    ServiceError,
)
from app.serving.batcher import BatchReport
from app.serving.generation import StepReport
from app.serving.loader import LoadedModel, load_model
from app.serving.repository import Repository, version_key
from app.serving.results import ModelState
from app.settings import Settings
from models.checkpoint import CheckpointError, ModelConfig

log = logging.getLogger("batchserve.registry")

BatchObserver = Callable[[LoadedModel, BatchReport], None]
StepObserver = Callable[[LoadedModel, StepReport], None]


@dataclass
class ModelVersion:
    """One version directory as the registry knows it; `loaded` is set while it can serve."""

    name: str
    version: str
    path: Path
    state: ModelState = ModelState.LOADING
    reason: str | None = None
    loaded: LoadedModel | None = None
    last_load_error: str | None = None  # a newer load that failed while this version served

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def config(self) -> ModelConfig | None:
        return self.loaded.config if self.loaded is not None else None


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        on_batch: BatchObserver | None = None,
        on_step: StepObserver | None = None,
    ) -> None:
        self.settings = settings
        self.repository = Repository(settings.model_repository, settings.follow_external_symlinks)
        self._on_batch = on_batch
        self._on_step = on_step
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._unloaded: set[str] = set()  # unloaded on purpose: not counted against readiness

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[ModelVersion]:
        return sorted(self._by_version(name).values(), key=lambda m: version_key(m.version))

    def default_version(self, name: str) -> ModelVersion | None:
        """The newest ready version. On every request without a version, so no sorting (and
        the common case, one version, in one step)."""
        versions = self._by_version(name)
        if len(versions) == 1:
            (only,) = versions.values()
            return only if only.ready else None
        ready = [m for m in versions.values() if m.ready]
        return max(ready, key=lambda m: version_key(m.version)) if ready else None

    def find(self, name: str, version: str | None = None) -> ModelVersion:
        """The named version, or the newest ready one, in whatever state it is."""
        if version is None:
            return self.default_version(name) or self.versions(name)[-1]
        by_version = self._by_version(name)
        if version not in by_version:
            known = sorted(by_version, key=version_key)
            raise ModelNotFound(f"model '{name}' has no version '{version}'; versions: {known}")
        return by_version[version]

    def _by_version(self, name: str) -> dict[str, ModelVersion]:
        found = self._models.get(name)
        if found is None:
            raise ModelNotFound(f"model '{name}' does not exist; known models: {self.names()}")
        return found

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """A version that can serve now."""
        found = self.find(name, version)
        if found.loaded is None or not found.ready:
            why = f": {found.reason}" if found.reason else ""
            raise ModelNotReady(f"model '{name}' version '{found.version}' is {found.state}{why}")
        return found.loaded

    def ready_models(self) -> list[str]:
        """Models with a version that can serve now."""
        return [name for name in self.names() if self.default_version(name) is not None]

    def not_ready(self) -> list[str]:
        """Models meant to serve (not unloaded on purpose) that have no ready version."""
        return [
            name
            for name in self.names()
            if name not in self._unloaded and self.default_version(name) is None
        ]

    def index(self) -> list[tuple[str, str, ModelState, str]]:
        """(name, version, state, reason) of every version on disk or in memory, and of every
        directory that should be a version and is not."""
        rows: dict[tuple[str, str], tuple[str, str, ModelState, str]] = {}
        for name in self.repository.scan():
            versions, invalid = self.repository.version_dirs(name)
            for version, reason in {**invalid, **self._not_loaded_reasons(name, versions)}.items():
                rows[name, version] = (name, version, ModelState.UNAVAILABLE, reason)
        for name, entries in self._models.items():
            for entry in entries.values():
                rows[name, entry.version] = (name, entry.version, entry.state, entry.reason or "")
        return sorted(rows.values(), key=lambda r: (r[0], version_key(r[1])))

    # -- loading ------------------------------------------------------------------------------
    def scan(self) -> dict[str, list[str]]:
        """Model names and version directories present in the repository."""
        return self.repository.scan()

    async def load_repository(self) -> None:
        try:
            names = self.scan()
        except RepositoryUnavailable as exc:
            log.error("%s: %s", exc.message, self.settings.model_repository)
            return
        for name in names:
            try:
                await self.load_model(name)
            except LoadRequestFailed as exc:
                log.error("%s", exc.message)

    async def load_model(self, name: str) -> list[ModelVersion]:
        """Rescan the model's directory and serve what its version policy wants: new versions load
        beside the serving one, go live when ready, and only then are the versions the policy
        dropped drained and freed. On any failure nothing that served is taken down."""
        async with self._lock(name):
            directory = self.repository.model_dir(name)
            if not directory.is_dir() and name not in self._models:
                raise ModelNotFound(f"the model repository has no model '{name}'")
            try:
                wanted = self.repository.wanted_versions(name)
            except LoadRequestFailed as exc:
                self._note_failure(name, self.repository.versions_on_disk(name), exc.message)
                raise
            self._unloaded.discard(name)
            for version in wanted:
                if not self._is_ready(name, version):
                    await self._load_version(name, version)
            failed = [e for v, e in self._models[name].items() if v in wanted and not e.ready]
            if failed:
                reasons = "; ".join(f"version {e.version}: {e.reason}" for e in failed)
                message = f"model '{name}' failed to load: {reasons}"
                self._note_failure(name, [], message)
                raise LoadRequestFailed(message)
            for entry in self._models[name].values():
                entry.last_load_error = None
            await self._retire(name, keep=set(wanted))
            return [self._models[name][v] for v in wanted]

    async def _load_version(self, name: str, version: str) -> ModelVersion:
        """Load one version beside whatever already serves; on failure the others are
        untouched, and a version that already served goes on serving."""
        entry = ModelVersion(name, version, self.repository.model_dir(name) / version)
        previous = self._models.setdefault(name, {}).get(version)
        if previous is None:
            self._models[name][version] = entry
        try:
            path = self.repository.version_dir(name, version)
            entry.loaded = await load_model(
                name,
                version,
                path,
                self.settings,
                self._executor,
                self._observer(entry),
                self._step_observer(entry),
            )
        except (CheckpointError, ServiceError, OSError, RuntimeError, ValueError) as exc:
            # The full paths go to the log; API answers name paths inside the repository.
            log.error("model %s version %s failed to load: %s", name, version, exc)
            reason = self.repository.relative(str(exc))
            entry.state, entry.reason = ModelState.FAILED, reason
            if previous is not None and previous.ready:
                previous.last_load_error = reason
            else:
                self._models[name][version] = entry
            return entry
        entry.state = ModelState.READY
        self._models[name][version] = entry
        if previous is not None and previous is not entry:
            await self._release(previous)
        return entry

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _is_ready(self, name: str, version: str) -> bool:
        entry = self._models.get(name, {}).get(version)
        return entry is not None and entry.ready

    def _note_failure(self, name: str, versions: list[str], message: str) -> None:
        """Say why on the versions that serve on (the metadata shows it) and list versions that
        never loaded as failed."""
        entries = self._models.setdefault(name, {}) if versions else self._models.get(name, {})
        for entry in entries.values():
            if entry.ready:
                entry.last_load_error = message
        for version in versions:
            if version not in entries:
                path = self.repository.model_dir(name) / version
                entries[version] = ModelVersion(name, version, path, ModelState.FAILED, message)

    async def _retire(self, name: str, keep: set[str]) -> None:
        """Drain and free the versions the policy no longer serves; forget those gone from disk."""
        entries = self._models[name]
        for version, entry in list(entries.items()):
            if version in keep:
                continue
            await self._release(entry)
            if not entry.path.is_dir():
                del entries[version]
            else:
                entry.state, entry.reason = ModelState.UNAVAILABLE, "not in the version policy"

    def _observer(self, entry: ModelVersion) -> Callable[[BatchReport], None] | None:
        on_batch = self._on_batch
        if on_batch is None:
            return None

        def observe(report: BatchReport) -> None:
            if entry.loaded is not None:
                on_batch(entry.loaded, report)

        return observe

    def _step_observer(self, entry: ModelVersion) -> Callable[[StepReport], None] | None:
        on_step = self._on_step
        if on_step is None:
            return None

        def observe(report: StepReport) -> None:
            if entry.loaded is not None:
                on_step(entry.loaded, report)

        return observe

    def _executor(self, device: torch.device) -> ThreadPoolExecutor:
        # One inference thread per device: GPU work is serialised on its stream, and CPU models
        # share the cores torch_threads allows rather than fighting over them.
        key = str(device)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{key}")
        return self._executors[key]

    # -- unloading ----------------------------------------------------------------------------
    async def unload_model(self, name: str) -> None:
        """Stop serving every version: queued requests finish first, then memory is freed."""
        async with self._lock(name):
            for entry in self.versions(name):
                await self._release(entry)
                entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"
            self._unloaded.add(name)

    async def _release(self, entry: ModelVersion) -> None:
        """Let queued work finish, then free the model (and its GPU memory)."""
        loaded = entry.loaded
        if loaded is None:
            return
        was = entry.state
        entry.state = ModelState.UNLOADING
        await loaded.batcher.stop()
        if loaded.generator is not None:
            await loaded.generator.stop()
        entry.loaded = None
        del loaded
        # The stopped collector task is held until its done-callbacks run on the next loop turn,
        # and through it the model; collect after that turn, or the (GPU) memory lingers until
        # some later full collection.
        await asyncio.sleep(0)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        entry.state = was if was is not ModelState.READY else ModelState.UNAVAILABLE

    def _not_loaded_reasons(self, name: str, versions: list[str]) -> dict[str, str]:
        """Why each version on disk might not be in memory: its policy leaves it out, or it
        never was loaded."""
        try:
            wanted = self.repository.read_model_settings(name).version_policy.select(versions)
        except LoadRequestFailed as exc:
            return dict.fromkeys(versions, exc.message)
        return {v: "not loaded" if v in wanted else "not in the version policy" for v in versions}

    async def close(self) -> None:
        for entries in list(self._models.values()):
            for entry in list(entries.values()):
                await self._release(entry)
        for executor in self._executors.values():
            executor.shutdown(wait=True)
