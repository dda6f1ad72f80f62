"""Next-token choice: greedy, temperature, top-k, top-p, and seeds that make a sequence's draws
its own, whatever else shares the batch.

Frequencies are measured over 20,000 seeded draws: the standard error of a frequency is at most
0.0035, so FREQUENCY_TOLERANCE (0.015, over 4 standard errors) separates a right sampler from a
wrong one; the seeds are fixed, so each run draws the same numbers."""

from __future__ import annotations

import math

import pytest
import torch

from models.sampling import SamplingParams, make_generator, next_tokens

DRAWS = 20_000
FREQUENCY_TOLERANCE = 0.015
PROBS = [0.5, 0.3, 0.15, 0.05]  # tokens 0..3, most to least likely
LOG_PROBS = torch.tensor([PROBS]).log()


def frequencies(
    params: SamplingParams, log_probs: torch.Tensor = LOG_PROBS, seed: int = 7
) -> list[float]:
    """Token frequencies over DRAWS draws from one row, all from one seeded generator."""
    generator = make_generator(seed)
    rows = log_probs.expand(DRAWS, -1)
    # One generator per row is the contract; the same generator object repeated draws the
    # rows' numbers one after another, which is what many steps of one sequence do.
    tokens = next_tokens(rows, [params] * DRAWS, [generator] * DRAWS)
    counts = torch.bincount(tokens, minlength=log_probs.shape[1])
    return (counts.float() / DRAWS).tolist()


def assert_frequencies(found: list[float], expected: list[float]) -> None:
    for token, (f, e) in enumerate(zip(found, expected, strict=True)):
        assert abs(f - e) <= FREQUENCY_TOLERANCE, f"token {token}: {f:.4f} vs {e:.4f} ({found})"


def renormalised(kept: list[int], probs: list[float] = PROBS) -> list[float]:
    total = sum(probs[i] for i in kept)
    return [probs[i] / total if i in kept else 0.0 for i in range(len(probs))]


def test_plain_sampling_follows_the_models_distribution() -> None:
    assert_frequencies(frequencies(SamplingParams()), PROBS)


def test_temperature_zero_is_the_argmax_without_a_generator() -> None:
    log_probs = torch.tensor([[-3.0, -0.2, -2.0], [-0.1, -4.0, -2.5]])
    tokens = next_tokens(log_probs, [SamplingParams(temperature=0.0)] * 2, [None, None])
    assert tokens.tolist() == [1, 0]


def test_temperature_reshapes_the_distribution_as_p_to_the_power_one_over_t() -> None:
    for temperature in (0.5, 2.0):
        powered = [p ** (1 / temperature) for p in PROBS]
        expected = [p / sum(powered) for p in powered]
        assert_frequencies(frequencies(SamplingParams(temperature=temperature)), expected)


def test_top_k_draws_only_among_the_k_most_likely_tokens_in_their_proportions() -> None:
    assert_frequencies(frequencies(SamplingParams(top_k=2)), renormalised([0, 1]))
    assert_frequencies(frequencies(SamplingParams(top_k=1)), [1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.45, [0]), (0.75, [0, 1]), (0.9, [0, 1, 2]), (1.0, [0, 1, 2, 3])]
)
def test_top_p_keeps_the_smallest_set_of_likeliest_tokens_reaching_p(
    top_p: float, kept: list[int]
) -> None:
    assert_frequencies(frequencies(SamplingParams(top_p=top_p)), renormalised(kept))


def test_top_k_and_top_p_together_keep_the_smaller_set() -> None:
    assert_frequencies(frequencies(SamplingParams(top_k=3, top_p=0.75)), renormalised([0, 1]))
    assert_frequencies(frequencies(SamplingParams(top_k=2, top_p=0.9)), renormalised([0, 1]))


def test_unsorted_vocabulary_maps_back_to_the_right_token_ids() -> None:
    order = [2, 0, 3, 1]  # token i has probability PROBS[order.index(i)]
    shuffled = [PROBS[order.index(i)] for i in range(4)]
    found = frequencies(SamplingParams(top_k=2), torch.tensor([shuffled]).log())
    assert_frequencies(found, renormalised([order[0], order[1]], shuffled))


def test_forbidden_tokens_are_never_chosen_even_when_likeliest() -> None:
    assert frequencies(SamplingParams())[0] > 0.4
    generator = make_generator(3)
    rows = LOG_PROBS.expand(2000, -1)
    sampled = next_tokens(rows, [SamplingParams()] * 2000, [generator] * 2000, forbidden=[0])
    greedy = next_tokens(LOG_PROBS, [SamplingParams(temperature=0)], [None], forbidden=[0])
    assert 0 not in sampled.tolist() and greedy.tolist() == [1]


def sequence_draws(
    log_probs: torch.Tensor, params: SamplingParams, seed: int, steps: int, neighbours: int
) -> list[int]:
    """The tokens one sequence draws over `steps` steps while sitting at row `neighbours` of a
    batch whose other rows have their own generators, parameters and distributions."""
    own = make_generator(seed)
    others = [make_generator(seed + 1 + i) for i in range(neighbours)]
    other_params = [SamplingParams(temperature=0.7, top_k=3), SamplingParams(temperature=0)]
    drawn = []
    for step in range(steps):
        noise = torch.randn(
            neighbours, log_probs.shape[1], generator=torch.Generator().manual_seed(step)
        )
        batch = torch.cat([torch.log_softmax(noise, dim=-1), log_probs])
        params_row = [other_params[i % 2] for i in range(neighbours)] + [params]
        generators = [others[i] if i % 2 == 0 else None for i in range(neighbours)] + [own]
        drawn.append(int(next_tokens(batch, params_row, generators)[-1]))
    return drawn


@pytest.mark.parametrize(
    "params", [SamplingParams(), SamplingParams(temperature=1.3, top_k=3, top_p=0.9)]
)
def test_a_seeded_sequence_draws_the_same_tokens_alone_or_in_any_batch(
    params: SamplingParams,
) -> None:
    log_probs = torch.log_softmax(
        torch.randn(1, 12, generator=torch.Generator().manual_seed(0)), -1
    )
    alone = sequence_draws(log_probs, params, seed=42, steps=50, neighbours=0)
    assert len(set(alone)) > 2, "the draws vary from step to step"
    for neighbours in (1, 5):
        assert sequence_draws(log_probs, params, seed=42, steps=50, neighbours=neighbours) == alone
    assert sequence_draws(log_probs, params, seed=43, steps=50, neighbours=0) != alone


def test_generators_differ_by_seed_and_stream_and_repeat_for_the_same_pair() -> None:
    def numbers(seed: int | None, stream: int = 0) -> list[float]:
        return torch.rand(8, generator=make_generator(seed, stream)).tolist()

    assert numbers(5) == numbers(5) and numbers(5, 1) == numbers(5, 1)
    assert len({tuple(numbers(s, n)) for s in (5, 6) for n in (0, 1)}) == 4
    assert numbers(None) != numbers(None)
    assert all(0 <= x < 1 for x in numbers(-(2**70)) + numbers(2**70))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_nonsense_parameters_are_refused_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        SamplingParams(**kwargs)


def test_a_sampled_row_without_a_generator_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a generator"):
        next_tokens(LOG_PROBS, [SamplingParams()], [None])
