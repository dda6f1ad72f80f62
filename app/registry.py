"""The model registry: loads the versions of `<repository>/<name>/` that each model's version
policy wants, each onto its device with a batcher in front, and hands out ready versions (the
newest when none is named). Models can be loaded again (new versions go live, old ones drain and
are freed) and unloaded while the server runs."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app import repository
from app.batcher import BatchLimits, BatchReport, DynamicBatcher
from app.errors import ModelNotFound, ModelNotReady, ServiceError
from app.repository import ModelLoadFailed, version_key
from app.servables import Servable, make_servable
from app.settings import Settings
from models.checkpoint import (
    CheckpointError,
    ModelConfig,
    load_checkpoint,
    read_config,
    sha256_file,
    weights_path,
)

log = logging.getLogger("batchserve.registry")

LOADING, READY, FAILED, UNLOADING, UNAVAILABLE = (
    "loading",
    "ready",
    "failed",
    "unloading",
    "unavailable",
)


@dataclass
class ModelVersion:
    name: str
    version: str
    path: Path
    state: str = LOADING
    reason: str | None = None
    device: str | None = None
    config: ModelConfig | None = None
    servable: Servable | None = None
    batcher: DynamicBatcher | None = None
    weights_sha256: str | None = None
    last_load_error: str | None = None  # a newer load that failed while this version served

    @property
    def ready(self) -> bool:
        return self.state == READY


def resolve_device(requested: str) -> torch.device:
    """'auto' is CUDA when present; an unavailable device is a load error, not a crash."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(f"device {requested} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CheckpointError(f"device {requested} does not exist")
    return device


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        observer: Callable[[ModelVersion, BatchReport], None] | None = None,
    ) -> None:
        self.settings = settings
        self._observer = observer
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
        """The newest ready version. On every request without a version, so no sorting."""
        ready = [m for m in self._by_version(name).values() if m.ready]
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

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """A version that can serve now."""
        found = self.find(name, version)
        if not found.ready:
            why = f": {found.reason}" if found.reason else ""
            raise ModelNotReady(f"model '{name}' version '{found.version}' is {found.state}{why}")
        return found

    def all_ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Models meant to serve (not unloaded on purpose) that have no ready version."""
        return [
            name
            for name in self.names()
            if name not in self._unloaded and self.default_version(name) is None
        ]

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every version on disk or in memory, with its state and why it is in it."""
        rows: dict[tuple[str, str], dict[str, str]] = {}
        root = self.settings.model_repository
        for name, versions in repository.scan(root).items():
            for version, reason in _not_loaded_reasons(root / name, versions).items():
                rows[name, version] = _index_row(name, version, UNAVAILABLE, reason)
        for name, entries in self._models.items():
            for entry in entries.values():
                rows[name, entry.version] = _index_row(
                    name, entry.version, entry.state, entry.reason or ""
                )
        listed = sorted(rows.values(), key=lambda r: (r["name"], version_key(r["version"])))
        return [r for r in listed if r["state"] == READY or not ready_only]

    # -- loading ------------------------------------------------------------------------------
    def scan(self) -> dict[str, list[str]]:
        """Model names and version directories present in the repository."""
        return repository.scan(self.settings.model_repository)

    async def load_repository(self) -> None:
        for name in self.scan():
            try:
                await self.load_model(name)
            except ModelLoadFailed as exc:
                log.warning("%s", exc.message)

    async def load_model(self, name: str) -> list[ModelVersion]:
        """Rescan the model's directory and serve what its version policy wants: new versions load
        beside the serving one, go live when ready, and only then are the versions the policy
        dropped drained and freed. On any failure nothing that served is taken down."""
        async with self._lock(name):
            directory = repository.model_dir(self.settings.model_repository, name)
            if not directory.is_dir() and name not in self._models:
                raise ModelNotFound(f"the model repository has no model '{name}'")
            try:
                wanted = repository.wanted_versions(directory)
            except ModelLoadFailed as exc:
                self._note_failure(name, repository.versions_on_disk(directory), exc.message)
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
                raise ModelLoadFailed(message)
            for entry in self._models[name].values():
                entry.last_load_error = None
            await self._retire(name, keep=set(wanted))
            return [self._models[name][v] for v in wanted]

    async def load_version(self, name: str, version: str) -> ModelVersion:
        """Load one version beside whatever already serves; on failure the others are untouched."""
        async with self._lock(name):
            return await self._load_version(name, version)

    async def _load_version(self, name: str, version: str) -> ModelVersion:
        path = self.settings.model_repository / name / version
        entry = ModelVersion(name, version, path)
        previous = self._models.setdefault(name, {}).get(version)
        if previous is None:
            self._models[name][version] = entry
        try:
            await self._load_into(entry)
        except (CheckpointError, ServiceError, OSError, RuntimeError, ValueError) as exc:
            entry.state, entry.reason = FAILED, str(exc)
            log.warning("model %s version %s failed to load: %s", name, version, exc)
            if previous is not None and previous.ready:
                previous.last_load_error = str(exc)
            else:
                self._models[name][version] = entry
            return entry
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
                path = self.settings.model_repository / name / version
                entries[version] = ModelVersion(name, version, path, FAILED, message)

    async def _retire(self, name: str, keep: set[str]) -> None:
        """Drain and free the versions the policy no longer serves; forget those gone from disk."""
        entries = self._models[name]
        for version, entry in list(entries.items()):
            if version in keep:
                continue
            if entry.batcher is not None:
                await self._release(entry)
            if not entry.path.is_dir():
                del entries[version]
            else:
                entry.state, entry.reason = UNAVAILABLE, "not in the version policy"

    async def _load_into(self, entry: ModelVersion) -> None:
        loop = asyncio.get_running_loop()
        device = resolve_device(self._configured_device(entry.path))
        model, config = await loop.run_in_executor(None, load_checkpoint, entry.path, device)
        if config.name != entry.name:
            raise CheckpointError(
                f"config.json names the model '{config.name}' but it lies under '{entry.name}'"
            )
        if self.settings.compile:
            model = torch.compile(model, dynamic=True)  # type: ignore[assignment]
        servable = make_servable(model, config, device)
        executor = self._executor(device)
        if self.settings.warmup:
            await loop.run_in_executor(executor, _warm_up, servable)
        entry.config, entry.servable, entry.device = config, servable, str(device)
        entry.weights_sha256 = config.weights_sha256 or sha256_file(
            weights_path(entry.path, config)
        )
        entry.batcher = DynamicBatcher(
            run_batch=_inference_call(servable),
            executor=executor,
            limits=self._limits(config),
            item_tokens=servable.item_tokens,
            observer=self._batch_observer(entry),
        )
        entry.batcher.start()
        entry.state, entry.reason = READY, None

    def _configured_device(self, path: Path) -> str:
        try:
            return read_config(path).device or self.settings.device
        except CheckpointError:
            return self.settings.device

    def _limits(self, config: ModelConfig) -> BatchLimits:
        s, own = self.settings, config.batching
        return BatchLimits(
            max_batch_size=own.max_batch_size or s.max_batch_size,
            max_batch_delay_ms=s.max_batch_delay_ms
            if own.max_batch_delay_ms is None
            else own.max_batch_delay_ms,
            max_batch_tokens=(own.max_batch_tokens or s.max_batch_tokens)
            if config.input.kind == "text"
            else None,
            max_queue_size=s.max_queue_size,
            retry_after_s=s.retry_after_s,
            idle_turns_to_close=s.batch_idle_turns,
        )

    def _batch_observer(self, entry: ModelVersion) -> Callable[[BatchReport], None] | None:
        observer = self._observer
        if observer is None:
            return None
        return lambda report: observer(entry, report)

    def _executor(self, device: torch.device) -> ThreadPoolExecutor:
        # One inference thread per device: GPU work is serialised on its stream, and CPU models
        # share the cores torch_threads allows rather than fighting over them.
        key = str(device)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{key}")
        return self._executors[key]

    # -- unloading ----------------------------------------------------------------------------
    async def unload_version(self, name: str, version: str) -> None:
        async with self._lock(name):
            entry = self.find(name, version)
            await self._release(entry)
            entry.state, entry.reason = UNAVAILABLE, "unloaded"

    async def unload_model(self, name: str) -> None:
        """Stop serving every version: queued requests finish first, then memory is freed."""
        async with self._lock(name):
            for entry in self.versions(name):
                if entry.batcher is not None:
                    await self._release(entry)
                entry.state, entry.reason = UNAVAILABLE, "unloaded"
            self._unloaded.add(name)

    async def _release(self, entry: ModelVersion) -> None:
        """Let queued work finish, then free the model (and its GPU memory)."""
        was = entry.state
        entry.state = UNLOADING
        if entry.batcher is not None:
            await entry.batcher.stop()
        entry.servable, entry.batcher = None, None
        # The stopped collector task is held until its done-callbacks run on the next loop turn,
        # and through it the model; collect after that turn, or the (GPU) memory lingers until
        # some later full collection.
        await asyncio.sleep(0)
        gc.collect()
        if entry.device and entry.device.startswith("cuda"):
            torch.cuda.empty_cache()
        entry.state = was if was != READY else UNAVAILABLE

    async def close(self) -> None:
        for name in list(self._models):
            for entry in list(self._models[name].values()):
                if entry.batcher is not None:
                    await self._release(entry)
        for executor in self._executors.values():
            executor.shutdown(wait=True)


def _index_row(name: str, version: str, state: str, reason: str) -> dict[str, str]:
    return {"name": name, "version": version, "state": state, "reason": reason}


def _not_loaded_reasons(directory: Path, versions: list[str]) -> dict[str, str]:
    """Why each version on disk might not be in memory: its policy leaves it out, or it never
    was loaded."""
    try:
        wanted = repository.read_model_settings(directory).version_policy.select(versions)
    except ModelLoadFailed as exc:
        return dict.fromkeys(versions, exc.message)
    return {v: "not loaded" if v in wanted else "not in the version policy" for v in versions}


def _inference_call(servable: Servable) -> Callable[[list[Any]], list[Any]]:
    def run(items: list[Any]) -> list[Any]:
        with torch.inference_mode():
            return servable.run(items)

    return run


def _warm_up(servable: Servable) -> None:
    # A few passes at batch sizes 1 and 8 so the first real requests don't pay allocator and
    # kernel-selection costs.
    with torch.inference_mode():
        item = servable.warmup_item()
        for size in (1, 8, 1):
            servable.run([item] * size)
        if servable.device.type == "cuda":
            torch.cuda.synchronize(servable.device)
