"""The character vocabulary as a tokenizer for the completions API: alphabet characters are one
token each, and the literal strings "<s>" and "</s>" are BOS and EOS (lm-eval needs the EOS
string to encode to exactly one token)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from models.text import BOS_TOKEN, EOS_TOKEN, CharVocab

VOCAB = CharVocab("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ '-")
SHIPPED_LM_CONFIG = Path(__file__).resolve().parents[1] / "models/repository/names-lm/1/config.json"


def test_bos_and_eos_follow_the_alphabet() -> None:
    assert (VOCAB.bos, VOCAB.eos, VOCAB.lm_vocab_size) == (55, 56, 57)
    assert (VOCAB.token(55), VOCAB.token(56)) == (BOS_TOKEN, EOS_TOKEN) == ("<s>", "</s>")


def test_each_alphabet_character_is_one_token() -> None:
    assert VOCAB.tokenize("Smith") == VOCAB.encode("Smith") == [44, 12, 8, 19, 7]
    assert VOCAB.tokenize("O'Brien-Le Roy") == [VOCAB.alphabet.index(c) for c in "O'Brien-Le Roy"]
    assert VOCAB.tokenize("") == []


def test_the_special_strings_are_one_token_each_wherever_they_stand() -> None:
    assert VOCAB.tokenize(EOS_TOKEN) == [VOCAB.eos]
    assert VOCAB.tokenize(BOS_TOKEN) == [VOCAB.bos]
    assert VOCAB.tokenize("<s>Smi</s>th<s>") == [55, 44, 12, 8, 56, 19, 7, 55]


@pytest.mark.parametrize("text", ["Smith", "<s>Smith</s>", "</s></s>a", "", "<s>"])
def test_detokenize_inverts_tokenize(text: str) -> None:
    assert VOCAB.detokenize(VOCAB.tokenize(text)) == text


def test_detokenize_can_leave_out_bos_and_eos() -> None:
    assert VOCAB.detokenize([55, 44, 12, 8, 56], skip_special=True) == "Smi"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Sm!th", "'!'"),
        ("<x>", "'<', '>'"),
        ("</s", "'<', '/'"),
        ("Ré", "'é'"),
        ("a<s >", "'<', '>'"),
    ],
)
def test_characters_outside_the_alphabet_are_refused_by_name(text: str, shown: str) -> None:
    with pytest.raises(ValueError, match=f"^characters outside the alphabet: {re.escape(shown)}$"):
        VOCAB.tokenize(text)


@pytest.mark.parametrize("ids", [[57], [-1], [0, 99, 3]])
def test_token_ids_outside_the_vocabulary_are_refused(ids: list[int]) -> None:
    with pytest.raises(ValueError, match=r"^token ids outside 0\.\.56: "):
        VOCAB.detokenize(ids)


def test_the_shipped_alphabet_cannot_spell_the_special_strings() -> None:
    """So "<s>" and "</s>" in a prompt can only mean BOS and EOS for names-lm."""
    alphabet = json.loads(SHIPPED_LM_CONFIG.read_text())["input"]["alphabet"]
    assert not set("<>/") & set(alphabet)
