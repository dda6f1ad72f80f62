"""The `onnx` family: a graph in `model.onnx`, run by ONNX Runtime (`"format": "onnx"`). Its
architecture names the graph's tensors (models.onnx_schema); the graph itself is checked against
the config when it loads (models.onnx_file), so there is no module to build here. Its output is
log-probabilities: the servable turns whatever the graph's head holds (logits, probabilities or
log-probabilities) into them, and the predict head takes their exp."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from models.families.base import Family, Output
from models.onnx_schema import ONNX_FILE, OnnxArchitecture

if TYPE_CHECKING:
    from models.checkpoint import ModelConfig


class OnnxFamily(Family[OnnxArchitecture]):
    type = "onnx"
    architecture = OnnxArchitecture
    inputs = ("vector", "text")
    # multilabel and regress need the graph's raw values, not log-probabilities: not yet.
    tasks = ("classify", "score")

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
        if config.weights_file != ONNX_FILE:
            raise ValueError(f"weights_file: an onnx version's is {ONNX_FILE}")
