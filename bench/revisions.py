"""batchserve against itself: the same wrk runs against two commits, interleaved round by round so
that drift in the machine's speed hits both alike; medians of each.

    python -m bench.revisions 8c48c26 HEAD                 # predict and score, c=1 and c=64
    python -m bench.revisions 8c48c26 HEAD --rounds 5 --out bench/RESULTS.md

Each commit is checked out into a temporary worktree and served from there (`python -m app
serve`, the bundled models, one torch thread, pinned to CPU 0; wrk on CPU 1), with the bodies of
`python -m bench.run`."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.bodies import write_bodies
from bench.hostile import batchserve_spec, checkout
from bench.load import measure
from bench.report import write_marked_section
from bench.servers import ROOT, start, stop

PATHS = {"predict": "/v1/models/mnist-mlp/predict", "score": "/v1/models/names-lm/score"}


def run(revisions: list[str], concurrency: list[int], rounds: int, seconds: float) -> dict:
    pinned = (os.cpu_count() or 1) >= 2
    cpus = ("0", "1") if pinned else (None, None)
    samples: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        bodies = write_bodies(Path(tmp) / "bodies")
        trees = [stack.enter_context(checkout(None if r == "HEAD" else r)) for r in revisions]
        for round_ in range(rounds):
            for (source, described), revision in zip(trees, revisions, strict=True):
                spec = batchserve_spec(source, source / "models" / "repository")
                server = start(spec, Path(tmp), cpus[0])
                try:
                    for endpoint, path in PATHS.items():
                        body_file = bodies[endpoint]["path"]
                        measure(server, path, body_file, 64, 2.0, cpus[1])  # warm-up
                        for c in concurrency:
                            print(f"round {round_ + 1}: {described[:7]} {endpoint} c={c}",
                                  file=sys.stderr, flush=True)  # fmt: skip
                            result = measure(server, path, body_file, c, seconds, cpus[1])
                            samples.setdefault((revision, endpoint, c), []).append(result)
                finally:
                    stop(server)
        names = {r: d for r, (_, d) in zip(revisions, trees, strict=True)}
    return {"described": names, "samples": samples}


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for (revision, endpoint, c), runs in results["samples"].items():
        rows.append(
            {
                "revision": revision,
                "described": results["described"][revision],
                "endpoint": endpoint,
                "concurrency": c,
                "rps": [r["rps"] for r in runs],
                "median_rps": statistics.median(r["rps"] for r in runs),
                "median_p50_ms": statistics.median(r["latency_ms"]["p50"] for r in runs),
                "median_p99_ms": statistics.median(r["latency_ms"]["p99"] for r in runs),
                "non_2xx": sum(r["non_2xx"] for r in runs),
                "other_cpu": max(r["other_cpu"] for r in runs),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], revisions: list[str], seconds: float) -> str:
    first = {(r["endpoint"], r["concurrency"]): r for r in rows if r["revision"] == revisions[0]}
    lines = [
        "## One commit against another",
        "",
        f"`python -m bench.revisions` on {time.strftime('%Y-%m-%d')}: {seconds:.0f} s per run, "
        "rounds interleaved; medians. Server on CPU 0, wrk on CPU 1.",
        "",
        "| commit | endpoint | c | req/s (each round) | median req/s | x first | p50 / p99 ms |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in sorted(
        rows, key=lambda r: (r["endpoint"], r["concurrency"], r["revision"] != revisions[0])
    ):
        base = first[(r["endpoint"], r["concurrency"])]
        each = ", ".join(f"{v:,.0f}" for v in r["rps"])
        lines.append(
            f"| {r['described'][:40]} | {r['endpoint']} | {r['concurrency']} | {each} | "
            f"{r['median_rps']:,.0f} | {r['median_rps'] / base['median_rps']:.2f} | "
            f"{r['median_p50_ms']:.2f} / {r['median_p99_ms']:.2f} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.revisions", description=__doc__)
    parser.add_argument("revisions", nargs=2, metavar="COMMIT")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--out", type=Path, help="write the section into this markdown file")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "revisions.json")
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    results = run(args.revisions, concurrency, args.rounds, args.duration)
    rows = summary(results)
    args.json_out.write_text(json.dumps(rows, indent=1))
    text = markdown(rows, args.revisions, args.duration)
    print(text)
    if args.out:
        # One section per pair of commits, so that several comparisons can stand side by side.
        pair = "..".join(args.revisions)
        write_marked_section(
            args.out, text, f"<!-- revisions {pair}:start -->", f"<!-- revisions {pair}:end -->"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
