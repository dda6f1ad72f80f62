"""ONNX model versions as servables: the graph's session wrapped as the module the native
servables call (`forward` on the collated CPU tensors), so that parsing, batching, the heads and
the results are the native ones on every protocol. The graph work (padding with the graph's
lengths input or grouping by length, what the head output holds) is models.onnx_file's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from torch import nn

from app.serving.servables import AnyServable, SequenceScorer, make_servable
from app.settings import Settings
from models.architectures import CharLM
from models.checkpoint import ModelConfig, read_config
from models.families import family_of
from models.onnx_file import Array, OnnxModel, load_onnx

# What the native servable of a config expects its module to return: a classifier and the scorer
# take log-probabilities (the family's word); a multilabel head applies a sigmoid to per-label
# logits; a regress head takes the values (and undoes the target scaling).
Returns = Literal["logits", "log_probs", "label_logits", "values"]


def is_onnx(path: Path) -> bool:
    """Whether the version in `path` says it is ONNX (an unreadable config is not: its error
    comes from the native loader)."""
    try:
        return read_config(path, load_files=False).format == "onnx"
    except Exception:  # noqa: BLE001 - any problem with the config is reported by the loader
        return False


def load_onnx_servable(path: Path, settings: Settings) -> tuple[AnyServable, ModelConfig, str]:
    """Load, check and probe the ONNX version in `path` (blocking: run it in an executor); also
    the device ONNX Runtime runs it on. The servable itself stays on the CPU: ONNX Runtime
    moves the batch to its device."""
    requested = read_config(path, load_files=False).device or settings.device
    model, config = load_onnx(path, requested, settings.torch_threads)
    return make_onnx_servable(model, config), config, model.device


def make_onnx_servable(model: OnnxModel, config: ModelConfig) -> AnyServable:
    module = OnnxModule(model, _returns(config))
    return make_servable(module, config, torch.device("cpu"), pin_memory=False)


def _returns(config: ModelConfig) -> Returns:
    """What the servable of this config expects its module to return (the family's word for
    classify and score; the head's own input for multilabel and regress)."""
    if config.task == "multilabel":
        return "label_logits"
    if config.task == "regress":
        return "values"
    return family_of(config.architecture).output(config.architecture)


class OnnxModule(nn.Module):
    """A graph in an ONNX Runtime session, called as a native model's module: a vector batch
    [B, width], or token ids [B, T] and their lengths [B]; returns [B, labels] or [B, T, V]
    float32, logits, log-probabilities, per-label logits or values as `returns` says."""

    def __init__(self, graph: OnnxModel, returns: Returns) -> None:
        super().__init__()
        self.graph, self.returns = graph, returns

    def forward(self, batch: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        graph = self.graph
        if lengths is None:
            output = graph.vectors(batch.numpy())
        else:
            rows = [batch[i, :n].tolist() for i, n in enumerate(lengths.tolist())]
            output = _stacked(graph.tokens(rows), batch.shape[1])
        if self.returns == "log_probs":
            output = graph.log_probs(output)
        elif self.returns == "label_logits":  # the head's sigmoid gives the probabilities back
            output = graph.label_logits(output)
        elif self.returns == "values":
            pass  # the graph's own outputs; the head undoes the target scaling
        elif graph.output_kind == "probabilities":  # softmax(log p) is p again
            with np.errstate(divide="ignore"):
                output = np.log(output)
        return torch.from_numpy(np.ascontiguousarray(output, dtype=np.float32))


def _stacked(outputs: list[Array], steps: int) -> Array:
    """One output per row as a batch; per-step outputs zero-padded to `steps`."""
    if outputs[0].ndim == 1:
        return np.stack(outputs)
    batch = np.zeros((len(outputs), steps, outputs[0].shape[-1]), dtype=outputs[0].dtype)
    for i, output in enumerate(outputs):
        batch[i, : len(output)] = output
    return batch


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


def onnx_stepper(servable: SequenceScorer) -> CharLM | None:
    """`prefill` and `step` for an ONNX scoring model (completions), or None for a native one;
    the loader runs it in the same step scheduler as a native language model."""
    if not isinstance(servable.model, OnnxModule):
        return None
    # The most tokens a sequence holds: BOS, the characters and EOS (completions' own limit).
    stepper = OnnxStepper(servable.model.graph, width=1 + servable.max_length + 2)
    return cast(CharLM, stepper)  # the scheduler calls only prefill and step
