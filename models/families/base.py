"""What every model family shares: the strict config base, the input kinds a config can declare
(each with its item codec: parse one JSON item, collate a batch into tensors, count its tokens,
give warm-up items) and the `Family` contract that each family module fulfils.

A family is one module in this package: its architecture's part of `config.json` (a Pydantic model
whose `type` is the family's name), `check` for what the rest of the config must agree with,
`build` for the `nn.Module`, and which input kinds and tasks (heads) it takes. The module
registers itself in `models.families.FAMILIES`, from which `config.json`'s `architecture` union
is built. Item codecs raise `ItemError` naming the field; the server turns it into a 422."""

from __future__ import annotations

import builtins
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from models.subwords import SubwordTokenizer
from models.text import CharVocab, WordVocab, normalize

if TYPE_CHECKING:
    from models.checkpoint import ModelConfig

MAX_WIDTH = 65_536
# What the model's forward returns per item: logits, or log-probabilities (log_softmax applied).
Output = Literal["logits", "log_probs"]
Task = Literal["classify", "multilabel", "regress", "score"]


class ItemError(ValueError):
    """One item that does not fit the model's input; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Shape = list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]]


class VectorInput(_Strict):
    kind: Literal["vector"] = "vector"
    shape: Shape = Field(min_length=1, max_length=4)
    # Other row-major layouts of the same values that clients may send, e.g. [[28, 28]] for an
    # image the model reads as 784 floats.
    also_shapes: list[Shape] = Field(default_factory=list, max_length=8)
    minimum: float | None = None
    maximum: float | None = None

    @model_validator(mode="after")
    def _same_sizes(self) -> VectorInput:
        width = math.prod(self.shape)
        wrong = [s for s in self.also_shapes if math.prod(s) != width]
        if wrong:
            raise ValueError(f"also_shapes {wrong} do not hold {width} values like shape")
        return self


class TextInput(_Strict):
    """A string read character by character over `alphabet`."""

    kind: Literal["text"] = "text"
    alphabet: str = Field(min_length=1, max_length=4096)
    max_length: int = Field(ge=1, le=100_000)
    normalize: Literal["none", "ascii"] = "none"


class WordsInput(_Strict):
    """A string split into words over a vocabulary: token id i is `vocabulary[i]`; a word outside
    it is `unknown` (refused when `unknown` is None). `split` "whitespace" cuts at runs of white
    space; "words" takes runs of letters/digits/underscore and each other non-space character
    as its own token (`\\w+|[^\\w\\s]`)."""

    kind: Literal["words"] = "words"
    vocabulary: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=1_000_000
    )
    lowercase: bool = True
    split: Literal["whitespace", "words"] = "whitespace"
    unknown: str | None = "<unk>"
    max_length: int = Field(default=256, ge=1, le=100_000)  # in words

    @model_validator(mode="after")
    def _consistent(self) -> WordsInput:
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("input.vocabulary repeats a word")
        if self.unknown is not None and self.unknown not in self.vocabulary:
            raise ValueError(f"input.unknown {self.unknown!r} is not in input.vocabulary")
        return self


class SequenceInput(_Strict):
    """A sequence of numeric feature vectors, `[T, features]` with T from 1 to max_steps, T
    varying from item to item."""

    kind: Literal["sequence"] = "sequence"
    features: int = Field(ge=1, le=MAX_WIDTH)
    max_steps: int = Field(default=1024, ge=1, le=100_000)
    minimum: float | None = None
    maximum: float | None = None


# A file beside the weights in the version directory: a plain name, no separator, no "..".
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)


class SubwordsInput(_Strict):
    """A string as the subword tokens of a Hugging Face `tokenizers` file in the version
    directory (`tokenizer_file`, encoded and decoded by the library). Token id i is the file's
    id i: `vocab_size` must be the file's size (added tokens included), and is the size of the
    model's embedding (and of a language model's output). A language model's start and end
    tokens are tokens of the file, named by `bos_token` and `eos_token`; a classifier encodes
    with the file's post-processor (its [CLS]/[SEP], if it has one), as `Tokenizer.encode` does
    by default. `max_length` counts tokens."""

    kind: Literal["subwords"] = "subwords"
    tokenizer_file: str = "tokenizer.json"
    tokenizer_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    vocab_size: int = Field(ge=2, le=1 << 22)
    max_length: int = Field(default=256, ge=1, le=100_000)  # in tokens
    bos_token: str | None = Field(default=None, min_length=1, max_length=256)
    eos_token: str | None = Field(default=None, min_length=1, max_length=256)
    # The file, once read beside the config (`models.checkpoint.read_config`).
    _tokenizer: SubwordTokenizer | None = PrivateAttr(default=None)

    @field_validator("tokenizer_file")
    @classmethod
    def _in_the_version_directory(cls, name: str) -> str:
        if not FILE_NAME.fullmatch(name) or ".." in name:
            raise ValueError(
                f"{name!r} is not a file name inside the version directory (letters, digits, "
                "'_', '.', '-'; no path)"
            )
        return name

    @model_validator(mode="after")
    def _distinct_ends(self) -> SubwordsInput:
        if self.bos_token is not None and self.bos_token == self.eos_token:
            raise ValueError(
                "input.bos_token and input.eos_token are one token; a language model needs two "
                "(the start token is never generated, the end token ends generation)"
            )
        return self

    def attach(self, tokenizer: SubwordTokenizer) -> None:
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> SubwordTokenizer:
        if self._tokenizer is None:
            raise ValueError(
                f"input.tokenizer_file: {self.tokenizer_file} is not loaded (a config read with "
                "models.checkpoint.read_config loads it from the version directory)"
            )
        return self._tokenizer


InputSpec = VectorInput | TextInput | WordsInput | SubwordsInput | SequenceInput


# --------------------------------------------------------------------------- item codecs

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


def json_type(value: Any) -> str:
    return json_type_name(type(value))


ItemT = TypeVar("ItemT")
Vector = np.ndarray[Any, np.dtype[np.float32]]


class Codec(ABC, Generic[ItemT]):
    """How one input kind's items are checked and batched."""

    # The most JSON values (numbers, strings, arrays, objects) one valid item can be written
    # with: a transport can refuse a body that holds more before it parses it.
    max_item_values: int = 1

    @abstractmethod
    def parse(self, raw: Any, field: str, numbers_checked: bool = False) -> ItemT:
        """A checked item from its JSON form; raises ItemError naming `field`."""

    @abstractmethod
    def collate(self, items: Sequence[ItemT]) -> tuple[torch.Tensor, ...]:
        """The forward call's arguments for a batch (CPU tensors; lengths stay on the CPU)."""

    @abstractmethod
    def warmup_items(self) -> list[ItemT]:
        """Valid items for warm-up passes and the load-time probe: the smallest and the
        largest the config allows, and its range's ends."""

    def tokens(self, item: ItemT) -> int:
        """The item's share of `max_batch_tokens` (steps for sequences)."""
        return 1


def element_types(raw: list[Any]) -> set[type]:
    """The Python types of the leaves of a list or list of lists (set(map(type, ...)) runs in C)."""
    if type(raw[0]) is not list:
        return set(map(type, raw))
    types: set[type] = set()
    for row in raw:
        types |= set(map(type, row)) if type(row) is list else {type(row)}
    return types


def check_range(flat: Vector, field: str, low: float | None, high: float | None) -> None:
    # The usual case in two reductions: NaN carries through min and max, an infinity is one of
    # them; the messages below cost more and only run when something is wrong.
    lo, hi = float(flat.min()), float(flat.max())
    if math.isfinite(lo) and math.isfinite(hi):
        if (low is None or lo >= low) and (high is None or hi <= high):
            return
    finite = np.isfinite(flat)
    if not finite.all():
        raise ItemError(f"{field}: element {int(np.argmin(finite))} is not a finite number")
    if low is None and high is None:
        return
    outside = (flat < (-np.inf if low is None else low)) | (
        flat > (np.inf if high is None else high)
    )
    if outside.any():
        index = int(np.argmax(outside))
        raise ItemError(
            f"{field}: element {index} is {flat[index]:g}, outside the range [{low}, {high}]"
        )


class VectorCodec(Codec[Vector]):
    """Fixed-size float vectors, flat or in one of the config's nested layouts."""

    def __init__(self, spec: VectorInput) -> None:
        self.width = math.prod(spec.shape)
        layouts = [spec.shape, *spec.also_shapes]
        self.shapes = {(self.width,), *(tuple(shape) for shape in layouts)}
        self.minimum = spec.minimum
        self.maximum = spec.maximum
        nested = [" or a " + "x".join(map(str, s)) + " nested list" for s in layouts if len(s) > 1]
        self.shapes_text = f"{self.width} numbers" + "".join(nested)
        self.lengths = {shape[0] for shape in self.shapes}
        # The numbers, plus every array that holds them: 1 + a + a*b for an a x b x c layout.
        self.max_item_values = self.width + max(
            sum(math.prod(shape[:depth]) for depth in range(len(shape))) for shape in self.shapes
        )

    def parse(self, raw: Any, field: str, numbers_checked: bool = False) -> Vector:
        if not isinstance(raw, list) or not raw:
            raise ItemError(f"{field}: expected {self.shapes_text}, got {json_type(raw)}")
        if len(raw) not in self.lengths:  # before looking at each element
            shape = [len(raw), *([len(raw[0])] if type(raw[0]) is list else [])]
            raise ItemError(f"{field}: expected {self.shapes_text}, got shape {shape}")
        wrong = set() if numbers_checked else element_types(raw) - {float, int}
        if wrong:
            found = ", ".join(sorted(json_type_name(t) for t in wrong))
            raise ItemError(f"{field}: expected {self.shapes_text}; found {found}")
        try:
            with np.errstate(over="ignore"):  # overflow to inf is reported as "not finite"
                array = np.array(raw, dtype=np.float32)
        except ValueError:
            raise ItemError(
                f"{field}: expected {self.shapes_text}; rows have unequal lengths"
            ) from None
        if array.shape not in self.shapes:
            raise ItemError(f"{field}: expected {self.shapes_text}, got shape {list(array.shape)}")
        flat = array.reshape(self.width)
        check_range(flat, field, self.minimum, self.maximum)
        return flat

    def collate(self, items: Sequence[Vector]) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(np.stack(items)),)

    def warmup_items(self) -> list[Vector]:
        values = [0.0] + [v for v in (self.minimum, self.maximum) if v is not None]
        return [np.full(self.width, v, dtype=np.float32) for v in values]


def padded(rows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids as one zero-padded [B, T] tensor, and their lengths."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    batch = pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True)
    return batch, lengths


class TokenCodec(Codec[list[int]]):
    """Strings as token ids, batched zero-padded with their lengths. A subclass's `encode`
    checks and tokenizes one string; `parse` is `encode` of a request item."""

    def parse(self, raw: Any, field: str, numbers_checked: bool = False) -> list[int]:
        return self.encode(raw, field)

    @abstractmethod
    def encode(self, raw: Any, field: str, allow_empty: bool = False) -> list[int]:
        """The token ids of `raw`, or ItemError naming `field`."""

    def collate(self, items: Sequence[list[int]]) -> tuple[torch.Tensor, ...]:
        return padded(items)

    def tokens(self, item: list[int]) -> int:
        return len(item)


# Folding to ASCII removes combining marks, so a string may shrink: a name written with
# decomposed accents has up to this many characters per letter before it.
RAW_CHARACTERS_PER_LETTER = 4


class CharCodec(TokenCodec):
    """The string checks shared by the character models: normalization, length, alphabet."""

    def __init__(self, spec: TextInput) -> None:
        self.alphabet = spec.alphabet
        self.vocab = CharVocab(spec.alphabet)
        self.max_length = spec.max_length
        self.normalize_mode = spec.normalize
        folds = self.normalize_mode != "none"
        self.max_raw_length = self.max_length * (RAW_CHARACTERS_PER_LETTER if folds else 1)
        # Commas and brackets inside a string count too (the pre-parse count cannot tell).
        self.max_item_values = 1 + self.max_raw_length

    def encode(self, raw: Any, field: str, allow_empty: bool = False) -> list[int]:
        if not isinstance(raw, str):
            raise ItemError(f"{field}: expected a string, got {json_type(raw)}")
        # The cheap limit first: normalization costs time and memory in proportion to the
        # string (one character can decompose into 18), and runs on the event loop.
        if len(raw) > self.max_raw_length:
            raise ItemError(
                f"{field}: the string has {len(raw)} characters; the limit is {self.max_length}"
            )
        text = raw if raw.isascii() else normalize(raw, self.normalize_mode)
        if not text and not allow_empty:
            raise ItemError(f"{field}: the string is empty")
        if len(text) > self.max_length:
            raise ItemError(
                f"{field}: the string has {len(text)} characters; the limit is {self.max_length}"
            )
        unknown = self.vocab.unknown_chars(text)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise ItemError(f"{field}: characters outside the model's alphabet: {shown}")
        return self.vocab.encode(text)

    def warmup_characters(self) -> list[int]:
        return self.vocab.encode(self.alphabet[:4])

    def warmup_items(self) -> list[list[int]]:
        longest = (self.alphabet * self.max_length)[: self.max_length]
        return [self.warmup_characters(), self.vocab.encode(longest)]


class WordCodec(TokenCodec):
    """Strings split into words (see WordsInput), as vocabulary indices."""

    normalize_mode = "none"  # lowercasing is the vocabulary's own rule

    def __init__(self, spec: WordsInput) -> None:
        self.vocab = WordVocab(tuple(spec.vocabulary), spec.lowercase, spec.split, spec.unknown)
        self.vocabulary = spec.vocabulary
        self.max_length = spec.max_length
        # Characters: a word of the vocabulary is at most 256 of them, with a space after it.
        self.max_raw_length = spec.max_length * 257
        self.max_item_values = 1 + self.max_raw_length

    def encode(self, raw: Any, field: str, allow_empty: bool = False) -> list[int]:
        if not isinstance(raw, str):
            raise ItemError(f"{field}: expected a string, got {json_type(raw)}")
        if len(raw) > self.max_raw_length:
            raise ItemError(f"{field}: the string has {len(raw)} characters; too long")
        words = self.vocab.split(raw)
        if not words and not allow_empty:
            raise ItemError(f"{field}: the string has no words")
        if len(words) > self.max_length:
            raise ItemError(
                f"{field}: the string has {len(words)} words; the limit is {self.max_length}"
            )
        unknown = self.vocab.unknown_words(words)
        if unknown:
            shown = ", ".join(repr(w) for w in unknown[:10])
            raise ItemError(f"{field}: words outside the model's vocabulary: {shown}")
        return self.vocab.encode_words(words)

    def warmup_characters(self) -> list[int]:
        return [0]

    def warmup_items(self) -> list[list[int]]:
        size = len(self.vocabulary)
        return [[0], [i % size for i in range(self.max_length)]]


class SubwordCodec(TokenCodec):
    """Strings as the token ids of a `tokenizers` file (see SubwordsInput). `post_process`:
    whether the file's post-processor adds its special tokens (classifiers; a language model
    adds its own start and end tokens)."""

    normalize_mode = "none"  # normalization is the tokenizer file's own

    def __init__(self, spec: SubwordsInput, post_process: bool = True) -> None:
        self.vocab = spec.tokenizer
        self.post_process = post_process
        self.vocab_size = spec.vocab_size
        self.max_length = spec.max_length
        # The cheap bound before encoding: characters of max_length of the longest tokens.
        per_token = max(self.vocab.longest_token, 1) * RAW_CHARACTERS_PER_LETTER
        self.max_raw_length = spec.max_length * per_token
        self.max_item_values = 1 + self.max_raw_length

    def encode(self, raw: Any, field: str, allow_empty: bool = False) -> list[int]:
        if not isinstance(raw, str):
            raise ItemError(f"{field}: expected a string, got {json_type(raw)}")
        if len(raw) > self.max_raw_length:
            raise ItemError(
                f"{field}: the string has {len(raw)} characters; too long for "
                f"{self.max_length} tokens"
            )
        try:
            ids = self.vocab.encode(raw, self.post_process)
        except ValueError as exc:
            raise ItemError(f"{field}: {exc}") from None
        if not ids and not allow_empty:
            raise ItemError(f"{field}: the string has no tokens")
        if len(ids) > self.max_length:
            raise ItemError(
                f"{field}: the string has {len(ids)} tokens; the limit is {self.max_length}"
            )
        return ids

    def warmup_characters(self) -> list[int]:
        return [0]

    def warmup_items(self) -> list[list[int]]:
        return [[0], [i % self.vocab_size for i in range(self.max_length)]]


class SequenceCodec(Codec[Vector]):
    """`[T, F]` float sequences; batched zero-padded `[B, T_max, F]` with their lengths."""

    def __init__(self, spec: SequenceInput) -> None:
        self.features = spec.features
        self.max_steps = spec.max_steps
        self.minimum, self.maximum = spec.minimum, spec.maximum
        self.max_item_values = 1 + spec.max_steps * (1 + spec.features)

    def parse(self, raw: Any, field: str, numbers_checked: bool = False) -> Vector:
        want = f"an array of 1 to {self.max_steps} steps of {self.features} numbers each"
        if not isinstance(raw, list) or not raw:
            raise ItemError(f"{field}: expected {want}, got {json_type(raw)}")
        if len(raw) > self.max_steps:
            raise ItemError(f"{field}: {len(raw)} steps; the limit is {self.max_steps}")
        if not numbers_checked:
            if any(type(step) is not list for step in raw):
                raise ItemError(f"{field}: expected {want}; a step is not an array")
            wrong = element_types(raw) - {float, int}
            if wrong:
                found = ", ".join(sorted(json_type_name(t) for t in wrong))
                raise ItemError(f"{field}: expected {want}; found {found}")
        try:
            with np.errstate(over="ignore"):
                array = np.array(raw, dtype=np.float32)
        except ValueError:
            raise ItemError(f"{field}: expected {want}; steps have unequal lengths") from None
        if array.ndim != 2 or array.shape[1] != self.features:
            raise ItemError(f"{field}: expected {want}, got shape {list(array.shape)}")
        check_range(array.reshape(-1), field, self.minimum, self.maximum)
        return array

    def collate(self, items: Sequence[Vector]) -> tuple[torch.Tensor, ...]:
        lengths = torch.tensor([len(item) for item in items], dtype=torch.long)
        batch = pad_sequence([torch.from_numpy(item) for item in items], batch_first=True)
        return batch, lengths

    def tokens(self, item: Vector) -> int:
        return len(item)

    def warmup_items(self) -> list[Vector]:
        values = [0.0] + [v for v in (self.minimum, self.maximum) if v is not None]
        short = [np.full((1, self.features), v, dtype=np.float32) for v in values]
        return [*short, np.zeros((self.max_steps, self.features), dtype=np.float32)]


def make_codec(spec: InputSpec) -> Codec[Any]:
    if isinstance(spec, VectorInput):
        return VectorCodec(spec)
    if isinstance(spec, TextInput):
        return CharCodec(spec)
    if isinstance(spec, WordsInput):
        return WordCodec(spec)
    if isinstance(spec, SubwordsInput):
        return SubwordCodec(spec)
    return SequenceCodec(spec)


# --------------------------------------------------------------------------- the contract

ArchT = TypeVar("ArchT", bound=_Strict)


class Family(ABC, Generic[ArchT]):
    """One model family. Subclasses set the class attributes and implement `check`, `build` and
    `num_outputs`; `codec` and `warmup_args` have defaults that fit most."""

    type: ClassVar[str]  # the architecture's `type` in config.json
    architecture: ClassVar[builtins.type[_Strict]]  # its Pydantic model
    inputs: ClassVar[tuple[str, ...]]  # the input kinds it reads
    tasks: ClassVar[tuple[Task, ...]]  # the heads it can serve

    def output(self, arch: ArchT) -> Output:
        """What forward returns: logits (the head applies softmax, sigmoid or the target
        scaling) or log-probabilities (classify: the head takes their exp)."""
        return "logits"

    @abstractmethod
    def build(self, arch: ArchT, config: ModelConfig) -> nn.Module:
        """An untrained module: forward(*codec.collate(items)) -> [B, outputs]."""

    @abstractmethod
    def num_outputs(self, arch: ArchT, config: ModelConfig) -> int | None:
        """How many values per item the module returns (None: not a fixed-size head)."""

    def check(self, arch: ArchT, config: ModelConfig) -> None:
        """Raise ValueError naming the field when the rest of the config disagrees."""
        if config.input.kind not in self.inputs:
            raise ValueError(
                f"input.kind: a {self.type} reads {' or '.join(self.inputs)} input, "
                f"not {config.input.kind}"
            )
        if config.task not in self.tasks:
            raise ValueError(
                f"task: a {self.type} serves {' or '.join(self.tasks)}, not {config.task}"
            )

    def codec(self, config: ModelConfig) -> Codec[Any]:
        return make_codec(config.input)

    def warmup_args(self, config: ModelConfig) -> tuple[torch.Tensor, ...]:
        """The arguments of one forward call on the warm-up items (CPU tensors)."""
        codec = self.codec(config)
        return codec.collate(codec.warmup_items())
