"""Subword tokens from a Hugging Face `tokenizers` file (`tokenizer.json`): BPE, WordPiece, Unigram
or WordLevel, with its normalizer, pre-tokenizer, post-processor and decoder, all run by the
`tokenizers` library (nothing here splits words by hand). The file is JSON: reading it runs no
code. It is untrusted input like the weights: bounded in size, parsed by the library, and refused
naming the reason when it is not a tokenizer, when its token ids are not exactly 0..V-1, or when
its vocabulary size, or its start and end tokens, disagree with config.json.

`tokenizers` is the optional extra `tokenizers`; it is imported only when a version reads
subwords."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXTRA = "pip install -c constraints.txt -e '.[tokenizers]' (in a checkout)"
MISSING = "this model reads subwords and needs the tokenizers library: " + EXTRA
# GPT-2's tokenizer.json is 1.4 MB, Llama 3's 9 MB; a file past this is refused before parsing.
MAX_TOKENIZER_BYTES = 64 << 20
WARMUP_TEXT = "Warm-up: the quick brown fox, 1234."


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot serve; the message says why (the loader names the file)."""


def require_library() -> Any:
    """The tokenizers module, or a one-line error naming the extra."""
    try:
        import tokenizers
    except ImportError:
        raise TokenizerFileError(MISSING) from None
    return tokenizers


def _library_call(what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """A call into the library; its failures (Rust errors are `Exception`, a Rust panic is a
    pyo3 `PanicException`, which derives from BaseException) become one ValueError line."""
    try:
        return call(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the library's panics are BaseExceptions
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{what}: {first}"[:300]) from None


class SubwordTokenizer:
    """A loaded `tokenizers.Tokenizer` with the ids of the language model's start and end
    tokens (tokens of the file itself: the model's vocabulary is the file's). It is the `Vocab`
    of `models.text` for the language models' scoring, generation and tokenizer endpoints."""

    def __init__(self, tokenizer: Any, bos: int | None, eos: int | None) -> None:
        self.tokenizer = tokenizer
        self.size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self._bos, self._eos = bos, eos
        vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=True)
        self.longest_token = max((len(token) for token in vocab), default=1)
        added = tokenizer.get_added_tokens_decoder()
        # Special tokens read as their own text ("<s>"); decoding would drop or merge them.
        self._special: dict[int, str] = {i: t.content for i, t in added.items() if t.special}
        self._texts: dict[int, str] = {}
        self._anchor = self._anchor_token(vocab)
        self._anchor_text = "" if self._anchor is None else self.decode([self._anchor])
        self.source: Path | None = None  # the file it was read from, and its sha256
        self.sha256: str | None = None

    @property
    def bos(self) -> int:
        if self._bos is None:
            raise ValueError("input.bos_token is not set: the model is not a language model")
        return self._bos

    @property
    def eos(self) -> int:
        if self._eos is None:
            raise ValueError("input.eos_token is not set: the model is not a language model")
        return self._eos

    @property
    def lm_vocab_size(self) -> int:
        return self.size

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """The library's encode: `add_special_tokens` runs the file's post-processor (a
        classifier's [CLS] ... [SEP], say). Added tokens written in the text (special ones
        included) are split out as themselves, as the library does. Raises ValueError."""
        encoding = _library_call(
            "the tokenizer failed",
            self.tokenizer.encode,
            text,
            add_special_tokens=add_special_tokens,
        )
        ids: list[int] = encoding.ids
        # A post-processor's template names its special tokens' ids itself, unchecked.
        if ids and not 0 <= min(ids) <= max(ids) < self.size:
            wrong = [i for i in ids if not 0 <= i < self.size][:5]
            raise ValueError(f"the tokenizer gave token ids {wrong} outside 0..{self.size - 1}")
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        text: str = _library_call(
            "the tokenizer failed",
            self.tokenizer.decode,
            list(ids),
            skip_special_tokens=skip_special,
        )
        return text

    # -- the Vocab protocol ------------------------------------------------------------------

    def token(self, index: int) -> str:
        """The text a token adds after other text (" film" for GPT-2's "Ġfilm", or for
        SentencePiece's "▁film"), so that a generated text is its tokens' concatenation; a
        special token is its own text. A token that holds part of a UTF-8 character reads as
        U+FFFD here (decoding the ids together, /detokenize gives the character)."""
        text = self._texts.get(index)
        if text is None:
            text = self._token_text(index)
            self._texts[index] = text  # deterministic: a race writes the same value
        return text

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt: the library's encode without the post-processor (the
        language model's start token is added by the caller where it is wanted)."""
        return self.encode(text, add_special_tokens=False)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """The library's decode; special tokens written as themselves unless `skip_special`.
        Raises ValueError naming ids out of range."""
        wrong = [i for i in ids if not 0 <= i < self.size]
        if wrong:
            raise ValueError(f"token ids outside 0..{self.size - 1}: {wrong[:10]}")
        return self.decode(ids, skip_special)

    def example(self, max_tokens: int) -> str:
        """A short text this tokenizer reads (the metadata's example item)."""
        ids = self.tokenize("hello world")[:max_tokens]
        if not ids and self._anchor is not None:
            ids = [self._anchor]
        return self.decode(ids, skip_special=True)

    # -- helpers -----------------------------------------------------------------------------

    def _anchor_token(self, vocab: dict[str, int]) -> int | None:
        """A plain token whose text is ASCII letters: decoding it before another token shows
        the space (or its absence) that the decoder puts between them."""
        for token, index in sorted(vocab.items(), key=lambda item: item[1]):
            if index in self._special:
                continue
            text = self.decode([index])
            if text.isascii() and text.isalpha() and token.isascii():
                return index
        return None

    def _token_text(self, index: int) -> str:
        if index in self._special:
            return self._special[index]
        if self._anchor is not None:
            both = self.decode([self._anchor, index])
            if both.startswith(self._anchor_text):
                return both[len(self._anchor_text) :]
        return self.decode([index])


def read_tokenizer(
    path: Path,
    vocab_size: int | None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    sha256: str | None = None,
) -> SubwordTokenizer:
    """Load and check a tokenizer file (against `vocab_size` unless None); raises
    TokenizerFileError naming the reason."""
    name = path.name
    if not path.is_file():
        raise TokenizerFileError(f"{name} is missing (input.tokenizer_file)")
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise TokenizerFileError(f"{name} has {size:,} bytes; the limit is {MAX_TOKENIZER_BYTES:,}")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKENIZER_BYTES + 1)
    except OSError as exc:
        raise TokenizerFileError(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKENIZER_BYTES:
        raise TokenizerFileError(f"{name} is over {MAX_TOKENIZER_BYTES:,} bytes")
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise TokenizerFileError(f"{name} does not match input.tokenizer_sha256")
    loaded = parse_tokenizer(data, name, vocab_size, bos_token, eos_token)
    loaded.source, loaded.sha256 = path, digest
    return loaded


def parse_tokenizer(
    data: bytes,
    name: str,
    vocab_size: int | None,
    bos_token: str | None = None,
    eos_token: str | None = None,
) -> SubwordTokenizer:
    """A tokenizer from the bytes of its file (the library's Tokenizer.from_str, the parser
    Tokenizer.from_file uses, here on bytes read once and bounded)."""
    library = require_library()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerFileError(f"{name} is not UTF-8 JSON: {exc}") from None
    try:
        tokenizer = _library_call(
            f"{name} is not a valid tokenizer file", library.Tokenizer.from_str, text
        )
    except ValueError as exc:
        raise TokenizerFileError(str(exc)) from None
    # batchserve pads with lengths and refuses items over input.max_length: a file's own
    # truncation would cut items silently and its padding would score pad tokens.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=True)
    found = tokenizer.get_vocab_size(with_added_tokens=True)
    ids = set(vocab.values())
    if len(vocab) != found or ids != set(range(found)):
        outside = sorted(i for i in ids if not 0 <= i < found)[:5]
        raise TokenizerFileError(
            f"{name}: its token ids are not 0..{found - 1}, each once ({len(vocab)} tokens, "
            f"{len(ids)} distinct ids" + (f", ids {outside} beyond them" if outside else "") + ")"
        )
    if vocab_size is not None and found != vocab_size:
        raise TokenizerFileError(
            f"input.vocab_size is {vocab_size} but {name} has {found} tokens (added tokens "
            "included); the model's embedding and output rows follow input.vocab_size"
        )
    specials = {}
    for field, token in (("bos_token", bos_token), ("eos_token", eos_token)):
        if token is not None:
            index = tokenizer.token_to_id(token)
            if index is None:
                raise TokenizerFileError(f"input.{field} {token!r} is not a token of {name}")
            specials[field] = int(index)
    loaded = SubwordTokenizer(tokenizer, specials.get("bos_token"), specials.get("eos_token"))
    try:  # a file whose pieces fail on ordinary text fails here, not on a request
        ids_seen = loaded.encode(WARMUP_TEXT, add_special_tokens=True)
        loaded.decode(ids_seen)
    except ValueError as exc:
        raise TokenizerFileError(f"{name}: {exc}") from None
    return loaded
