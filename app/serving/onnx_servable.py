"""ONNX model versions as servables: the native servables' parsing, per-item checks and results
(so every protocol serves them alike), with each batch run through ONNX Runtime instead of a
PyTorch module. The graph work (padding or grouping by length, the head's output) is
models.onnx_file's; here only the batch is collated and split."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from app.serving.batcher import BatchLimits
from app.serving.generation import StepReport, StepScheduler
from app.serving.servables import (
    AnyServable,
    ScoreItem,
    SequenceScorer,
    TextClassifier,
    TokenScores,
    Vector,
    VectorClassifier,
)
from app.settings import Settings
from models.architectures import CharLM
from models.checkpoint import ModelConfig, TextInput, read_config
from models.onnx_file import OnnxModel, load_onnx

# The native servables keep a module; an ONNX version's graph lives in its session instead.
NO_MODULE = nn.Module()


def is_onnx(path: Path) -> bool:
    """Whether the version in `path` says it is ONNX (an unreadable config is not: its error
    comes from the native loader)."""
    try:
        return read_config(path).format == "onnx"
    except Exception:  # noqa: BLE001 - any problem with the config is reported by the loader
        return False


def load_onnx_servable(path: Path, settings: Settings) -> tuple[AnyServable, ModelConfig]:
    """Load, check and probe the ONNX version in `path` (blocking: run it in an executor)."""
    requested = _requested_device(path, settings)
    model, config = load_onnx(path, requested, settings.torch_threads)
    return make_onnx_servable(model, config), config


def _requested_device(path: Path, settings: Settings) -> str:
    return read_config(path).device or settings.device


def make_onnx_servable(model: OnnxModel, config: ModelConfig) -> AnyServable:
    device = torch.device(model.device)
    if config.task == "score":
        return OnnxScorer(model, config, device)
    if isinstance(config.input, TextInput):
        return OnnxTextClassifier(model, config, device)
    return OnnxVectorClassifier(model, config, device)


class OnnxVectorClassifier(VectorClassifier):
    def __init__(self, graph: OnnxModel, config: ModelConfig, device: torch.device) -> None:
        super().__init__(NO_MODULE, config, device, pin_memory=False)
        self.graph = graph

    def run(self, items: list[Vector]) -> list[list[float]]:
        graph = self.graph
        rows: list[list[float]] = graph.probabilities(graph.vectors(np.stack(items))).tolist()
        return rows


class OnnxTextClassifier(TextClassifier):
    def __init__(self, graph: OnnxModel, config: ModelConfig, device: torch.device) -> None:
        super().__init__(NO_MODULE, config, device, pin_memory=False)
        self.graph = graph

    def run(self, items: list[list[int]]) -> list[list[float]]:
        graph = self.graph
        return [graph.probabilities(output).tolist() for output in graph.tokens(items)]


class OnnxScorer(SequenceScorer):
    def __init__(self, graph: OnnxModel, config: ModelConfig, device: torch.device) -> None:
        super().__init__(NO_MODULE, config, device, pin_memory=False)
        self.graph = graph

    def run(self, items: list[ScoreItem]) -> list[TokenScores]:
        # Input at step t is the token before target t: BOS, then the targets shifted right.
        graph, bos = self.graph, self.vocab.bos
        outputs = graph.tokens([[bos, *it.tokens[:-1]] for it in items])
        return [
            _scores(it, graph.log_probs(output)) for it, output in zip(items, outputs, strict=True)
        ]


def _scores(item: ScoreItem, log_probs: Any) -> TokenScores:
    targets = np.asarray(item.tokens)
    picked = log_probs[np.arange(len(targets)), targets][item.score_from :]
    greedy = (log_probs.argmax(axis=-1) == targets)[item.score_from :]
    return TokenScores(picked.tolist(), bool(greedy.all()))


class OnnxStepper:
    """`prefill` and `step` as the step scheduler calls them (CharLM's), for a scoring graph
    that takes token ids and gives next-token outputs at every step but has no state input: the
    state is each row's tokens so far (its length in column 0), and each step reads them all
    again. Quadratic in the length, which a character model's few dozen steps can afford."""

    def __init__(self, graph: OnnxModel, width: int) -> None:
        self.graph, self.width = graph, width

    def prefill(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [tokens[i, : int(n)].tolist() for i, n in enumerate(lengths)]
        outputs = [self.graph.log_probs(o) for o in self.graph.tokens(rows)]
        vocabulary = outputs[0].shape[-1]
        log_probs = torch.zeros(len(rows), tokens.shape[1], vocabulary)
        state = torch.zeros(len(rows), self.width, dtype=torch.long)
        for i, (row, output) in enumerate(zip(rows, outputs, strict=True)):
            log_probs[i, : len(row)] = torch.from_numpy(output)
            state[i, 0] = len(row)
            state[i, 1 : 1 + len(row)] = torch.tensor(row)
        return log_probs, state

    def step(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = state.clone()
        rows = []
        for i, token in enumerate(tokens.tolist()):
            length = int(state[i, 0])
            if 1 + length >= self.width:
                raise RuntimeError("the sequence is longer than the model reads")
            state[i, 1 + length], state[i, 0] = token, length + 1
            rows.append(state[i, 1 : 2 + length].tolist())
        outputs = self.graph.tokens(rows)
        last = np.stack([self.graph.log_probs(o)[-1] for o in outputs])
        return torch.from_numpy(last).float(), state


def onnx_generator(
    servable: AnyServable,
    executor: Executor,
    limits: BatchLimits,
    on_step: Callable[[StepReport], None] | None,
) -> StepScheduler | None:
    """A step scheduler for an ONNX scoring model (completions), sharing its batcher's thread."""
    if not isinstance(servable, OnnxScorer):
        return None
    vocab = servable.vocab
    # The most tokens a sequence holds: BOS, the characters and EOS (completions' own limit).
    stepper = OnnxStepper(servable.graph, width=1 + servable.max_length + 2)
    scheduler = StepScheduler(
        cast(CharLM, stepper),  # the scheduler calls only prefill and step
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
