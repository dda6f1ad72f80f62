"""One replica against two behind HAProxy (deploy/haproxy/haproxy.cfg), in one run: wrk's req/s
and latency for `predict` on mnist-mlp, one item per request, plus one replica with no balancer
to show what the hop costs. Numbers to read, not to assert.

Run: `python -m bench.replicas [--quick] [--duration 10] [--concurrency 64] [--no-pin]`.
With 4+ CPUs each replica, HAProxy and wrk get a core of their own (taskset); with fewer, all
run unpinned and share the cores, and the output says so."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.balancer import find_haproxy, replicas_behind_haproxy
from bench.bodies import write_bodies
from bench.load import busy_cpu_seconds, run_wrk

PATH = "/v1/models/mnist-mlp/predict"
# Who gets a CPU of their own when there are enough, in the order the CPUs are handed out.
ROLES = ("replica1", "replica2", "haproxy", "wrk")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each")
    p.add_argument("--concurrency", type=int, default=64, help="wrk connections")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 s runs, 1 s warm-up")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.0, 1.0
    return args


def placement(no_pin: bool) -> dict[str, str | None]:
    """A CPU per role when there are enough, else none (everything shares every core)."""
    available = sorted(os.sched_getaffinity(0))
    if no_pin or shutil.which("taskset") is None or len(available) < len(ROLES):
        return dict.fromkeys(ROLES)
    return {role: str(cpu) for role, cpu in zip(ROLES, available, strict=False)}


def measure(url: str, bodies: str, args: argparse.Namespace, cpu: str | None) -> dict[str, Any]:
    run_wrk(url + PATH, bodies, args.concurrency, args.warmup, cpu)  # warm-up, not kept
    before = busy_cpu_seconds()
    result = run_wrk(url + PATH, bodies, args.concurrency, args.duration, cpu)
    result["machine_cpu"] = (busy_cpu_seconds() - before) / result["duration_s"]
    return result


def benchmark(args: argparse.Namespace, tmp: Path, haproxy: str) -> dict[str, Any]:
    cpus = placement(args.no_pin)
    written = write_bodies(tmp / "bodies")["predict"]
    bodies = written["path"]
    env = {
        "BATCHSERVE_ACCESS_LOG": "false",
        "BATCHSERVE_LOG_LEVEL": "warning",
        "BATCHSERVE_DEVICE": "cpu",
        "BATCHSERVE_TORCH_THREADS": "1",
        "BATCHSERVE_SHUTDOWN_DRAIN_S": "3",
        "OMP_NUM_THREADS": "1",
    }
    rows: dict[str, dict[str, Any]] = {}
    replica_cpus = (cpus["replica1"], cpus["replica2"])
    with replicas_behind_haproxy(tmp, haproxy, env, replica_cpus, cpus["haproxy"]) as lb:
        first, second = lb.replicas
        rows["1 replica, direct"] = measure(first.url, bodies, args, cpus["wrk"])
        if second.terminate() != 0:
            raise RuntimeError(f"{second.name} did not exit 0 on SIGTERM:\n{second.log_tail()}")
        lb.wait_state(second.name, "DOWN")
        rows["1 replica behind HAProxy"] = measure(lb.url, bodies, args, cpus["wrk"])
        second.start()
        second.wait_ready()
        lb.wait_state(second.name, "UP")
        rows["2 replicas behind HAProxy"] = measure(lb.url, bodies, args, cpus["wrk"])
    return {"settings": {**settings(args, cpus), "bodies": written["note"]}, "rows": rows}


def settings(args: argparse.Namespace, cpus: dict[str, str | None]) -> dict[str, Any]:
    pinned = all(cpus.values())
    return {
        "endpoint": f"POST {PATH}, one MNIST digit per request",
        "wrk": f"-t1 -c{args.concurrency}, {args.duration:g} s after {args.warmup:g} s warm-up",
        "cpus": os.cpu_count(),
        "placement": (
            ", ".join(f"{role} on CPU {cpu}" for role, cpu in cpus.items())
            if pinned
            else f"unpinned: replicas, HAProxy and wrk shared all {os.cpu_count()} CPUs"
        ),
    }


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"{s['endpoint']} ({s['bodies']}); wrk {s['wrk']}.",
        f"Placement: {s['placement']}.",
        "",
        "| | req/s | p50 ms | p99 ms | non-2xx | socket errors | machine CPUs busy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results["rows"].items():
        ms = row["latency_ms"]
        lines.append(
            f"| {name} | {row['rps']:,.0f} | {ms['p50']:.1f} | {ms['p99']:.1f} | "
            f"{row['non_2xx']} | {row['socket_errors']} | {row['machine_cpu']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    haproxy = find_haproxy()
    if haproxy is None or shutil.which("wrk") is None:
        print("bench: needs haproxy and wrk (apt-get install haproxy wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="batchserve-replicas-") as tmp:
        results = benchmark(args, Path(tmp), haproxy)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
