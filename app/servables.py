"""The small contract between the service and a loaded model: check one item, then for a batch
of checked items collate them, run one forward pass and split the result per item.

`parse_*` runs on the event loop and raises `InvalidInput` naming the field; `run` runs on the
device's inference thread under `torch.inference_mode()`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from app.errors import InvalidInput
from models.checkpoint import ModelConfig, TextInput, VectorInput
from models.text import CharVocab, normalize


@dataclass(frozen=True, slots=True)
class ScoreItem:
    """A token sequence to score: `tokens` are the targets (EOS included for whole strings);
    the log-probabilities from position `score_from` on are summed."""

    tokens: list[int]
    score_from: int


@dataclass(frozen=True, slots=True)
class TokenScores:
    log_probs: list[float]
    is_greedy: bool


class Servable:
    """Base: a model in eval() on its device plus its config."""

    task = "classify"

    def __init__(self, model: nn.Module, config: ModelConfig, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.device = device
        self._pin = device.type == "cuda"

    def item_tokens(self, item: Any) -> int:
        """The item's share of `max_batch_tokens`."""
        return 1

    def run(self, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def warmup_item(self) -> Any:
        raise NotImplementedError

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor


class VectorClassifier(Servable):
    """A classifier over fixed-size float vectors (the MNIST MLP); output: class probabilities."""

    def __init__(self, model: nn.Module, config: ModelConfig, device: torch.device) -> None:
        super().__init__(model, config, device)
        assert isinstance(config.input, VectorInput)
        self.width = math.prod(config.input.shape)
        layouts = [config.input.shape, *config.input.also_shapes]
        self.shapes = {(self.width,), *(tuple(shape) for shape in layouts)}
        self.minimum = config.input.minimum
        self.maximum = config.input.maximum
        nested = [" or a " + "x".join(map(str, s)) + " nested list" for s in layouts if len(s) > 1]
        self.shapes_text = f"{self.width} numbers" + "".join(nested)

    def parse_item(self, raw: Any, field: str) -> np.ndarray:
        if not isinstance(raw, list) or not raw:
            raise InvalidInput(f"{field}: expected {self.shapes_text}, got {_json_type(raw)}")
        wrong = _element_types(raw) - {float, int}
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

    def run(self, items: list[np.ndarray]) -> list[list[float]]:
        batch = self._to_device(torch.from_numpy(np.stack(items)))
        probabilities = torch.softmax(self.model(batch), dim=-1)
        return probabilities.cpu().tolist()

    def warmup_item(self) -> np.ndarray:
        return np.zeros(self.width, dtype=np.float32)


def _element_types(raw: list[Any]) -> set[type]:
    """The Python types of the leaves of a list or list of lists (set(map(type, ...)) runs in C)."""
    if type(raw[0]) is not list:
        return set(map(type, raw))
    types: set[type] = set()
    for row in raw:
        types |= set(map(type, row)) if type(row) is list else {type(row)}
    return types


def _check_range(flat: np.ndarray, field: str, low: float | None, high: float | None) -> None:
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


class TextModel(Servable):
    """Shared string checks for character models."""

    def __init__(self, model: nn.Module, config: ModelConfig, device: torch.device) -> None:
        super().__init__(model, config, device)
        assert isinstance(config.input, TextInput)
        self.vocab = CharVocab(config.input.alphabet)
        self.max_length = config.input.max_length
        self.normalize_mode = config.input.normalize

    def encode(self, raw: Any, field: str, allow_empty: bool = False) -> list[int]:
        if not isinstance(raw, str):
            raise InvalidInput(f"{field}: expected a string, got {_json_type(raw)}")
        text = normalize(raw, self.normalize_mode)
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

    def item_tokens(self, item: Any) -> int:
        return len(item.tokens) if isinstance(item, ScoreItem) else len(item)

    def _padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        padded = pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True)
        return self._to_device(padded), lengths


class TextClassifier(TextModel):
    """A classifier over strings (the surname RNN); output: class probabilities."""

    def parse_item(self, raw: Any, field: str) -> list[int]:
        return self.encode(raw, field)

    def run(self, items: list[list[int]]) -> list[list[float]]:
        chars, lengths = self._padded(items)
        return self.model(chars, lengths).exp().cpu().tolist()

    def warmup_item(self) -> list[int]:
        return self.vocab.encode(self.config.input.alphabet[:4])  # type: ignore[union-attr]


class SequenceScorer(TextModel):
    """A character language model: ln P of strings, or of a continuation given a context."""

    task = "score"

    def parse_item(self, raw: Any, field: str) -> ScoreItem:
        tokens = [*self.encode(raw, field), self.vocab.eos]
        return ScoreItem(tokens, 0)

    def parse_pair(self, context: Any, continuation: Any, field: str) -> ScoreItem:
        before = self.encode(context, f"{field}.context", allow_empty=True)
        after = self.encode(continuation, f"{field}.continuation")
        if len(before) + len(after) > self.max_length:
            raise InvalidInput(
                f"{field}: context and continuation have {len(before) + len(after)} characters "
                f"together; the limit is {self.max_length}"
            )
        return ScoreItem([*before, *after], len(before))

    def run(self, items: list[ScoreItem]) -> list[TokenScores]:
        # Input at step t is the token before target t: BOS, then the targets shifted right.
        inputs, lengths = self._padded([[self.vocab.bos, *it.tokens[:-1]] for it in items])
        targets, _ = self._padded([it.tokens for it in items])
        log_probs = self.model(inputs, lengths)
        picked = log_probs.gather(2, targets.unsqueeze(-1)).squeeze(-1)
        greedy = log_probs.argmax(dim=-1) == targets
        picked_rows, greedy_rows = picked.cpu().tolist(), greedy.cpu().tolist()
        return [
            TokenScores(p[it.score_from : len(it.tokens)], all(g[it.score_from : len(it.tokens)]))
            for it, p, g in zip(items, picked_rows, greedy_rows, strict=True)
        ]

    def token_names(self, item: ScoreItem) -> list[str]:
        return [self.vocab.token(t) for t in item.tokens[item.score_from :]]

    def warmup_item(self) -> ScoreItem:
        return ScoreItem([*self.vocab.encode(self.config.input.alphabet[:4]), self.vocab.eos], 0)  # type: ignore[union-attr]


def make_servable(model: nn.Module, config: ModelConfig, device: torch.device) -> Servable:
    if config.task == "score":
        return SequenceScorer(model, config, device)
    if isinstance(config.input, TextInput):
        return TextClassifier(model, config, device)
    return VectorClassifier(model, config, device)


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
