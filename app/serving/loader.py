"""Loading one model version: read and verify its checkpoint, put it on its device, wrap it in a
servable, warm it up and put a dynamic batcher in front. The result, `LoadedModel`, is what the
registry hands out to serve requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.serving.batcher import BatchLimits, BatchReport, DynamicBatcher
from app.serving.generation import StepReport, StepScheduler
from app.serving.onnx_servable import is_onnx, load_onnx_servable, onnx_stepper
from app.serving.servables import AnyServable, SequenceScorer, make_servable
from app.settings import Settings
from models.architectures import CharLM
from models.checkpoint import (
    CheckpointError,
    ModelConfig,
    load_checkpoint,
    read_config,
    sha256_file,
    weights_path,
)
from models.families.base import Task
from models.probe import check_finite_outputs


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version that can take requests: everything here is present."""

    name: str
    version: str
    config: ModelConfig
    servable: AnyServable
    batcher: DynamicBatcher
    device: str
    weights_sha256: str
    generator: StepScheduler | None = None  # language models: step-level batched generation

    @property
    def task(self) -> Task:
        return self.servable.task


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


def configured_device(path: Path, settings: Settings) -> torch.device:
    """The device the version's config.json asks for, else the service-wide setting."""
    try:
        requested = read_config(path, load_files=False).device or settings.device
    except CheckpointError:
        requested = settings.device
    return resolve_device(requested)


async def load_model(
    name: str,
    version: str,
    path: Path,
    settings: Settings,
    executor_for: Callable[[torch.device], Executor],
    on_batch: Callable[[BatchReport], None] | None,
    on_step: Callable[[StepReport], None] | None = None,
) -> LoadedModel:
    """Load, check and warm up one version; its batcher is started. Raises CheckpointError (or
    OSError/RuntimeError/ValueError from torch) when the checkpoint cannot serve."""
    loop = asyncio.get_running_loop()
    module: torch.nn.Module | None = None
    if is_onnx(path):  # a graph run by ONNX Runtime (app/serving/onnx_servable.py)
        servable, config, onnx_device = await loop.run_in_executor(
            None, load_onnx_servable, path, settings
        )
        device = torch.device(onnx_device)
    else:
        device = configured_device(path, settings)
        module, config = await loop.run_in_executor(None, load_checkpoint, path, device)
    if config.name != name:
        raise CheckpointError(
            f"config.json names the model '{config.name}' but it lies under '{name}'"
        )
    if module is not None:
        # Finite weights can still overflow: the same probe as `batchserve check`.
        await loop.run_in_executor(None, check_finite_outputs, module, config)
        if settings.compile:
            module = torch.compile(module, dynamic=True)  # type: ignore[assignment]
        servable = make_servable(module, config, device, settings.pin_memory)
    executor = executor_for(device)
    if settings.warmup:
        await loop.run_in_executor(executor, _warm_up, servable)
    sha256 = config.weights_sha256 or sha256_file(weights_path(path, config))
    batcher = DynamicBatcher(
        run_batch=_inference_call(servable),
        executor=executor,
        limits=batch_limits(config, settings),
        item_tokens=servable.item_tokens,
        observer=on_batch,
    )
    batcher.start()
    generator = _generator(module, servable, executor, batcher.limits, on_step)
    return LoadedModel(name, version, config, servable, batcher, str(device), sha256, generator)


def _generator(
    module: torch.nn.Module | None,
    servable: AnyServable,
    executor: Executor,
    limits: BatchLimits,
    on_step: Callable[[StepReport], None] | None,
) -> StepScheduler | None:
    """A step scheduler for a language model that can step (a native CharLM, or an ONNX
    scoring graph: `module` None), sharing the inference thread of its batcher."""
    if not isinstance(servable, SequenceScorer):
        return None
    if module is None:
        lm = onnx_stepper(servable)
    else:
        native = getattr(module, "_orig_mod", module)  # through torch.compile's wrapper
        lm = native if isinstance(native, CharLM) else None
    if lm is None:
        return None
    vocab = servable.vocab
    scheduler = StepScheduler(
        lm,
        servable.device,
        executor,
        bos=vocab.bos,
        eos=vocab.eos,
        max_running=limits.max_batch_size,
        max_waiting=limits.max_queue_size,
        observer=on_step,
    )
    scheduler.start()
    return scheduler


def batch_limits(config: ModelConfig, settings: Settings) -> BatchLimits:
    """The service-wide batching settings, overridden by the model's own `batching`."""
    own = config.batching
    delay_ms = settings.max_batch_delay_ms
    tokens = own.max_batch_tokens or settings.max_batch_tokens
    return BatchLimits(
        max_batch_size=own.max_batch_size or settings.max_batch_size,
        max_batch_delay_ms=delay_ms if own.max_batch_delay_ms is None else own.max_batch_delay_ms,
        # Steps of every sequence input (characters, words, subwords, numeric steps).
        max_batch_tokens=None if config.input.kind == "vector" else tokens,
        max_queue_size=settings.max_queue_size,
        max_queue_wait_ms=settings.max_queue_wait_ms,
        max_waiting=settings.max_connections,
        retry_after_s=settings.retry_after_s,
        idle_turns_to_close=settings.batch_idle_turns,
        inline_max_ms=settings.inline_max_ms,
    )


def _inference_call(servable: AnyServable) -> Callable[[list[Any]], list[Any]]:
    def run(items: list[Any]) -> list[Any]:
        with torch.inference_mode():
            return servable.infer(items)

    return run


def _warm_up(servable: AnyServable) -> None:
    # A few passes at batch sizes 1 and 8 so the first real requests don't pay allocator and
    # kernel-selection costs.
    with torch.inference_mode():
        item = servable.warmup_item()
        for size in (1, 8, 1):
            servable.run([item] * size)
        if servable.device.type == "cuda":
            torch.cuda.synchronize(servable.device)
