"""Turning strings into character indices, identically at training and serving time."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


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
            return "<s>"
        if index == self.eos:
            return "</s>"
        return self.alphabet[index]
