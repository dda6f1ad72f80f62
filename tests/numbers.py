"""Comparing model outputs across requests: the same input may run in batches of different sizes
(and on other CPUs or devices), which legitimately changes float results in the last bits.

The tolerance is stated once here. Float32 softmax probabilities of the shipped and tiny models
move by up to ~2e-6 between batch sizes 1..64 on AVX-512 CPUs; summed character log-probabilities
by up to ~1e-5. Both bounds leave an order of magnitude of room and are still far below any
difference between two trained versions of a model."""

from __future__ import annotations

import math
from typing import Any

PROBABILITY_TOLERANCE = 1e-5  # absolute, for probabilities in [0, 1]
LOG_PROB_TOLERANCE = 1e-4  # absolute, for natural-log probabilities and their sums


def same_numbers(a: Any, b: Any, tolerance: float = PROBABILITY_TOLERANCE) -> bool:
    """True when `a` and `b` have the same structure, equal strings, ints and bools, and floats
    within `tolerance` (absolute) of each other."""
    return not differences(a, b, tolerance)


def differences(a: Any, b: Any, tolerance: float, where: str = "") -> list[str]:
    """Where `a` and `b` differ beyond `tolerance`, as readable paths (empty when they agree)."""
    if isinstance(a, float) or isinstance(b, float):
        both_numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
        if both_numbers and math.isclose(a, b, rel_tol=0.0, abs_tol=tolerance):
            return []
        return [f"{where or 'value'}: {a!r} vs {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where or 'object'}: keys {sorted(a)} vs {sorted(b)}"]
        return [d for k in a for d in differences(a[k], b[k], tolerance, f"{where}.{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where or 'array'}: {len(a)} vs {len(b)} elements"]
        pairs = zip(a, b, strict=True)
        return [
            d
            for i, (x, y) in enumerate(pairs)
            for d in differences(x, y, tolerance, f"{where}[{i}]")
        ]
    return [] if a == b else [f"{where or 'value'}: {a!r} vs {b!r}"]


def assert_same_numbers(a: Any, b: Any, tolerance: float = PROBABILITY_TOLERANCE) -> None:
    found = differences(a, b, tolerance)
    assert not found, f"differ beyond {tolerance}: " + "; ".join(found[:5])
