"""ONNX model versions as servables: the native servables' parsing, per-item checks and results
(so every protocol serves them alike), with each batch run through ONNX Runtime instead of a
PyTorch module. The graph work (padding or grouping by length, the head's output) is
models.onnx_file's; here only the batch is collated and split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
