"""CharLM one step at a time: `prefill` and `step` give the log-probabilities of the full forward
pass, for a batch whose rows join and leave between steps.

Tolerance: float32 recurrences evaluated one step at a time round differently from the packed
full-sequence kernel; on the shipped 256-unit GRU the log-probabilities of all 57 tokens agree
within ~6e-6 absolute and ~1e-6 relative over 32 characters. `STEP_TOLERANCE` leaves room."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from models.architectures import CharLM
from models.checkpoint import load_checkpoint
from models.text import CharVocab

ALPHABET = "abcdefghij"
VOCAB = CharVocab(ALPHABET)
STEP_TOLERANCE: dict[str, Any] = {"atol": 1e-5, "rtol": 1e-5}
SHIPPED_LM = Path(__file__).resolve().parents[1] / "models" / "repository" / "names-lm" / "1"
STRINGS = ["abc", "j", "hgfedcbaij", "aaaaaaaaaaaaaaaaaaaa"]


def tiny_lm(cell: str, num_layers: int, seed: int = 0) -> CharLM:
    torch.manual_seed(seed)
    return CharLM(VOCAB.lm_vocab_size, 5, 7, num_layers=num_layers, cell=cell).eval()


def full_forward(model: CharLM, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] next-token log-probabilities of one sequence (BOS first) in one pass."""
    return model(torch.tensor([ids]), torch.tensor([len(ids)]))[0]


def with_bos(text: str, vocab: CharVocab = VOCAB) -> list[int]:
    return [vocab.bos, *vocab.encode(text)]


MODELS = [(cell, layers) for cell in ("gru", "lstm") for layers in (1, 2)]


@pytest.mark.parametrize(("cell", "num_layers"), MODELS)
def test_stepping_token_by_token_gives_the_full_forward_log_probs(
    cell: str, num_layers: int
) -> None:
    model = tiny_lm(cell, num_layers)
    with torch.inference_mode():
        for text in STRINGS:
            ids = with_bos(text)
            state = model.initial_state(1)
            steps = []
            for token in ids:
                log_probs, state = model.step(torch.tensor([token]), state)
                steps.append(log_probs[0])
            torch.testing.assert_close(
                torch.stack(steps), full_forward(model, ids), **STEP_TOLERANCE
            )


@pytest.mark.parametrize(("cell", "num_layers"), MODELS)
def test_prefill_then_step_continues_as_the_full_forward(cell: str, num_layers: int) -> None:
    model = tiny_lm(cell, num_layers)
    prompts, continuations = ["abc", "j", "hgfedc"], ["de", "jjjj", "b"]
    rows = [with_bos(p) for p in prompts]
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True)
    with torch.inference_mode():
        prompt_log_probs, state = model.prefill(padded, torch.tensor([len(r) for r in rows]))
        for row, (prompt, rest) in enumerate(zip(prompts, continuations, strict=True)):
            whole = full_forward(model, with_bos(prompt + rest))
            n = len(prompt) + 1
            torch.testing.assert_close(prompt_log_probs[row, :n], whole[:n], **STEP_TOLERANCE)
            own = state[row : row + 1]
            for offset, token in enumerate(VOCAB.encode(rest)):
                log_probs, own = model.step(torch.tensor([token]), own)
                torch.testing.assert_close(log_probs[0], whole[n + offset], **STEP_TOLERANCE)


@pytest.mark.parametrize(("cell", "num_layers"), MODELS)
def test_prefill_from_a_state_continues_the_sequence(cell: str, num_layers: int) -> None:
    model = tiny_lm(cell, num_layers)
    head, tail = with_bos("hgf"), VOCAB.encode("edcba")
    with torch.inference_mode():
        _, state = model.prefill(torch.tensor([head]), torch.tensor([len(head)]))
        log_probs, _ = model.prefill(torch.tensor([tail]), torch.tensor([len(tail)]), state)
        whole = full_forward(model, head + tail)
    torch.testing.assert_close(log_probs[0], whole[len(head) :], **STEP_TOLERANCE)


@pytest.mark.parametrize(("cell", "num_layers"), MODELS)
def test_rows_that_join_and_leave_the_batch_get_their_own_log_probs(
    cell: str, num_layers: int
) -> None:
    """A toy scheduler: sequence i joins at step joins[i] and leaves when its tokens run out;
    every step runs one batched `step` over whoever is in the batch, in arrival order."""
    model = tiny_lm(cell, num_layers)
    sequences = [with_bos(t) for t in ["abcdefgh", "jj", "hgfedcbaij", "c", "eeeeee"]]
    joins = [0, 0, 2, 3, 3]
    got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(sequences))}
    members: list[int] = []
    state = model.initial_state(0)
    with torch.inference_mode():
        for t in range(20):
            arriving = [i for i, j in enumerate(joins) if j == t]
            members += arriving
            state = torch.cat([state, model.initial_state(len(arriving))])
            if not members:
                continue
            positions = [len(got[i]) for i in members]
            tokens = torch.tensor(
                [sequences[i][p] for i, p in zip(members, positions, strict=True)]
            )
            log_probs, state = model.step(tokens, state)
            for row, i in enumerate(members):
                got[i].append(log_probs[row])
            staying = [row for row, i in enumerate(members) if len(got[i]) < len(sequences[i])]
            members = [members[row] for row in staying]
            state = state[staying]
        assert not members, "every sequence finished"
        for i, ids in enumerate(sequences):
            torch.testing.assert_close(
                torch.stack(got[i]), full_forward(model, ids), **STEP_TOLERANCE
            )


def test_initial_state_has_one_row_per_sequence_and_lstm_carries_cell_state() -> None:
    assert tiny_lm("gru", 2).initial_state(3).shape == (3, 2, 7)
    assert tiny_lm("lstm", 2).initial_state(3).shape == (3, 4, 7)


def test_shipped_names_lm_steps_like_its_full_forward() -> None:
    model, config = load_checkpoint(SHIPPED_LM)
    assert isinstance(model, CharLM)
    vocab = CharVocab(config.input.alphabet)  # type: ignore[union-attr]
    with torch.inference_mode():
        for name in [
            "Johnson",
            "Nakamura",
            "O'Brien",
            "Kowalski-Nowak",
            "Abcdefghijklmnopqrstuvwxyzabcdef",
        ]:
            ids = with_bos(name, vocab)
            state = model.initial_state(1)
            steps = []
            for token in ids:
                log_probs, state = model.step(torch.tensor([token]), state)
                steps.append(log_probs[0])
            torch.testing.assert_close(
                torch.stack(steps), full_forward(model, ids), **STEP_TOLERANCE
            )
