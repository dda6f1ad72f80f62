"""One batchserve worker against two (`--workers 2`, one port), in one run: wrk's req/s and
latency for `predict` on mnist-mlp, one item per request, how the workers split the requests,
and each process's memory. Numbers to read, not to assert.

Run: `python -m bench.workers [--quick] [--duration 10] [--concurrency 64] [--workers 1,2]`.
Nothing is pinned: the workers and wrk share every CPU, and the output says how many there were
and how much of them wrk used. With fewer CPUs than workers + 1, the workers compete with the
load generator and with each other, and the table says nothing about how workers scale."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from bench.bodies import write_bodies
from bench.load import busy_cpu_seconds, run_wrk
from bench.servers import HOST, ROOT, Server, ServerSpec, get_json, start, stop

PATH = "/v1/models/mnist-mlp/predict"
MODELS = ("mnist-mlp",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each")
    p.add_argument("--concurrency", type=int, default=64, help="wrk connections")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 s runs, 1 s warm-up")
    p.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    p.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.0, 1.0
    args.counts = [int(n) for n in args.workers.split(",")]
    return args


def spec(workers: int, repository: Path) -> ServerSpec:
    env = {
        "BATCHSERVE_MODEL_REPOSITORY": str(repository),
        "BATCHSERVE_WORKERS": str(workers),
        "BATCHSERVE_ACCESS_LOG": "false",
        "BATCHSERVE_LOG_LEVEL": "warning",
        "BATCHSERVE_DEVICE": "cpu",
        "BATCHSERVE_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return ServerSpec(
        f"batchserve-{workers}-workers",
        f"`python -m app serve --workers {workers}`",
        ["-m", "app", "serve", "--host", HOST],
        env,
        lambda port: _all_serving(port, workers),
    )


def _all_serving(port: int, workers: int) -> bool:
    ready = {m["name"]: m["state"] for m in get_json(f"http://{HOST}:{port}/v1/models")["models"]}
    if not all(ready.get(m) == "ready" for m in MODELS):
        return False
    return workers == 1 or len(worker_requests(f"http://{HOST}:{port}")) == workers


def worker_requests(url: str) -> dict[str, float]:
    """pid -> requests answered, for each live worker (batchserve_worker_requests; only served
    with more than one worker)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    prefix = 'batchserve_worker_requests{pid="'
    lines = [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]
    return {pid: float(value) for pid, value in (line.split('"} ') for line in lines)}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def processes(server: Server) -> tuple[int, list[int]]:
    """The server's own pid and its child processes' (the workers, with --workers > 1)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return pid, [int(c) for c in children]


def measure(workers: int, bodies: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    server = start(spec(workers, args.repository), logs, cpu=None)
    try:
        url = server.base_url
        run_wrk(url + PATH, bodies, args.concurrency, args.warmup, None)  # warm-up, not kept
        before_cpu = busy_cpu_seconds()
        before = worker_requests(url) if workers > 1 else {}
        result = run_wrk(url + PATH, bodies, args.concurrency, args.duration, None)
        result["machine_cpu"] = (busy_cpu_seconds() - before_cpu) / result["duration_s"]
        if workers > 1:
            after = worker_requests(url)
            answered = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
            total = sum(answered.values()) or 1.0
            result["shares"] = sorted((n / total for n in answered.values()), reverse=True)
        parent, children = processes(server)
        worker_pids = children if workers > 1 else [parent]
        # The multiprocessing resource tracker is a child too; workers are the big ones.
        sizes = sorted((rss_mib(pid) for pid in worker_pids), reverse=True)[:workers]
        result["worker_rss_mib"] = sizes
        result["supervisor_rss_mib"] = rss_mib(parent) if workers > 1 else None
        return result
    finally:
        stop(server)


def benchmark(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    written = write_bodies(tmp / "bodies")["predict"]
    rows = {n: measure(n, written["path"], args, tmp) for n in args.counts}
    settings = {
        "endpoint": f"POST {PATH}, one MNIST digit per request ({written['note']})",
        "wrk": f"-t1 -c{args.concurrency}, {args.duration:g} s after {args.warmup:g} s warm-up",
        "cpus": len(os.sched_getaffinity(0)),
    }
    return {"settings": settings, "rows": rows}


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    rows = results["rows"]
    wrk_cpu = max(row["client_cpu"] for row in rows.values())
    lines = [
        f"{s['endpoint']}; wrk {s['wrk']}.",
        f"Unpinned: the workers and wrk shared this machine's {s['cpus']} CPUs, and wrk itself "
        f"used up to {wrk_cpu:.2f} of them.",
    ]
    if s["cpus"] < max(rows) + 1:
        lines.append(
            f"Fewer CPUs than workers + wrk ({max(rows)} + 1): the workers competed with the "
            "load generator for the cores; read the rows as a check that it runs, not as scaling."
        )
    lines += [
        "",
        "| workers | req/s | p50 ms | p99 ms | non-2xx | socket errors | machine CPUs busy "
        "| wrk CPUs | requests per worker | RSS per worker MiB | supervisor RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for workers, row in rows.items():
        ms = row["latency_ms"]
        shares = " / ".join(f"{100 * share:.0f}%" for share in row.get("shares", [1.0]))
        rss = " / ".join(f"{size:.0f}" for size in row["worker_rss_mib"])
        supervisor = row["supervisor_rss_mib"]
        lines.append(
            f"| {workers} | {row['rps']:,.0f} | {ms['p50']:.1f} | {ms['p99']:.1f} | "
            f"{row['non_2xx']} | {row['socket_errors']} | {row['machine_cpu']:.2f} | "
            f"{row['client_cpu']:.2f} | {shares} | {rss} | "
            f"{'-' if supervisor is None else f'{supervisor:.0f}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="batchserve-workers-") as tmp:
        results = benchmark(args, Path(tmp))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
