"""Driving a server with wrk (`bench/post.lua`) and reading what it and the server report."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.servers import Server

LUA = Path(__file__).resolve().parent / "post.lua"
_MARK = "BENCH_JSON "


def run_wrk(
    url: str,
    bodies: str,
    concurrency: int,
    duration_s: float,
    cpu: str | None,
    script: Path = LUA,
    script_args: Sequence[str] = (),
    threads: int = 1,
) -> dict[str, Any]:
    """One wrk run: -t`threads` (1: wrk has one core), -c`concurrency` keep-alive connections.
    `script` gets `bodies` and then `script_args` after `--`; it must print post.lua's
    BENCH_JSON line."""
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    threads = max(1, min(threads, concurrency))
    command = [*pin, "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s"]
    command += ["--timeout", "10s", "--latency", "-s", str(script), url, "--", bodies]
    command += script_args
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    raw = json.loads(lines[-1][len(_MARK) :])
    wrk_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return _summarise(raw, wrk_cpu_s)


def _summarise(raw: dict[str, Any], wrk_cpu_s: float) -> dict[str, Any]:
    statuses = {int(k): v for k, v in raw["statuses"].items()}
    errors = raw["errors"]
    duration = raw["duration_s"]
    summary = {
        "requests": raw["requests"],
        "duration_s": duration,
        "rps": raw["requests"] / duration if duration else 0.0,
        "latency_ms": raw["latency_ms"],
        "statuses": statuses,
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "socket_errors": sum(errors[k] for k in ("connect", "read", "write", "timeout")),
        "errors": errors,
        "client_cpu": wrk_cpu_s / duration if duration else 0.0,
    }
    if raw.get("extra"):  # what a script built on post.lua adds (bench/overload.lua)
        summary["extra"] = raw["extra"]
    return summary


def measure(
    server: Server,
    path: str,
    bodies: str,
    concurrency: int,
    duration_s: float,
    cpu: str | None,
    script: Path = LUA,
    script_args: Sequence[str] = (),
) -> dict[str, Any]:
    """wrk against `server`, plus the server's CPU use and (for batchserve) its batch sizes."""
    scrape = server.spec.name == "batchserve"
    metrics_before = batch_metrics(server) if scrape else {}
    cpu_before, busy_before = server.cpu_seconds(), busy_cpu_seconds()
    url = server.base_url + path
    result = run_wrk(url, bodies, concurrency, duration_s, cpu, script, script_args)
    seconds = result["duration_s"]
    result["server_cpu"] = (server.cpu_seconds() - cpu_before) / seconds
    # CPU used by anything but the server and wrk: other work on the machine skews the numbers.
    others = (busy_cpu_seconds() - busy_before) / seconds - result["server_cpu"]
    result["other_cpu"] = max(0.0, others - result["client_cpu"])
    if scrape:
        result["batches"] = _batch_delta(metrics_before, batch_metrics(server))
    return result


def busy_cpu_seconds() -> float:
    """Non-idle CPU time of the whole machine, all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


_SAMPLE = re.compile(
    r'^(batchserve_(?:batch_size|compute_duration_seconds)_(?:sum|count))\{model="([^"]+)"'
)


def batch_metrics(server: Server) -> dict[tuple[str, str], float]:
    """{(metric, model): value} for the batch-size and compute-time histograms' sum and count."""
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            values[(match.group(1), match.group(2))] = float(line.rsplit(" ", 1)[1])
    return values


def _batch_delta(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, dict[str, float]]:
    """Per model: forward passes, mean items per pass and mean compute ms during the run."""
    out = {}
    for model in {m for _, m in after}:

        def delta(metric: str, model: str = model) -> float:
            return after.get((metric, model), 0.0) - before.get((metric, model), 0.0)

        passes = delta("batchserve_batch_size_count")
        if passes:
            out[model] = {
                "passes": passes,
                "mean_batch": delta("batchserve_batch_size_sum") / passes,
                "mean_compute_ms": delta("batchserve_compute_duration_seconds_sum") / passes * 1e3,
            }
    return out
