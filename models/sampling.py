"""Choosing the next token from a language model's log-probabilities: greedy, or seeded sampling
with temperature, top-k and top-p, one random stream per sequence so that a sequence's draws
depend on its own seed and never on which other sequences share its batch."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_SEED_BYTES = 8
# Below this a temperature only sharpens the distribution past float32 range: take the argmax
# (vLLM's threshold too), rather than divide log-probabilities into infinities.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens. temperature 0 (or below 1e-5) is greedy (argmax);
    top_k 0 keeps every token; top_p 1.0 keeps the whole distribution. Filters apply in the
    order temperature, top-k, top-p, as vLLM applies them."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and self.temperature < float("inf")):
            raise ValueError(f"temperature: must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k: must be >= 0 (0 keeps every token), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE


def make_generator(seed: int | None, stream: int = 0) -> torch.Generator:
    """A CPU generator for one sequence: from `seed` (any int) and the sequence's `stream` (e.g.
    the choice index when one request asks for n > 1 completions), or from the OS when seed is
    None. Seed and stream are hashed together, so requests with seeds 1 and 2 share no draws."""
    if seed is None:
        key = secrets.token_bytes(_SEED_BYTES)
    else:
        key = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=_SEED_BYTES).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(key, "little") >> 1)  # < 2**63: any torch accepts it
    return generator


def next_tokens(
    log_probs: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    forbidden: Sequence[int] = (),
    draws: Sequence[float | None] | None = None,
) -> torch.Tensor:
    """One token per row of log_probs [B, vocab]: the argmax for greedy rows, else a draw from the
    row's filtered distribution using one uniform number from that row's generator (or, where
    `draws` is given, that row's number, already drawn with `draw`). `forbidden` token ids (e.g.
    BOS) are never chosen. Returns [B] token ids on log_probs' device."""
    if len(params) != log_probs.shape[0] or len(generators) != log_probs.shape[0]:
        raise ValueError(
            f"{log_probs.shape[0]} rows but {len(params)} params and {len(generators)} generators"
        )
    scores = log_probs.float().clone()
    if forbidden:
        scores[:, list(forbidden)] = float("-inf")
    chosen = scores.argmax(dim=-1)
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if sampled:
        rows = torch.tensor(sampled, device=scores.device)
        if draws is None:
            uniforms = [_drawn(draw(params[i], generators[i]), params[i]) for i in sampled]
        else:
            uniforms = [_drawn(draws[i], params[i]) for i in sampled]
        chosen[rows] = _sample_rows(scores[rows], [params[i] for i in sampled], uniforms)
    return chosen


def draw(params: SamplingParams, generator: torch.Generator | None) -> float | None:
    """This step's uniform number in [0, 1) for one sequence, from its own generator (None for
    a greedy one, which draws nothing). Drawn once per step: a step that is retried reuses it,
    so that the sequence's stream does not depend on a neighbour's failure."""
    if params.greedy:
        return None
    if generator is None:
        raise ValueError(f"a sampling row (temperature {params.temperature}) needs a generator")
    return float(torch.rand((), generator=generator))


def _drawn(value: float | None, params: SamplingParams) -> float:
    if value is None:
        raise ValueError(f"a sampling row (temperature {params.temperature}) needs a draw")
    return value


def _sample_rows(
    scores: torch.Tensor, params: Sequence[SamplingParams], draws: Sequence[float]
) -> torch.Tensor:
    """Inverse-CDF sampling over each row's tokens sorted by probability (stable, so ties keep
    token order), after temperature, top-k and top-p."""
    device = scores.device
    temperature = torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)
    probs = torch.softmax(scores / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(probs.shape[1], device=device).unsqueeze(0)
    vocab = probs.shape[1]  # a top_k past the vocabulary keeps every token
    top_k = torch.tensor([min(p.top_k or vocab, vocab) for p in params], device=device)
    top_k = top_k.unsqueeze(1)
    top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
    # Keep a token while the mass ranked above it is below top_p: the smallest set reaching
    # top_p, and never less than the most likely token.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep = (rank < top_k) & ((mass_before < top_p) | (rank == 0))
    kept = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    cdf = kept.cumsum(dim=-1)
    target = torch.tensor(draws, device=device, dtype=cdf.dtype).unsqueeze(1) * cdf[:, -1:]
    # The first rank whose cumulative mass exceeds the target; clamped onto a kept token in
    # case rounding leaves the target at the very top of the CDF.
    pick = torch.searchsorted(cdf, target, right=True).clamp(max=probs.shape[1] - 1)
    last_kept = keep.sum(dim=-1, keepdim=True) - 1  # `keep` is a prefix of the ranks
    pick = torch.minimum(pick, last_kept)
    return order.gather(1, pick).squeeze(1)
