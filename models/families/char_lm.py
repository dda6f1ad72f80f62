"""The `char_lm` family: a recurrent language model (embedding -> GRU/LSTM -> linear over the
vocabulary plus BOS and EOS) over characters (text input: the alphabet) or words (words input:
the vocabulary; the name is kept from when it read characters only); the score head (and
generation) only. Its items (strings, pairs,
prompts) are the score head's, in `app.serving.servables.SequenceScorer`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import nn

from models.architectures import CharLM
from models.families.base import (
    MAX_WIDTH,
    CharCodec,
    Family,
    Output,
    TextInput,
    WordCodec,
    WordsInput,
    _Strict,
    padded,
)

if TYPE_CHECKING:
    from models.checkpoint import ModelConfig


class CharLMArchitecture(_Strict):
    type: Literal["char_lm"] = "char_lm"
    cell: Literal["gru", "lstm"] = "gru"
    embedding_dim: int = Field(ge=1, le=MAX_WIDTH)
    hidden_size: int = Field(ge=1, le=MAX_WIDTH)
    num_layers: int = Field(default=1, ge=1, le=16)


class CharLMFamily(Family[CharLMArchitecture]):
    type = "char_lm"
    architecture = CharLMArchitecture
    inputs = ("text", "words")
    tasks = ("score",)

    def output(self, arch: CharLMArchitecture) -> Output:
        return "log_probs"

    def num_outputs(self, arch: CharLMArchitecture, config: ModelConfig) -> int | None:
        return None

    def build(self, arch: CharLMArchitecture, config: ModelConfig) -> nn.Module:
        spec = config.input
        assert isinstance(spec, TextInput | WordsInput)
        size = len(spec.alphabet) if isinstance(spec, TextInput) else len(spec.vocabulary)
        return CharLM(
            size + 2,
            arch.embedding_dim,
            arch.hidden_size,
            arch.num_layers,
            arch.cell,
        )

    def warmup_args(self, config: ModelConfig) -> tuple[torch.Tensor, ...]:
        codec = self.codec(config)
        assert isinstance(codec, CharCodec | WordCodec)
        # The language model reads BOS, then the characters.
        return padded([[codec.vocab.bos, *row] for row in codec.warmup_items()])
