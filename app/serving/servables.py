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
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from app.errors import InvalidInput, ResultNotFinite
from app.serving.results import ClassScores, SequenceScore
from models.checkpoint import ModelConfig, TextInput, VectorInput
from models.text import CharVocab, normalize

Task = Literal["classify", "score"]
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

    task: ClassVar[Task]
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


Vector = np.ndarray[Any, np.dtype[np.float32]]


class Classifier(Servable[ItemT, list[float], ClassScores]):
    """Output: one row of class probabilities per item."""

    task = "classify"

    def encode(self, item: ItemT, output: list[float]) -> ClassScores:
        if not all(map(math.isfinite, output)):
            raise ResultNotFinite(NOT_FINITE.format(what="class probabilities"))
        return ClassScores(output)


class VectorClassifier(Classifier[Vector]):
    """A classifier over fixed-size float vectors (the MNIST MLP)."""

    def __init__(
        self, model: nn.Module, config: ModelConfig, device: torch.device, pin_memory: bool = True
    ) -> None:
        super().__init__(model, config, device, pin_memory)
        assert isinstance(config.input, VectorInput)
        self.width = math.prod(config.input.shape)
        layouts = [config.input.shape, *config.input.also_shapes]
        self.shapes = {(self.width,), *(tuple(shape) for shape in layouts)}
        self.minimum = config.input.minimum
        self.maximum = config.input.maximum
        nested = [" or a " + "x".join(map(str, s)) + " nested list" for s in layouts if len(s) > 1]
        self.shapes_text = f"{self.width} numbers" + "".join(nested)
        self.lengths = {shape[0] for shape in self.shapes}
        # The numbers, plus every array that holds them: 1 + a + a*b for an a x b x c layout.
        self.max_item_values = self.width + max(
            sum(math.prod(shape[:depth]) for depth in range(len(shape))) for shape in self.shapes
        )

    def parse_item(self, raw: Any, field: str, numbers_checked: bool = False) -> Vector:
        if not isinstance(raw, list) or not raw:
            raise InvalidInput(f"{field}: expected {self.shapes_text}, got {_json_type(raw)}")
        if len(raw) not in self.lengths:  # before looking at each element
            shape = [len(raw), *([len(raw[0])] if type(raw[0]) is list else [])]
            raise InvalidInput(f"{field}: expected {self.shapes_text}, got shape {shape}")
        wrong = set() if numbers_checked else _element_types(raw) - {float, int}
        if wrong:
            found = ", ".join(sorted(json_type_name(t) for t in wrong))
            raise InvalidInput(f"{field}: expected {self.shapes_text}; found {found}")
        try:
            with np.errstate(over="ignore"):  # overflow to inf is reported as "not finite"
                array = np.array(raw, dtype=np.float32)
        except ValueError:
            raise InvalidInput(
                f"{field}: expected {self.shapes_text}; rows have unequal lengths"
            ) from None
        if array.shape not in self.shapes:
            raise InvalidInput(
                f"{field}: expected {self.shapes_text}, got shape {list(array.shape)}"
            )
        flat = array.reshape(self.width)
        _check_range(flat, field, self.minimum, self.maximum)
        return flat

    def run(self, items: list[Vector]) -> list[list[float]]:
        batch = self._to_device(torch.from_numpy(np.stack(items)))
        probabilities = torch.softmax(self.model(batch), dim=-1)
        rows: list[list[float]] = probabilities.cpu().tolist()
        return rows

    def warmup_item(self) -> Vector:
        return np.zeros(self.width, dtype=np.float32)


def _element_types(raw: list[Any]) -> set[type]:
    """The Python types of the leaves of a list or list of lists (set(map(type, ...)) runs in C)."""
    if type(raw[0]) is not list:
        return set(map(type, raw))
    types: set[type] = set()
    for row in raw:
        types |= set(map(type, row)) if type(row) is list else {type(row)}
    return types


def _check_range(flat: Vector, field: str, low: float | None, high: float | None) -> None:
    # The usual case in two reductions: NaN carries through min and max, an infinity is one of
    # them; the messages below cost more and only run when something is wrong.
    lo, hi = float(flat.min()), float(flat.max())
    if math.isfinite(lo) and math.isfinite(hi):
        if (low is None or lo >= low) and (high is None or hi <= high):
            return
    finite = np.isfinite(flat)
    if not finite.all():
        raise InvalidInput(f"{field}: element {int(np.argmin(finite))} is not a finite number")
    if low is None and high is None:
        return
    outside = (flat < (-np.inf if low is None else low)) | (
        flat > (np.inf if high is None else high)
    )
    if outside.any():
        index = int(np.argmax(outside))
        raise InvalidInput(
            f"{field}: element {index} is {flat[index]:g}, outside the range [{low}, {high}]"
        )


# Folding to ASCII removes combining marks, so a string may shrink: a name written with
# decomposed accents has up to this many characters per letter before it.
RAW_CHARACTERS_PER_LETTER = 4


class CharacterInput:
    """The string checks shared by the character models: normalization, length, alphabet."""

    def __init__(self, config: ModelConfig) -> None:
        assert isinstance(config.input, TextInput)
        self.alphabet = config.input.alphabet
        self.vocab = CharVocab(config.input.alphabet)
        self.max_length = config.input.max_length
        self.normalize_mode = config.input.normalize
        folds = self.normalize_mode != "none"
        self.max_raw_length = self.max_length * (RAW_CHARACTERS_PER_LETTER if folds else 1)

    def encode(self, raw: Any, field: str, allow_empty: bool = False) -> list[int]:
        if not isinstance(raw, str):
            raise InvalidInput(f"{field}: expected a string, got {_json_type(raw)}")
        # The cheap limit first: normalization costs time and memory in proportion to the
        # string (one character can decompose into 18), and runs on the event loop.
        if len(raw) > self.max_raw_length:
            raise InvalidInput(
                f"{field}: the string has {len(raw)} characters; the limit is {self.max_length}"
            )
        text = raw if raw.isascii() else normalize(raw, self.normalize_mode)
        if not text and not allow_empty:
            raise InvalidInput(f"{field}: the string is empty")
        if len(text) > self.max_length:
            raise InvalidInput(
                f"{field}: the string has {len(text)} characters; the limit is {self.max_length}"
            )
        unknown = self.vocab.unknown_chars(text)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise InvalidInput(f"{field}: characters outside the model's alphabet: {shown}")
        return self.vocab.encode(text)

    def warmup_characters(self) -> list[int]:
        return self.vocab.encode(self.alphabet[:4])


def _padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids as one zero-padded [B, T] tensor, and their lengths."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    padded = pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True)
    return padded, lengths


class TextClassifier(Classifier[list[int]]):
    """A classifier over strings (the surname RNN)."""

    def __init__(
        self, model: nn.Module, config: ModelConfig, device: torch.device, pin_memory: bool = True
    ) -> None:
        super().__init__(model, config, device, pin_memory)
        self.text = CharacterInput(config)
        # Commas and brackets inside a string count too (the pre-parse count cannot tell).
        self.max_item_values = 1 + self.text.max_raw_length

    def parse_item(self, raw: Any, field: str, numbers_checked: bool = False) -> list[int]:
        return self.text.encode(raw, field)

    def item_tokens(self, item: list[int]) -> int:
        return len(item)

    def run(self, items: list[list[int]]) -> list[list[float]]:
        chars, lengths = _padded(items)
        log_probs = self.model(self._to_device(chars), lengths)
        rows: list[list[float]] = log_probs.exp().cpu().tolist()
        return rows

    def warmup_item(self) -> list[int]:
        return self.text.warmup_characters()


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
    if isinstance(config.input, TextInput):
        return TextClassifier(model, config, device, pin_memory)
    return VectorClassifier(model, config, device, pin_memory)


_JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def json_type_name(kind: type) -> str:
    return _JSON_TYPES.get(kind, kind.__name__)


def _json_type(value: Any) -> str:
    return json_type_name(type(value))
