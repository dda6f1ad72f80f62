"""Turning strings into character indices, identically at training and serving time."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
_SPECIAL = re.compile(f"({re.escape(BOS_TOKEN)}|{re.escape(EOS_TOKEN)})")


def normalize(text: str, mode: str) -> str:
    """'ascii' folds accents away ("Müller" -> "Muller") so that users need not type them;
    'none' leaves the string as it is."""
    if mode == "ascii":
        decomposed = unicodedata.normalize("NFKD", text)
        return "".join(c for c in decomposed if not unicodedata.combining(c))
    return text


@dataclass(frozen=True)
class CharVocab:
    """Alphabet indices 0..A-1; the language model adds BOS = A and EOS = A + 1."""

    alphabet: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.alphabet)})

    @property
    def bos(self) -> int:
        return len(self.alphabet)

    @property
    def eos(self) -> int:
        return len(self.alphabet) + 1

    @property
    def lm_vocab_size(self) -> int:
        return len(self.alphabet) + 2

    def unknown_chars(self, text: str) -> list[str]:
        """The distinct characters of `text` outside the alphabet, in order of appearance."""
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        return list(dict.fromkeys(c for c in text if c not in index))

    def encode(self, text: str) -> list[int]:
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        return [index[c] for c in text]

    def token(self, index: int) -> str:
        if index == self.bos:
            return BOS_TOKEN
        if index == self.eos:
            return EOS_TOKEN
        return self.alphabet[index]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` for the language model: the literal strings "<s>" and "</s>" are
        BOS and EOS (as a Hugging Face tokenizer reads its special tokens, so that an EOS string
        is one token), every other character is its alphabet index. Raises ValueError naming the
        characters outside the alphabet."""
        parts = _SPECIAL.split(text)  # odd positions are the special tokens themselves
        unknown = self.unknown_chars("".join(parts[0::2]))
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise ValueError(f"characters outside the alphabet: {shown}")
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.bos if part == BOS_TOKEN else self.eos)
            else:
                ids.extend(self.encode(part))
        return ids

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """The text of token ids, BOS and EOS written "<s>" and "</s>" (or left out with
        `skip_special`); the inverse of `tokenize`. Raises ValueError naming ids out of range."""
        wrong = [i for i in ids if not 0 <= i < self.lm_vocab_size]
        if wrong:
            raise ValueError(f"token ids outside 0..{self.lm_vocab_size - 1}: {wrong[:10]}")
        if skip_special:
            ids = [i for i in ids if i < self.bos]
        return "".join(self.token(i) for i in ids)


_WORD_SPLIT = re.compile(r"\w+|[^\w\s]")


class Vocab(Protocol):
    """What the language models' scoring and generation read of a tokenizer."""

    @property
    def bos(self) -> int: ...

    @property
    def eos(self) -> int: ...

    @property
    def lm_vocab_size(self) -> int: ...

    def token(self, index: int) -> str: ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str: ...


@dataclass(frozen=True)
class WordVocab:
    """Word ids 0..V-1 (`words`); a language model adds BOS = V and EOS = V + 1. A string is
    lowercased (when `lowercase`) and split at white space ("whitespace") or into runs of word
    characters and single other characters ("words"); a word outside the vocabulary is
    `unknown` (None: refused). A word's token text has a space first (" film", as GPT-2's tokens
    carry theirs), so that generated text is the concatenation of its tokens."""

    words: tuple[str, ...]
    lowercase: bool = True
    split_rule: str = "whitespace"
    unknown: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    @property
    def bos(self) -> int:
        return len(self.words)

    @property
    def eos(self) -> int:
        return len(self.words) + 1

    @property
    def lm_vocab_size(self) -> int:
        return len(self.words) + 2

    def split(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        return text.split() if self.split_rule == "whitespace" else _WORD_SPLIT.findall(text)

    def unknown_words(self, words: Sequence[str]) -> list[str]:
        if self.unknown is not None:
            return []
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        return list(dict.fromkeys(w for w in words if w not in index))

    def encode_words(self, words: Sequence[str]) -> list[int]:
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        fallback = None if self.unknown is None else index[self.unknown]
        return [index[w] if fallback is None else index.get(w, fallback) for w in words]

    def token(self, index: int) -> str:
        if index == self.bos:
            return BOS_TOKEN
        if index == self.eos:
            return EOS_TOKEN
        return " " + self.words[index]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`; "<s>" and "</s>" are BOS and EOS. Raises ValueError naming the
        words outside the vocabulary (when there is no unknown token)."""
        parts = _SPECIAL.split(text)
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.bos if part == BOS_TOKEN else self.eos)
                continue
            words = self.split(part)
            unknown = self.unknown_words(words)
            if unknown:
                shown = ", ".join(repr(w) for w in unknown[:10])
                raise ValueError(f"words outside the vocabulary: {shown}")
            ids.extend(self.encode_words(words))
        return ids

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        wrong = [i for i in ids if not 0 <= i < self.lm_vocab_size]
        if wrong:
            raise ValueError(f"token ids outside 0..{self.lm_vocab_size - 1}: {wrong[:10]}")
        if skip_special:
            ids = [i for i in ids if i < self.bos]
        return "".join(self.token(i) for i in ids).removeprefix(" ")
