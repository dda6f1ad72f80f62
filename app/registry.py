"""The model registry: finds `<repository>/<name>/<version>/` checkpoints, loads each onto its
device with a batcher in front, and hands out ready versions (the newest when none is named)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.batcher import BatchLimits, BatchReport, DynamicBatcher
from app.errors import ModelNotFound, ModelNotReady, ServiceError
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
    extra: dict[str, Any] = field(default_factory=dict)

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


def version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (-1, version)


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

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[ModelVersion]:
        if name not in self._models:
            raise ModelNotFound(f"model '{name}' does not exist; known models: {self.names()}")
        return sorted(self._models[name].values(), key=lambda m: version_key(m.version))

    def default_version(self, name: str) -> ModelVersion | None:
        ready = [m for m in self.versions(name) if m.ready]
        return ready[-1] if ready else None

    def find(self, name: str, version: str | None = None) -> ModelVersion:
        """The named version, or the newest ready one, in whatever state it is."""
        if version is None:
            found = self.default_version(name)
            if found is None:
                versions = self.versions(name)
                return versions[-1]
            return found
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(f"model '{name}' does not exist; known models: {self.names()}")
        if version not in versions:
            known = sorted(versions, key=version_key)
            raise ModelNotFound(f"model '{name}' has no version '{version}'; versions: {known}")
        return versions[version]

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """A version that can serve now."""
        found = self.find(name, version)
        if not found.ready:
            why = f": {found.reason}" if found.reason else ""
            raise ModelNotReady(f"model '{name}' version '{found.version}' is {found.state}{why}")
        return found

    def all_ready(self) -> bool:
        return all(self.default_version(name) is not None for name in self._models)

    # -- loading ------------------------------------------------------------------------------
    def scan(self) -> dict[str, list[str]]:
        """Model names and version directories present in the repository."""
        found: dict[str, list[str]] = {}
        root = self.settings.model_repository
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            versions = [v.name for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit()]
            if versions:
                found[model_dir.name] = sorted(versions, key=version_key)
        return found

    async def load_repository(self) -> None:
        for name, versions in self.scan().items():
            for version in versions:
                await self.load_version(name, version)

    async def load_version(self, name: str, version: str) -> ModelVersion:
        """Load one version beside whatever already serves; on failure the others are untouched."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
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
                    previous.extra["last_load_error"] = str(exc)
                else:
                    self._models[name][version] = entry
                return entry
            self._models[name][version] = entry
            if previous is not None and previous is not entry:
                await self._release(previous)
            return entry

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
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self.find(name, version)
            await self._release(entry)
            entry.state, entry.reason = UNAVAILABLE, "unloaded"

    async def _release(self, entry: ModelVersion) -> None:
        """Let queued work finish, then free the model (and its GPU memory)."""
        was = entry.state
        entry.state = UNLOADING
        if entry.batcher is not None:
            await entry.batcher.stop()
        entry.servable, entry.batcher = None, None
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
