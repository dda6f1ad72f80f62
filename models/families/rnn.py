"""The `rnn` family: a recurrent classifier over sequences. The encoder follows the input:
one-hot characters (text input, no embedding_dim), an embedding over the characters, a word
vocabulary or a subword tokenizer's vocabulary (text, words or subwords input with
embedding_dim), or the numeric steps themselves (sequence input, `[T, features]`); then
nn.RNN/GRU/LSTM with num_layers and bidirectional, read out from the last step or pooled (mean,
max) over the real steps, and one Linear layer. Heads: classify, multilabel, regress."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from torch import nn

from models.architectures import SequenceClassifier
from models.families.base import (
    MAX_WIDTH,
    Family,
    Output,
    SubwordsInput,
    TextInput,
    WordsInput,
    _Strict,
)

if TYPE_CHECKING:
    from models.checkpoint import ModelConfig


class RNNArchitecture(_Strict):
    type: Literal["rnn"] = "rnn"
    cell: Literal["rnn", "gru", "lstm"] = "gru"
    nonlinearity: Literal["tanh", "relu"] = "tanh"  # cell "rnn" only
    embedding_dim: int | None = Field(default=None, ge=1, le=MAX_WIDTH)
    hidden_size: int = Field(ge=1, le=MAX_WIDTH)
    num_layers: int = Field(default=1, ge=1, le=16)
    bidirectional: bool = False
    readout: Literal["last", "mean", "max"] = "last"
    # logits: the head applies softmax/sigmoid/scaling; log_softmax: the module's last step is a
    # LogSoftmax (classify only).
    output: Literal["logits", "log_softmax"] = "logits"

    @model_validator(mode="after")
    def _nonlinearity_of_rnn_only(self) -> RNNArchitecture:
        if self.nonlinearity != "tanh" and self.cell != "rnn":
            raise ValueError("architecture.nonlinearity applies to the rnn cell only")
        return self


def encoder(arch: RNNArchitecture, config: ModelConfig) -> tuple[str, int]:
    """The encoder's kind and its input size (alphabet, vocabulary or features)."""
    spec = config.input
    if spec.kind == "sequence":
        return "numeric", spec.features
    if isinstance(spec, TextInput):
        return ("one_hot" if arch.embedding_dim is None else "embedding"), len(spec.alphabet)
    if isinstance(spec, SubwordsInput):
        return "embedding", spec.vocab_size
    assert isinstance(spec, WordsInput)
    size = len(spec.vocabulary)
    return ("one_hot" if arch.embedding_dim is None else "embedding"), size


class RNNFamily(Family[RNNArchitecture]):
    type = "rnn"
    architecture = RNNArchitecture
    inputs = ("text", "words", "sequence", "subwords")
    tasks = ("classify", "multilabel", "regress")

    def output(self, arch: RNNArchitecture) -> Output:
        return "log_probs" if arch.output == "log_softmax" else "logits"

    def check(self, arch: RNNArchitecture, config: ModelConfig) -> None:
        super().check(arch, config)
        kind = config.input.kind
        if kind == "sequence" and arch.embedding_dim is not None:
            raise ValueError("architecture.embedding_dim: a numeric sequence is not embedded")
        if kind in ("words", "subwords") and arch.embedding_dim is None:
            raise ValueError(f"architecture.embedding_dim: {kind} input needs an embedding")
        spec = config.input
        if isinstance(spec, SubwordsInput) and (spec.bos_token or spec.eos_token):
            raise ValueError(
                "input.bos_token, input.eos_token: language models only; a classifier's special "
                "tokens are its tokenizer file's post-processor's"
            )
        if arch.output == "log_softmax" and config.task != "classify":
            raise ValueError("architecture.output: log_softmax is for a classify head only")

    def num_outputs(self, arch: RNNArchitecture, config: ModelConfig) -> int | None:
        return None  # as many as the labels

    def build(self, arch: RNNArchitecture, config: ModelConfig) -> nn.Module:
        kind, size = encoder(arch, config)
        return SequenceClassifier(
            kind,
            size,
            arch.cell,
            arch.hidden_size,
            len(config.labels),
            num_layers=arch.num_layers,
            bidirectional=arch.bidirectional,
            readout=arch.readout,
            embedding_dim=arch.embedding_dim,
            nonlinearity=arch.nonlinearity,
            log_softmax=arch.output == "log_softmax",
        )
