"""A forward pass on warm-up inputs built from the config: a checkpoint whose outputs there are not
finite numbers (weights that overflow, a recurrence that diverges) is refused before it serves."""

from __future__ import annotations

import torch
from torch import nn

from models.checkpoint import CheckpointError, ModelConfig, TextInput, VectorInput
from models.text import CharVocab


def warmup_inputs(config: ModelConfig, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The arguments of one forward call on a small batch of valid inputs: for a vector model the
    zero vector and, where the config bounds the input, its minimum and maximum; for a text model
    the first characters of the alphabet and a string of the longest allowed length."""
    if isinstance(config.input, VectorInput):
        return (_vector_rows(config.input).to(device),)
    assert isinstance(config.input, TextInput)
    vocab = CharVocab(config.input.alphabet)
    longest = config.input.max_length
    texts = [config.input.alphabet[:4], (config.input.alphabet * longest)[:longest]]
    rows = [vocab.encode(text) for text in texts]
    if config.task == "score":  # the language model reads BOS, then the characters
        rows = [[vocab.bos, *row] for row in rows]
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    padded = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return padded.to(device), lengths


def _vector_rows(spec: VectorInput) -> torch.Tensor:
    width = 1
    for n in spec.shape:
        width *= n
    values = [0.0] + [v for v in (spec.minimum, spec.maximum) if v is not None]
    return torch.tensor(values, dtype=torch.float32)[:, None].expand(len(values), width).clone()


def check_finite_outputs(model: nn.Module, config: ModelConfig) -> None:
    """Run `model` (in eval(), on any device) on warm-up inputs; raise CheckpointError unless every
    output is a finite number. The server's loader and `batchserve check` both call this."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        with torch.inference_mode():
            outputs = model(*warmup_inputs(config, device))
    except (RuntimeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"the warm-up forward pass failed: {exc}".splitlines()[0]) from None
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
        raise CheckpointError("the warm-up forward pass did not return a float tensor")
    finite = torch.isfinite(outputs)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise CheckpointError(
            f"the warm-up forward pass gives {bad} non-finite outputs (NaN or infinity) of "
            f"{outputs.numel()}: the weights overflow or the recurrence diverges"
        )
