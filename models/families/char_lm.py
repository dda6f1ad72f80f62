"""The `char_lm` family: a recurrent language model (embedding -> GRU/LSTM -> linear over the
vocabulary) over characters (text input: the alphabet, then BOS and EOS), words (words input: the
vocabulary, then BOS and EOS) or subwords (subwords input: the tokenizer file's vocabulary, whose
own tokens `bos_token` and `eos_token` are BOS and EOS); the name is kept from when it read
characters only; the score head (and generation) only. Its items (strings, pairs,
prompts) are the score head's, in `app.serving.servables.SequenceScorer`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn

from models.architectures import CharLM
from models.families.base import (
    MAX_WIDTH,
    CharCodec,
    Codec,
    Family,
    Output,
    SubwordCodec,
    SubwordsInput,
    TextInput,
    WordCodec,
    WordsInput,
    _Strict,
    make_codec,
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
    inputs = ("text", "words", "subwords")
    tasks = ("score",)

    def check(self, arch: CharLMArchitecture, config: ModelConfig) -> None:
        super().check(arch, config)
        spec = config.input
        if isinstance(spec, SubwordsInput) and (spec.bos_token is None or spec.eos_token is None):
            raise ValueError(
                "input.bos_token, input.eos_token: a language model over subwords names its "
                "start and end tokens (tokens of its tokenizer file)"
            )

    def codec(self, config: ModelConfig) -> Codec[Any]:
        spec = config.input
        if isinstance(spec, SubwordsInput):  # BOS and EOS are the model's, not a post-processor's
            return SubwordCodec(spec, post_process=False)
        return make_codec(spec)

    def output(self, arch: CharLMArchitecture) -> Output:
        return "log_probs"

    def num_outputs(self, arch: CharLMArchitecture, config: ModelConfig) -> int | None:
        return None

    def build(self, arch: CharLMArchitecture, config: ModelConfig) -> nn.Module:
        spec = config.input
        if isinstance(spec, SubwordsInput):
            size = spec.vocab_size  # BOS and EOS are tokens of the file
        else:
            assert isinstance(spec, TextInput | WordsInput)
            words = len(spec.alphabet) if isinstance(spec, TextInput) else len(spec.vocabulary)
            size = words + 2
        return CharLM(
            size,
            arch.embedding_dim,
            arch.hidden_size,
            arch.num_layers,
            arch.cell,
        )

    def warmup_args(self, config: ModelConfig) -> tuple[torch.Tensor, ...]:
        codec = self.codec(config)
        assert isinstance(codec, CharCodec | WordCodec | SubwordCodec)
        # The language model reads BOS, then the characters.
        return padded([[codec.vocab.bos, *row] for row in codec.warmup_items()])
