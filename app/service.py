"""What one running server holds: settings, the model registry and the metrics, plus the model
descriptions that the metadata endpoints return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.batcher import BatchReport
from app.metrics import Metrics
from app.registry import ModelRegistry, ModelVersion
from app.settings import Settings

_STATES = ("loading", "ready", "failed", "unloading", "unavailable")


@dataclass
class Lifecycle:
    """Shared by the SIGTERM handler, the middleware and the readiness check."""

    draining: bool = False  # set on SIGTERM: new requests are refused, accepted ones finish


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.lifecycle = Lifecycle()
        self.registry = ModelRegistry(settings, observer=self._observe_batch)
        self.api_keys = [k.get_secret_value().encode() for k in settings.api_keys]
        admin = settings.admin_api_key
        self.admin_keys = [admin.get_secret_value().encode()] if admin else []

    def _observe_batch(self, entry: ModelVersion, report: BatchReport) -> None:
        self.metrics.observe_batch(entry.name, entry.version, report)

    def model_summaries(self) -> list[dict[str, Any]]:
        summaries = []
        for name in self.registry.names():
            versions = self.registry.versions(name)
            default = self.registry.default_version(name)
            shown = default or versions[-1]
            summaries.append(
                {
                    "name": name,
                    "versions": [v.version for v in versions],
                    "default_version": default.version if default else None,
                    "task": shown.config.task if shown.config else None,
                    "state": shown.state,
                    "device": shown.device,
                }
            )
        return summaries

    def metadata(self, entry: ModelVersion) -> dict[str, Any]:
        versions = [v.version for v in self.registry.versions(entry.name)]
        meta: dict[str, Any] = {
            "name": entry.name,
            "version": entry.version,
            "versions": versions,
            "state": entry.state,
            "reason": entry.reason,
            "device": entry.device,
            "checkpoint_sha256": entry.weights_sha256,
        }
        if entry.last_load_error is not None:
            meta["last_load_error"] = entry.last_load_error
        config = entry.config
        if config is not None:
            meta.update(
                task=config.task,
                description=config.description,
                architecture=config.architecture.model_dump(),
                input=config.input.model_dump(),
                labels=config.labels,
                data=config.data,
                metrics=config.metrics,
                training=config.training,
            )
        if entry.batcher is not None:
            limits = entry.batcher.limits
            meta["batching"] = {
                "max_batch_size": limits.max_batch_size,
                "max_batch_delay_ms": limits.max_batch_delay_ms,
                "max_batch_tokens": limits.max_batch_tokens,
                "max_queue_size": limits.max_queue_size,
                "queued_items": entry.batcher.queued_items,
            }
        return meta

    def refresh_gauges(self) -> None:
        """Queue depth and model state are read at scrape time, not tracked on every change."""
        metrics = self.metrics
        for name in self.registry.names():
            for entry in self.registry.versions(name):
                depth = entry.batcher.busy_items if entry.batcher else 0
                metrics.queue_depth.labels(name, entry.version).set(depth)
                for state in _STATES:
                    metrics.model_state.labels(name, entry.version, state).set(entry.state == state)

    def ready(self) -> bool:
        return not self.lifecycle.draining and self.registry.all_ready()
