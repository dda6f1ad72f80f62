"""One sequence never fails another in the step scheduler: a sequence whose prefill, sampling or
step raises ends alone, with its own error, and its neighbours (running or joining with it)
finish with the text they get alone; stopping the scheduler answers every sequence, those in
their first step included. The shipped names-lm on a real inference thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from app.errors import ModelNotReady
from app.serving.generation import GeneratingSequence, SequenceRequest, StepOutput, StepScheduler
from models.architectures import CharLM
from models.checkpoint import load_checkpoint
from models.sampling import SamplingParams, make_generator
from models.text import CharVocab

SHIPPED_LM = Path(__file__).resolve().parents[1] / "models" / "repository" / "names-lm" / "1"
_LOADED, CONFIG = load_checkpoint(SHIPPED_LM)
assert isinstance(_LOADED, CharLM)
MODEL: CharLM = _LOADED
VOCAB = CharVocab(CONFIG.input.alphabet)  # type: ignore[union-attr]
SAMPLED = SamplingParams(temperature=2.0, top_k=57)


@pytest.fixture
async def scheduler() -> AsyncIterator[StepScheduler]:
    with ThreadPoolExecutor(1) as executor:
        steps = StepScheduler(MODEL, torch.device("cpu"), executor, VOCAB.bos, VOCAB.eos, 64, 256)
        steps.start()
        yield steps
        await steps.stop()


def request(
    prompt: str = "Ko",
    seed: int = 1,
    stream: int = 0,
    max_new_tokens: int = 30,
    params: SamplingParams = SAMPLED,
    ids: Sequence[int] | None = None,
    generator: torch.Generator | str | None = "seeded",
) -> SequenceRequest:
    tokens = (VOCAB.bos, *(VOCAB.encode(prompt) if ids is None else ids))
    chosen = make_generator(seed, stream) if generator == "seeded" else generator
    assert not isinstance(chosen, str)
    return SequenceRequest(tokens, max_new_tokens, params, chosen)


async def outcome(sequence: GeneratingSequence) -> list[int] | BaseException:
    """The sequence's generated token ids, or the error that ended it."""
    tokens = []
    while True:
        output = await sequence.outputs.get()
        if isinstance(output, BaseException):
            return output
        assert isinstance(output, StepOutput)
        if output.token is not None:
            tokens.append(output.token.token_id)
        if output.finish_reason is not None:
            return tokens


async def alone(scheduler: StepScheduler, made: SequenceRequest) -> list[int] | BaseException:
    (sequence,) = scheduler.submit([made], None)
    return await outcome(sequence)


async def test_a_sequence_whose_sampling_raises_ends_alone_and_the_others_finish_as_alone(
    scheduler: StepScheduler,
) -> None:
    expected = [await alone(scheduler, request(stream=j)) for j in range(6)]
    assert all(isinstance(e, list) and e for e in expected)
    # No generator for a sampled sequence: its draw raises, in the same first step as the six.
    hostile = request(generator=None)
    sequences = scheduler.submit([*(request(stream=j) for j in range(6)), hostile], None)
    results = await asyncio.gather(*(outcome(s) for s in sequences))
    assert results[:6] == expected
    assert isinstance(results[6], ValueError) and "generator" in str(results[6])


async def test_a_sequence_whose_prefill_raises_ends_alone_and_the_others_finish_as_alone(
    scheduler: StepScheduler,
) -> None:
    expected = [await alone(scheduler, request(prompt=p, stream=3)) for p in ("Ko", "Smi", "N")]
    hostile = request(ids=[VOCAB.lm_vocab_size + 5])  # no such embedding row
    sequences = scheduler.submit(
        [request(prompt="Ko", stream=3), hostile, request(prompt="Smi", stream=3)], None
    )
    (late,) = scheduler.submit([request(prompt="N", stream=3)], None)
    results = await asyncio.gather(*(outcome(s) for s in [*sequences, late]))
    assert [results[0], results[2], results[3]] == expected
    assert isinstance(results[1], IndexError)


async def test_running_sequences_go_on_as_alone_when_a_joining_one_fails_mid_generation(
    scheduler: StepScheduler,
) -> None:
    """The neighbours are a few steps in (rows of the running batch) when the bad one joins."""
    expected = [await alone(scheduler, request(stream=j, max_new_tokens=30)) for j in range(4)]
    running = scheduler.submit([request(stream=j, max_new_tokens=30) for j in range(4)], None)
    first = [await s.outputs.get() for s in running]  # one step taken, more under way
    assert all(isinstance(o, StepOutput) for o in first)
    hostile = scheduler.submit([request(ids=[10**6]), request(generator=None)], None)
    rest = await asyncio.gather(*(outcome(s) for s in [*running, *hostile]))
    tokens = [
        [o.token.token_id, *r]
        if isinstance(o, StepOutput) and o.token and isinstance(r, list)
        else r
        for o, r in zip(first, rest[:4], strict=True)
    ]
    assert tokens == expected
    assert isinstance(rest[4], IndexError) and isinstance(rest[5], ValueError)
    assert scheduler.busy == 0


async def test_greedy_and_sampled_neighbours_of_a_failure_keep_their_text(
    scheduler: StepScheduler,
) -> None:
    greedy = SamplingParams(temperature=0.0)

    def made() -> list[SequenceRequest]:  # fresh generators each time
        return [request("Mac", params=greedy, generator=None), request("O'", seed=9)]

    expected = [await alone(scheduler, m) for m in made()]
    first, second = made()
    sequences = scheduler.submit([first, request(ids=[-1]), second], None)
    results = await asyncio.gather(*(outcome(s) for s in sequences))
    assert [results[0], results[2]] == expected
    assert isinstance(results[1], BaseException)


async def test_stop_answers_sequences_in_their_first_step() -> None:
    """Unload (or shutdown) while sequences are in their first step on the inference thread:
    each still gets its whole answer, and a sequence submitted after stop began is refused."""
    with ThreadPoolExecutor(1) as executor:
        steps = StepScheduler(MODEL, torch.device("cpu"), executor, VOCAB.bos, VOCAB.eos, 64, 256)
        steps.start()
        hold = asyncio.get_running_loop().run_in_executor(executor, lambda: torch.randn(1))
        # The thread is held by a slow job, so the first step is queued behind it.
        slow = asyncio.get_running_loop().run_in_executor(
            executor, lambda: [torch.randn(300, 300) @ torch.randn(300, 300) for _ in range(200)]
        )
        sequences = steps.submit([request(stream=j, max_new_tokens=5) for j in range(10)], None)
        await asyncio.sleep(0.01)  # the scheduler took them: their first step is on the thread
        assert not steps._waiting and steps.busy == 10
        stopping = asyncio.ensure_future(steps.stop())
        await asyncio.sleep(0)
        with pytest.raises(ModelNotReady):
            steps.submit([request()], None)
        results = await asyncio.wait_for(
            asyncio.gather(*(outcome(s) for s in sequences)), timeout=60
        )
        await stopping
        await asyncio.gather(hold, slow)
    assert all(isinstance(r, list) and len(r) >= 1 for r in results), results
