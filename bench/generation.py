"""Generation throughput: tokens per second from `POST /v1/completions` on names-lm, with step-level
batching (every running sequence advances in one forward pass per step) against one sequence at a
time (`BATCHSERVE_MAX_BATCH_SIZE=1`), at concurrency 1 and 64, in one run.

    python -m bench.generation                   # about 1 minute
    python -m bench.generation --out bench/RESULTS.md

The server runs pinned to CPU 0 with one torch thread; wrk drives it from CPU 1 with C keep-alive
connections (`bench/generation.lua`), each sending the next request as soon as the last is
answered. Requests sample (temperature 1, a seed each) up to 24 characters after a one- or
two-letter prompt; tokens are counted from each answer's `usage`."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.load import run_wrk
from bench.report import write_marked_section
from bench.servers import HOST, ROOT, ServerSpec, start, stop

LUA = Path(__file__).resolve().parent / "generation.lua"
START_MARK, END_MARK = "<!-- generation:start -->", "<!-- generation:end -->"
PROMPTS = ["A", "Be", "Co", "D", "Ma", "Ko", "Sm", "Na", "Ro", "Le", "Wi", "Gr", "Ha", "Pe"]
MAX_TOKENS = 24
MODES = {"step-batched": {}, "one at a time": {"BATCHSERVE_MAX_BATCH_SIZE": "1"}}


def spec(env: dict[str, str]) -> ServerSpec:
    return ServerSpec(
        "batchserve",
        "python -m app serve",
        ["-m", "app", "serve", "--host", HOST],
        {
            "BATCHSERVE_DEVICE": "cpu",
            "BATCHSERVE_TORCH_THREADS": "1",
            "BATCHSERVE_ACCESS_LOG": "false",
            "BATCHSERVE_LOG_LEVEL": "warning",
            "OMP_NUM_THREADS": "1",
            **env,
        },
        _ready,
    )


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://{HOST}:{port}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def bodies(path: Path, count: int = 512) -> str:
    """Completion bodies, one per line: a short prompt, sampling, a seed each."""
    rng = random.Random(7)
    lines = [
        json.dumps({"model": "names-lm", "prompt": rng.choice(PROMPTS), "max_tokens": MAX_TOKENS,
                    "temperature": 1.0, "seed": rng.randrange(1 << 30)})
        for _ in range(count)
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def measure(concurrency: list[int], seconds: float) -> list[dict[str, Any]]:
    pinned = (os.cpu_count() or 1) >= 2
    cpus = ("0", "1") if pinned else (None, None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        body_file = bodies(Path(tmp) / "bodies.txt")
        for mode, env in MODES.items():
            server = start(spec(env), Path(tmp), cpus[0])
            try:
                url = server.base_url + "/v1/completions"
                run_wrk(url, body_file, 8, 2.0, cpus[1], LUA)  # warm-up
                for c in concurrency:
                    print(f"{mode}, c={c} ...", file=sys.stderr, flush=True)
                    result = run_wrk(url, body_file, c, seconds, cpus[1], LUA)
                    rows.append(_row(mode, c, result))
            finally:
                stop(server)
    return rows


def _row(mode: str, concurrency: int, result: dict[str, Any]) -> dict[str, Any]:
    seconds = result["duration_s"]
    return {
        "mode": mode,
        "concurrency": concurrency,
        "tokens_per_s": result["extra"]["tokens"] / seconds,
        "requests_per_s": result["rps"],
        "p50_ms": result["latency_ms"]["p50"],
        "p99_ms": result["latency_ms"]["p99"],
        "failures": result["non_2xx"] + result["socket_errors"],
        "client_cpu": result["client_cpu"],
    }


def markdown(rows: list[dict[str, Any]], seconds: float) -> str:
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    lines = [
        "## Generation",
        "",
        f"`python -m bench.generation` on {time.strftime('%Y-%m-%d')}: `POST /v1/completions` on "
        f"names-lm, up to {MAX_TOKENS} sampled characters per request, {seconds:.0f} s per row; "
        "server on CPU 0, wrk on CPU 1.",
        "",
        "| mode | concurrency | tokens/s | requests/s | p50 ms | p99 ms | failures "
        "| x one at a time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = by.get(("one at a time", r["concurrency"]))
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else ""
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['tokens_per_s']:,.0f} | "
            f"{r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['failures']} | {ratio} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="3 s per row")
    parser.add_argument("--out", type=Path, help="write the section into this markdown file")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "generation.json")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else args.duration
    rows = measure([int(c) for c in args.concurrency.split(",")], seconds)
    args.json_out.write_text(json.dumps(rows, indent=1))
    text = markdown(rows, seconds)
    print(text)
    if args.out:
        write_marked_section(args.out, text, START_MARK, END_MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
