"""Writes surname_endings.jsonl, the documents of the lm-eval task in this folder: which of four
endings completes a real surname, from the surname data set's held-out test split.

    python -m bench.lm_eval_task.make_surname_endings           # rewrite the JSONL
    python -m bench.lm_eval_task.make_surname_endings --check   # exit 1 if it would change

Each document is a test-split surname cut before its last 2, 3 or 4 characters (the context,
at least 3 characters long) with four same-length choices: the true ending and three endings of
other test-split surnames, drawn from the same pool in proportion to how often they end a name.
A distractor is redrawn when it equals the true ending or another choice, or when context +
distractor is itself a surname anywhere in names-dataset (then it would also be a right answer).
True and false endings come from one distribution, so a scorer that ignores the context sits near
chance (0.25); the script prints that baseline. The same seed gives the same file, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from models.data import load_surname_table, load_surnames
from models.text import normalize

JSONL = Path(__file__).with_name("surname_endings.jsonl")
DOCS = 200
CHOICES = 4
ENDING_LENGTHS = (2, 3, 4)
MIN_CONTEXT = 3
SEED = 14
MAX_DRAWS = 1000  # per document; the pools hold thousands of endings, so this is never reached


def known_surnames(table: dict[str, Any]) -> set[str]:
    """Every surname of names-dataset, normalised as the data set's names are."""
    return {normalize(str(name).strip(), "ascii") for name in table}


def build_docs(
    test_names: Sequence[str], known: set[str], docs: int = DOCS, seed: int = SEED
) -> list[dict[str, Any]]:
    """`docs` multiple-choice documents from `test_names` (see the module docstring)."""
    rng = random.Random(seed)
    cut = {name: rng.choice(ENDING_LENGTHS) for name in sorted(set(test_names))}
    eligible = [n for n in sorted(cut) if len(n) - cut[n] >= MIN_CONTEXT]
    pools = {k: [n[-k:] for n in eligible if cut[n] == k] for k in ENDING_LENGTHS}
    return [
        _doc(name, cut[name], pools[cut[name]], known, rng) for name in rng.sample(eligible, docs)
    ]


def _doc(name: str, k: int, pool: list[str], known: set[str], rng: random.Random) -> dict[str, Any]:
    context, ending = name[:-k], name[-k:]
    choices = [ending]
    for _ in range(MAX_DRAWS):
        if len(choices) == CHOICES:
            break
        candidate = rng.choice(pool)
        if candidate not in choices and context + candidate not in known:
            choices.append(candidate)
    else:
        raise RuntimeError(f"no {CHOICES - 1} distractors for {name!r} in {MAX_DRAWS} draws")
    rng.shuffle(choices)
    return {"name": name, "context": context, "choices": choices, "label": choices.index(ending)}


def ending_frequency_accuracy(docs: Iterable[dict[str, Any]], train_names: Sequence[str]) -> float:
    """Accuracy of a scorer that ignores the context: the choice that most often ends a
    training-split surname wins."""
    counts = Counter(n[-k:] for n in train_names for k in ENDING_LENGTHS if len(n) > k)
    docs = list(docs)
    right = sum(
        max(range(CHOICES), key=lambda i: counts[d["choices"][i]]) == d["label"] for d in docs
    )
    return right / len(docs)


def render(docs: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(d, ensure_ascii=True, sort_keys=True) + "\n" for d in docs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the file, write nothing")
    parser.add_argument("--out", type=Path, default=JSONL, help=f"default: {JSONL}")
    parser.add_argument(
        "--data-dir", help="wheel cache (default: $BATCHSERVE_DATA_DIR or ~/.cache)"
    )
    args = parser.parse_args(argv)
    table = load_surname_table(args.data_dir)
    data = load_surnames(table=table)
    docs = build_docs([n for n, _ in data.test], known_surnames(table))
    text = render(docs)
    baseline = ending_frequency_accuracy(docs, [n for n, _ in data.train])
    print(f"{len(docs)} documents; chance {1 / CHOICES:.3f}; ending frequency {baseline:.3f}")
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="ascii") == text
        print(f"{args.out}: {'up to date' if same else 'differs from the data'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="ascii")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
