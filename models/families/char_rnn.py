"""The `char_rnn_classifier` family: the PyTorch tutorial's character RNN (the Elman `i2h`/`i2o`
cell, or one nn.RNN/GRU/LSTM layer read out by `i2o`) over one-hot characters; classify only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from torch import nn

from models.architectures import CharRNNClassifier
from models.families.base import MAX_WIDTH, Family, Output, _Strict

if TYPE_CHECKING:
    from models.checkpoint import ModelConfig


class CharRNNArchitecture(_Strict):
    type: Literal["char_rnn_classifier"] = "char_rnn_classifier"
    cell: Literal["elman", "rnn", "gru", "lstm"] = "elman"
    hidden_size: int = Field(ge=1, le=MAX_WIDTH)
    # elman only: "identity" is the PyTorch tutorial's i2h/i2o RNN as written (no tanh).
    hidden_activation: Literal["tanh", "identity"] = "tanh"
    output: Literal["log_softmax"] = "log_softmax"

    @model_validator(mode="after")
    def _activation_of_elman_only(self) -> CharRNNArchitecture:
        if self.hidden_activation != "tanh" and self.cell != "elman":
            raise ValueError("hidden_activation applies to the elman cell only")
        return self


class CharRNNFamily(Family[CharRNNArchitecture]):
    type = "char_rnn_classifier"
    architecture = CharRNNArchitecture
    inputs = ("text",)
    tasks = ("classify",)

    def output(self, arch: CharRNNArchitecture) -> Output:
        return "log_probs"

    def num_outputs(self, arch: CharRNNArchitecture, config: ModelConfig) -> int | None:
        return None  # as many as the labels

    def build(self, arch: CharRNNArchitecture, config: ModelConfig) -> nn.Module:
        assert config.input.kind == "text"
        return CharRNNClassifier(
            len(config.input.alphabet),
            arch.hidden_size,
            len(config.labels),
            arch.cell,
            arch.hidden_activation,
        )
