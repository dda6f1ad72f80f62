"""The contract between the service and a loaded model: `parse_item` checks one item (on the event
loop, raising `InvalidInput` that names the field); `run` collates a batch of checked items, runs
one forward pass and splits the output per item; `encode` turns one item's output into its typed
result. `run` and `encode` are called on the device's inference thread under
`torch.inference_mode()`."""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from app.errors import InvalidInput, ResultNotFinite
from app.serving.heads import DEFAULT_THRESHOLD
from app.serving.results import ClassScores, LabelScores, Regression, SequenceScore
from models.checkpoint import ModelConfig
from models.families import family_of
from models.families.base import (
    CharCodec,
    Codec,
    ItemError,
    SubwordCodec,
    Task,
    WordCodec,
    padded,
)
from models.families.base import json_type as _json_type
from models.families.base import json_type_name as json_type_name
from models.text import Vocab, normalize

NOT_FINITE = "the model's {what} for this item are not finite (NaN or infinity)"
# exp() of more than this overflows a float64 (and more than 88.7 a float32).
MAX_LOG_PERPLEXITY = math.log(sys.float_info.max)
ItemT = TypeVar("ItemT")
OutputT = TypeVar("OutputT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class ScoreItem:
    """A token sequence to score: `tokens` are the targets (EOS included for whole strings);
    the log-probabilities from position `score_from` on are summed. A pair's continuation
    starts at `score_from`; a whole string has score_from 0."""

    tokens: list[int]
    score_from: int
    pair: bool = False


@dataclass(frozen=True, slots=True)
class TokenScores:
    log_probs: list[float]
    is_greedy: bool


class Servable(ABC, Generic[ItemT, OutputT, ResultT]):
    """A model in eval() on its device, its config, and how to feed it."""

    task: Task
    # The most JSON values (numbers, strings, arrays, objects) one valid item can be written
    # with: a transport can refuse a body that holds more before it parses it.
    max_item_values: int = 1

    def __init__(
        self, model: nn.Module, config: ModelConfig, device: torch.device, pin_memory: bool = True
    ) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.pin_memory = pin_memory  # as configured; it only takes effect on CUDA
        self._pin = pin_memory and device.type == "cuda"

    @abstractmethod
    def parse_item(self, raw: Any, field: str, numbers_checked: bool = False) -> ItemT:
        """A checked item from its JSON form; raises InvalidInput naming `field`.
        `numbers_checked`: the caller knows that every leaf of `raw` is a number (its decoder
        saw the types), so they need not be looked at again."""

    @abstractmethod
    def run(self, items: list[ItemT]) -> list[OutputT]:
        """One forward pass over the batch; one output per item, in order."""

    @abstractmethod
    def encode(self, item: ItemT, output: OutputT) -> ResultT:
        """The typed result of one item."""

    @abstractmethod
    def warmup_item(self) -> ItemT:
        """A valid item, for warm-up passes."""

    def item_tokens(self, item: ItemT) -> int:
        """The item's share of `max_batch_tokens`."""
        return 1

    def infer(self, items: list[ItemT]) -> list[ResultT]:
        """`run`, then `encode` per item: what the batcher calls on the inference thread."""
        return [self.encode(i, o) for i, o in zip(items, self.run(items), strict=True)]

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        if self.device.type != "cpu":
            return tensor.to(self.device)
        return tensor


class Predictor(Servable[Any, list[float], Any]):
    """Any family with a predict head: the family's codec checks and batches the items, one
    forward pass, then the head: classify (softmax over the labels, or exp of a family's
    log-probabilities), multilabel (a sigmoid per label), regress (target scaling undone)."""

    def __init__(
        self, model: nn.Module, config: ModelConfig, device: torch.device, pin_memory: bool = True
    ) -> None:
        super().__init__(model, config, device, pin_memory)
        self.task = config.task
        family = family_of(config.architecture)
        self.codec: Codec[Any] = family.codec(config)
        self.log_probs = family.output(config.architecture) == "log_probs"
        self.max_item_values = self.codec.max_item_values
        self.threshold = DEFAULT_THRESHOLD if config.threshold is None else config.threshold
        scaling = config.target_scaling
        self.scale = None if scaling is None else torch.tensor(scaling.std, device=device)
        self.shift = None if scaling is None else torch.tensor(scaling.mean, device=device)

    def parse_item(self, raw: Any, field: str, numbers_checked: bool = False) -> Any:
        try:
            return self.codec.parse(raw, field, numbers_checked)
        except ItemError as exc:
            raise InvalidInput(str(exc)) from None

    def item_tokens(self, item: Any) -> int:
        return self.codec.tokens(item)

    def run(self, items: list[Any]) -> list[list[float]]:
        first, *rest = self.codec.collate(items)  # lengths stay on the CPU
        out = self.model(self._to_device(first), *rest)
        if self.task == "classify":
            out = out.exp() if self.log_probs else torch.softmax(out, dim=-1)
        elif self.task == "multilabel":
            out = torch.sigmoid(out)
        elif self.scale is not None and self.shift is not None:
            out = out * self.scale + self.shift
        rows: list[list[float]] = out.cpu().tolist()
        return rows

    def encode(self, item: Any, output: list[float]) -> ClassScores | LabelScores | Regression:
        if not all(map(math.isfinite, output)):
            what = "outputs" if self.task == "regress" else "class probabilities"
            raise ResultNotFinite(NOT_FINITE.format(what=what))
        if self.task == "classify":
            return ClassScores(output)
        if self.task == "multilabel":
            return LabelScores(output, self.threshold)
        return Regression(output)

    def warmup_item(self) -> Any:
        return self.codec.warmup_items()[0]


def _padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return padded(rows)


class CharacterInput:
    """The character, word or subword codec, raising InvalidInput (the score head's items are
    built from it)."""

    def __init__(self, config: ModelConfig) -> None:
        codec = family_of(config.architecture).codec(config)
        assert isinstance(codec, CharCodec | WordCodec | SubwordCodec)
        self.codec: CharCodec | WordCodec | SubwordCodec = codec
        self.vocab: Vocab = codec.vocab
        self.max_length = codec.max_length
        self.normalize_mode = codec.normalize_mode
        self.max_raw_length = codec.max_raw_length

    def encode(self, raw: Any, field: str, allow_empty: bool = False) -> list[int]:
        try:
            return self.codec.encode(raw, field, allow_empty)
        except ItemError as exc:
            raise InvalidInput(str(exc)) from None

    def warmup_characters(self) -> list[int]:
        return self.codec.warmup_characters()


class SequenceScorer(Servable[ScoreItem, TokenScores, SequenceScore]):
    """A character language model: ln P of strings, or of a continuation given a context."""

    task = "score"

    def __init__(
        self, model: nn.Module, config: ModelConfig, device: torch.device, pin_memory: bool = True
    ) -> None:
        super().__init__(model, config, device, pin_memory)
        self.text = CharacterInput(config)
        self.vocab = self.text.vocab
        self.max_length = self.text.max_length
        self.max_item_values = 3 + 2 * self.text.max_raw_length  # a pair: an object, 2 strings

    def parse_item(self, raw: Any, field: str, numbers_checked: bool = False) -> ScoreItem:
        tokens = [*self.text.encode(raw, field), self.vocab.eos]
        return ScoreItem(tokens, 0)

    def tokenize(self, raw: Any, field: str) -> list[int]:
        """Token ids of a text prompt: its characters after the model's normalization, with the
        literal strings "<s>" and "</s>" read as the start and end tokens."""
        if not isinstance(raw, str):
            raise InvalidInput(f"{field}: expected a string, got {_json_type(raw)}")
        # The cheap limit first, as for items: room for the characters and both special tokens.
        limit = self.text.max_raw_length + len("<s></s>")
        if len(raw) > limit:
            raise InvalidInput(
                f"{field}: the text has {len(raw)} characters; the limit is {self.max_length}"
            )
        text = raw if raw.isascii() else normalize(raw, self.text.normalize_mode)
        try:
            return self.vocab.tokenize(text)
        except ValueError as exc:
            raise InvalidInput(f"{field}: {exc}") from None

    def check_token_ids(self, ids: Any, field: str) -> list[int]:
        """A prompt given as token ids: integers of the vocabulary."""
        size = self.vocab.lm_vocab_size
        if not isinstance(ids, list) or not all(type(i) is int for i in ids):
            raise InvalidInput(f"{field}: expected an array of token ids (integers)")
        if len(ids) > self.max_length + 2:
            raise InvalidInput(
                f"{field}: {len(ids)} tokens; the model reads at most {self.max_length} "
                "characters and its two special tokens"
            )
        wrong = [i for i in ids if not 0 <= i < size]
        if wrong:
            raise InvalidInput(f"{field}: token ids {wrong[:5]} outside 0..{size - 1}")
        return ids

    def parse_pair(self, context: Any, continuation: Any, field: str) -> ScoreItem:
        before = self.text.encode(context, f"{field}.context", allow_empty=True)
        after = self.text.encode(continuation, f"{field}.continuation")
        if len(before) + len(after) > self.max_length:
            raise InvalidInput(
                f"{field}: context and continuation have {len(before) + len(after)} characters "
                f"together; the limit is {self.max_length}"
            )
        return ScoreItem([*before, *after], len(before), pair=True)

    def item_tokens(self, item: ScoreItem) -> int:
        return len(item.tokens)

    def run(self, items: list[ScoreItem]) -> list[TokenScores]:
        # Input at step t is the token before target t: BOS, then the targets shifted right.
        inputs, lengths = _padded([[self.vocab.bos, *it.tokens[:-1]] for it in items])
        targets = self._to_device(_padded([it.tokens for it in items])[0])
        log_probs = self.model(self._to_device(inputs), lengths)
        picked = log_probs.gather(2, targets.unsqueeze(-1)).squeeze(-1)
        greedy = log_probs.argmax(dim=-1) == targets
        picked_rows, greedy_rows = picked.cpu().tolist(), greedy.cpu().tolist()
        return [
            TokenScores(p[it.score_from : len(it.tokens)], all(g[it.score_from : len(it.tokens)]))
            for it, p, g in zip(items, picked_rows, greedy_rows, strict=True)
        ]

    def encode(self, item: ScoreItem, output: TokenScores) -> SequenceScore:
        log_probs = output.log_probs
        if not all(map(math.isfinite, log_probs)):
            raise ResultNotFinite(NOT_FINITE.format(what="log-probabilities"))
        log_prob = math.fsum(log_probs)
        tokens = tuple(self.vocab.token(t) for t in item.tokens[item.score_from :])
        if item.pair:
            return SequenceScore(log_prob, tokens, tuple(log_probs), None, output.is_greedy)
        per_token = -log_prob / len(log_probs)
        if per_token > MAX_LOG_PERPLEXITY:
            raise ResultNotFinite(
                f"the perplexity overflows: log_prob / num_tokens is {-per_token:.6g}, so "
                f"exp({per_token:.6g}) is beyond any float (log_prob itself is {log_prob:.6g})"
            )
        return SequenceScore(log_prob, tokens, tuple(log_probs), math.exp(per_token), None)

    def warmup_item(self) -> ScoreItem:
        return ScoreItem([*self.text.warmup_characters(), self.vocab.eos], 0)


AnyServable = Servable[Any, Any, Any]


def make_servable(
    model: nn.Module, config: ModelConfig, device: torch.device, pin_memory: bool = True
) -> AnyServable:
    if config.task == "score":
        return SequenceScorer(model, config, device, pin_memory)
    return Predictor(model, config, device, pin_memory)
