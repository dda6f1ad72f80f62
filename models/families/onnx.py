"""The `onnx` family: a graph in `model.onnx`, run by ONNX Runtime (`"format": "onnx"`). Its
architecture names the graph's tensors (models.onnx_schema); the graph itself is checked against
the config when it loads (models.onnx_file), so there is no module to build here. Its output is
log-probabilities for classify and score: the servable turns whatever the graph's head holds
(logits, probabilities or log-probabilities) into them, and the predict head takes their exp. For
multilabel the servable gives per-label logits (the head's sigmoid follows), for regress the
graph's values (the head undoes the target scaling)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from models.families.base import Family, Output
from models.onnx_schema import ONNX_FILE, TASK_KINDS, OnnxArchitecture

if TYPE_CHECKING:
    from models.checkpoint import ModelConfig


class OnnxFamily(Family[OnnxArchitecture]):
    type = "onnx"
    architecture = OnnxArchitecture
    inputs = ("vector", "text")
    tasks = ("classify", "multilabel", "regress", "score")

    def output(self, arch: OnnxArchitecture) -> Output:
        return "log_probs"

    def num_outputs(self, arch: OnnxArchitecture, config: ModelConfig) -> int | None:
        return None  # the graph's output shape is checked against the labels at load

    def build(self, arch: OnnxArchitecture, config: ModelConfig) -> nn.Module:
        raise ValueError("an onnx version has no PyTorch module: ONNX Runtime runs its graph")

    def check(self, arch: OnnxArchitecture, config: ModelConfig) -> None:
        super().check(arch, config)
        if arch.lengths_input is not None and config.input.kind != "text":
            raise ValueError("architecture.lengths_input applies to a text input only")
        if arch.lengths_input == arch.input:
            raise ValueError("architecture.lengths_input must be another graph input than input")
        kinds = TASK_KINDS[config.task]
        if arch.output_kind not in kinds:
            raise ValueError(
                f"architecture.output_kind: a {config.task} head's output holds "
                f"{' or '.join(kinds)}, not {arch.output_kind}"
            )
        if config.weights_file != ONNX_FILE:
            raise ValueError(f"weights_file: an onnx version's is {ONNX_FILE}")
