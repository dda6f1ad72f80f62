"""A forward pass on warm-up inputs built from the config: a checkpoint whose outputs there are not
finite numbers (weights that overflow, a recurrence that diverges) is refused before it serves."""

from __future__ import annotations

import torch
from torch import nn

from models.checkpoint import CheckpointError, ModelConfig
from models.families import family_of


def warmup_inputs(config: ModelConfig, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The arguments of one forward call on a small batch of valid inputs, the family's warm-up
    items: for a vector model the zero vector and, where the config bounds the input, its
    minimum and maximum; for a sequence model the shortest and the longest items allowed."""
    args = family_of(config.architecture).warmup_args(config)
    # Lengths (the second argument of a sequence model) stay on the CPU for packing.
    return tuple(a.to(device) if i == 0 else a for i, a in enumerate(args))


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
