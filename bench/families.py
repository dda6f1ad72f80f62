"""The model families of issue 21 served by batchserve against the plain route: one model of each
new kind, wrk on `POST /v1/models/<name>/predict` with one item per request (items of varying length
for the sequence models) at c=1 and c=64, batchserve and the plain FastAPI app
(bench/families_baseline_app.py) measured in alternating rounds so that a change in the machine's
load hits both. Reports req/s, p50/p99 latency, batchserve's mean batch (from /metrics) and the
batchserve / plain ratio of each. Numbers to read, not to assert.

The models (random initial weights, seeded: speed does not depend on training; built with
`models.checkpoint.build_model` and written with `models.versions.write_version`):
(a) price: regression MLP 8 -> 64 -> 64 -> 1 (BatchNorm1d, ReLU, Dropout, LayerNorm, GELU) with
    target scaling; (b) tags: multi-label MLP 20 -> 64 -> 5; (c) sentiment: word-level LSTM
    (1,000-word vocabulary, embedding 64, hidden 128) over sentences of 3 to 40 words;
(d) series: GRU (hidden 64, mean over the steps) over [T, 3] sequences, T from 4 to 64 -> 4
    classes; (e) names-bigru: 2-layer bidirectional GRU (hidden 64) over the characters of
    surnames -> 18 classes.

Run: `python -m bench.families [--quick] [--duration 10] [--rounds 2] [--write]` (`--write`: its
own marked section of bench/RESULTS.md). Needs wrk; servers on CPU 0, wrk on CPU 1 (taskset),
one torch thread each. Before measuring, each model's first bodies are sent to both servers and
their answers must agree within tests/numbers.py's tolerance, or the run stops."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.bodies import SURNAMES
from bench.hostile import batchserve_spec
from bench.load import measure
from bench.report import run_section_benchmark
from bench.run import _pinning
from bench.servers import HOST, ROOT, ServerSpec, get_json, post_json, start, stop
from models.checkpoint import ModelConfig, build_model
from models.versions import write_version
from tests.numbers import PROBABILITY_TOLERANCE, differences

RESULTS = ROOT / "bench" / "RESULTS.md"
START = "<!-- bench.families: start -->"
END = "<!-- bench.families: end -->"
BODIES = 64  # rotating bodies per model
CHECKED = 8  # of them, sent to both servers before measuring, answers compared
ALPHABET = string.ascii_letters + " '-"
COUNTRIES = [
    "EN", "DE", "FR", "ES", "IT", "PT", "PL", "RU", "CZ", "HU", "FI", "SE", "NL", "GR", "TR",
    "JP", "LT", "NG",
]  # fmt: skip
_UVICORN = ["-m", "uvicorn", "--factory", "--loop", "uvloop", "--http", "httptools"]
_UVICORN += ["--no-access-log", "--log-level", "warning", "--host", HOST]


@dataclass(frozen=True)
class Family:
    name: str
    what: str
    config: dict[str, Any]
    items: Callable[[random.Random], list[Any]]  # BODIES items, one per request
    tolerance: float = PROBABILITY_TOLERANCE


def _vocabulary() -> list[str]:
    rng = random.Random(7)
    words: dict[str, None] = {}
    while len(words) < 999:
        syllables = rng.randint(1, 3)
        words[
            "".join(rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(syllables))
        ] = None
    return ["<unk>", *words]


VOCABULARY = _vocabulary()


def _vectors(width: int) -> Callable[[random.Random], list[Any]]:
    return lambda rng: [[round(rng.gauss(0, 1), 4) for _ in range(width)] for _ in range(BODIES)]


def _sentences(rng: random.Random) -> list[str]:
    words = [*VOCABULARY[1:], "unseen", "Words"]  # an unknown word now and then, some upper case
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))) for _ in range(BODIES)]


def _series(rng: random.Random) -> list[list[list[float]]]:
    return [
        [[round(rng.gauss(0, 1), 4) for _ in range(3)] for _ in range(rng.randint(4, 64))]
        for _ in range(BODIES)
    ]


def _surnames(rng: random.Random) -> list[str]:
    names = list(dict.fromkeys(SURNAMES))
    rng.shuffle(names)
    return (names * (BODIES // len(names) + 1))[:BODIES]


PRICE_SCALING = {"mean": [250.0], "std": [80.0]}  # prices in thousands
FAMILIES = [
    Family(
        "price",
        "(a) regression MLP 8 -> 64 -> 64 -> 1, target scaling",
        {
            "task": "regress",
            "labels": ["price"],
            "target_scaling": PRICE_SCALING,
            "input": {"kind": "vector", "shape": [8]},
            "architecture": {
                "type": "mlp",
                "layer_sizes": [8, 64, 64, 1],
                "output": "identity",
                "layers": [
                    {"kind": "linear", "out_features": 64},
                    {"kind": "batch_norm"},
                    {"kind": "activation", "name": "relu"},
                    {"kind": "dropout", "p": 0.1},
                    {"kind": "linear", "out_features": 64},
                    {"kind": "layer_norm"},
                    {"kind": "activation", "name": "gelu"},
                    {"kind": "linear", "out_features": 1},
                ],
            },
        },
        _vectors(8),
        # Values in the targets' units: float32's error scales with them.
        PROBABILITY_TOLERANCE * PRICE_SCALING["std"][0],
    ),
    Family(
        "tags",
        "(b) multi-label MLP 20 -> 64 -> 5, threshold 0.4",
        {
            "task": "multilabel",
            "labels": ["sports", "politics", "tech", "health", "art"],
            "threshold": 0.4,
            "input": {"kind": "vector", "shape": [20]},
            "architecture": {
                "type": "mlp",
                "layer_sizes": [20, 64, 5],
                "output": "sigmoid",
                "layers": [
                    {"kind": "linear", "out_features": 64},
                    {"kind": "activation", "name": "leaky_relu", "negative_slope": 0.2},
                    {"kind": "linear", "out_features": 5},
                ],
            },
        },
        _vectors(20),
    ),
    Family(
        "sentiment",
        "(c) word LSTM: 1,000 words, embedding 64, hidden 128; 3-40 words",
        {
            "task": "classify",
            "labels": ["negative", "positive"],
            "input": {"kind": "words", "vocabulary": VOCABULARY, "max_length": 64},
            "architecture": {
                "type": "rnn",
                "cell": "lstm",
                "embedding_dim": 64,
                "hidden_size": 128,
            },
        },
        _sentences,
    ),
    Family(
        "series",
        "(d) GRU over [T, 3], hidden 64, mean readout, 4 classes; T 4-64",
        {
            "task": "classify",
            "labels": ["w", "x", "y", "z"],
            "input": {"kind": "sequence", "features": 3, "max_steps": 128},
            "architecture": {"type": "rnn", "cell": "gru", "hidden_size": 64, "readout": "mean"},
        },
        _series,
    ),
    Family(
        "names-bigru",
        "(e) 2-layer bidirectional GRU over characters, hidden 64, 18 classes",
        {
            "task": "classify",
            "labels": COUNTRIES,
            "input": {"kind": "text", "alphabet": ALPHABET, "max_length": 20},
            "architecture": {
                "type": "rnn",
                "cell": "gru",
                "hidden_size": 64,
                "num_layers": 2,
                "bidirectional": True,
            },
        },
        _surnames,
    ),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.families", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per point")
    p.add_argument("--concurrency", default="1,64", help="comma-separated wrk connections")
    p.add_argument(
        "--models", help="comma-separated subset of " + ",".join(f.name for f in FAMILIES)
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and wrk to CPUs")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, one round")
    p.add_argument("--write", action="store_true", help="write its section of RESULTS.md")
    p.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
    args.levels = [int(n) for n in args.concurrency.split(",")]
    known = {f.name: f for f in FAMILIES}
    chosen = args.models.split(",") if args.models else list(known)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {sorted(known)}")
    args.families = [known[n] for n in chosen]
    return args


def build_repository(repository: Path, families: list[Family] = FAMILIES) -> Path:
    """Each family's model, seeded random weights, as version 1 in `repository`."""
    for index, family in enumerate(families):
        config = ModelConfig.model_validate({"name": family.name, **family.config})
        torch.manual_seed(index)
        model = build_model(config).eval()
        write_version(repository, model, config, 1, force=False)
    return repository


def write_bodies(directory: Path, families: list[Family] = FAMILIES) -> dict[str, Path]:
    """One JSON body per line, one item per body, per model: {name: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for family in families:
        items = family.items(random.Random(family.name))
        path = directory / f"{family.name}.jsonl"
        lines = [json.dumps({"inputs": [item]}, separators=(",", ":")) for item in items]
        path.write_text("\n".join(lines) + "\n")
        written[family.name] = path
    return written


def specs(repository: Path, names: list[str]) -> tuple[ServerSpec, ServerSpec]:
    batchserve = batchserve_spec(ROOT, repository)
    batchserve.env = {**batchserve.env, "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    batchserve.ready = lambda port: _all_ready(port, names)
    env = {
        "BENCH_MODEL_REPOSITORY": str(repository),
        "BENCH_FAMILY_MODELS": ",".join(names),
        "BENCH_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    plain = ServerSpec(
        "plain",
        "`bench/families_baseline_app.py`: plain FastAPI, `async` route, one forward pass "
        "per request",
        [*_UVICORN, "bench.families_baseline_app:create_app"],
        env,
        lambda port: get_json(f"http://{HOST}:{port}/health").get("status") == "ok",
    )
    return batchserve, plain


def _all_ready(port: int, names: list[str]) -> bool:
    listed = get_json(f"http://{HOST}:{port}/v1/models")["models"]
    states = {m["name"]: m["state"] for m in listed}
    failed = [n for n in names if states.get(n) == "failed"]
    if failed:
        raise RuntimeError(f"batchserve failed to load {failed}")
    return all(states.get(n) == "ready" for n in names)


def check_same_answers(batchserve_url: str, plain_url: str, family: Family, bodies: Path) -> int:
    """The first CHECKED bodies, to both servers: their answers must agree. Returns how many."""
    path = f"/v1/models/{family.name}/predict"
    lines = bodies.read_text().splitlines()[:CHECKED]
    for number, line in enumerate(lines):
        body = json.loads(line)
        body["top_k"] = len(family.config["labels"])
        raw = json.dumps(body).encode()
        answers = [post_json(url + path, raw) for url in (batchserve_url, plain_url)]
        for status, answer in answers:
            if status != 200:
                raise RuntimeError(f"{family.name} body {number}: {status} {answer}")
        found = differences(answers[0][1], answers[1][1], family.tolerance)
        if found:
            raise RuntimeError(
                f"{family.name} body {number}: the plain route answers other numbers than "
                f"batchserve (beyond {family.tolerance:g}): " + "; ".join(found[:5])
            )
    return len(lines)


def benchmark(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    cpus = _pinning(args.no_pin)
    names = [f.name for f in args.families]
    repository = build_repository(tmp / "repository", args.families)
    bodies = write_bodies(tmp / "bodies", args.families)
    batchserve_spec_, plain_spec = specs(repository, names)
    batchserve = start(batchserve_spec_, tmp, cpus[0])
    try:
        plain = start(plain_spec, tmp, cpus[0])
    except BaseException:
        stop(batchserve)
        raise
    servers = {"batchserve": batchserve, "plain": plain}
    runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    checked = {}
    try:
        for family in args.families:
            checked[family.name] = check_same_answers(
                batchserve.base_url, plain.base_url, family, bodies[family.name]
            )
        for family in args.families:
            path = f"/v1/models/{family.name}/predict"
            body_file = str(bodies[family.name])
            runs[family.name] = {}
            for level in args.levels:
                point: dict[str, list[dict[str, Any]]] = {"batchserve": [], "plain": []}
                for _ in range(args.rounds):
                    for which, server in servers.items():
                        print(f"{family.name} c={level} {which} ...", file=sys.stderr, flush=True)
                        measure(server, path, body_file, level, args.warmup, cpus[1])
                        row = measure(server, path, body_file, level, args.duration, cpus[1])
                        point[which].append(row)
                runs[family.name][str(level)] = point
    finally:
        stop(plain)
        stop(batchserve)
    settings = {
        "date": time.strftime("%Y-%m-%d"),
        "wrk": f"-t1, {args.duration:g} s after {args.warmup:g} s warm-up, {args.rounds} "
        "alternating round(s)",
        "pinning": f"servers on CPU {cpus[0]}, wrk on CPU {cpus[1]}" if cpus[0] else "none",
        "torch": torch.__version__,
        "quick": args.quick,
        "checked": checked,
    }
    return {"settings": settings, "runs": runs}


def summary(rows: list[dict[str, Any]], model: str) -> dict[str, float]:
    def median(pick: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(pick(row) for row in rows)

    return {
        "rps": median(lambda r: r["rps"]),
        "p50": median(lambda r: r["latency_ms"]["p50"]),
        "p99": median(lambda r: r["latency_ms"]["p99"]),
        "mean_batch": median(lambda r: r.get("batches", {}).get(model, {}).get("mean_batch", 0.0)),
        "errors": sum(r["non_2xx"] + r["socket_errors"] for r in rows),
        "other_cpu": max(r["other_cpu"] for r in rows),
    }


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    what = {f.name: f.what for f in FAMILIES}
    title = "## Model families: batchserve against the plain route (bench.families)"
    lines = [
        title + (" — SMOKE RUN (--quick), not a measurement" if s["quick"] else ""),
        "",
        f"`python -m bench.families` on {s['date']}: `POST /v1/models/<name>/predict`, one item "
        f"per request (varying lengths for the sequence models); wrk {s['wrk']}; {s['pinning']}; "
        f"one torch thread each; torch {s['torch']}. Plain route: "
        "`bench/families_baseline_app.py` (FastAPI + Pydantic, one forward pass per request under "
        "`torch.inference_mode()`, the same checkpoints); its answers equal batchserve's on each "
        f"model's first {CHECKED} bodies (tests/numbers.py tolerance). Medians over the rounds; "
        "ratio = batchserve / plain req/s; mean batch from batchserve's /metrics.",
        "",
        "| model | c | batchserve req/s | p50 ms | p99 ms | mean batch | plain req/s | p50 ms "
        "| p99 ms | ratio | errors | other CPU busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, levels in results["runs"].items():
        for level, point in levels.items():
            ours, plain = summary(point["batchserve"], model), summary(point["plain"], model)
            ratio = ours["rps"] / plain["rps"] if plain["rps"] else float("nan")
            lines.append(
                f"| {model} | {level} | {ours['rps']:,.0f} | {ours['p50']:.2f} "
                f"| {ours['p99']:.2f} | {ours['mean_batch']:.1f} | {plain['rps']:,.0f} "
                f"| {plain['p50']:.2f} | {plain['p99']:.2f} | {ratio:.2f} "
                f"| {ours['errors'] + plain['errors']:.0f} "
                f"| {max(ours['other_cpu'], plain['other_cpu']):.2f} |"
            )
    lines += ["", "Models:", ""]
    lines += [f"- `{model}`: {what[model]}" for model in results["runs"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_section_benchmark(
        parse_args(argv), benchmark, render, (RESULTS, START, END), "batchserve-families-"
    )


if __name__ == "__main__":
    sys.exit(main())
