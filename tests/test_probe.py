"""The warm-up probe: a model whose outputs on valid inputs are not finite is refused."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import CheckpointError, build_model
from models.probe import check_finite_outputs
from tests.conftest import tiny_configs


@pytest.mark.parametrize("config", tiny_configs(), ids=lambda c: c.name)
def test_a_freshly_initialised_model_passes_the_probe(config: object) -> None:
    torch.manual_seed(0)
    model = build_model(config).eval()  # type: ignore[arg-type]
    check_finite_outputs(model, config)  # type: ignore[arg-type]


@pytest.mark.parametrize("config", tiny_configs(), ids=lambda c: c.name)
def test_weights_that_overflow_float32_fail_the_probe(config: object) -> None:
    torch.manual_seed(0)
    model = build_model(config).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-1e38, 1e38)  # each finite; their sums are not
    with pytest.raises(CheckpointError, match="non-finite outputs"):
        check_finite_outputs(model, config)  # type: ignore[arg-type]
