"""Benchmark batchserve against a naive FastAPI baseline and a no-model floor, with wrk.

Each server runs alone, pinned to CPU 0; wrk drives it from CPU 1 at each concurrency; then the
models run in a pure torch loop for the compute ceiling. Writes bench/RESULTS.md and
bench/results.json. `--profile` instead records batchserve under py-spy while wrk drives predict.

Run: `python -m bench.run [--quick] [--duration 10] [--concurrency 1,8,64]`; see bench/README.md."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report, servers, speedscope
from bench.bodies import write_bodies
from bench.load import measure
from bench.servers import ROOT, Server, ServerSpec, post_json

ENDPOINTS = {
    "predict": ("mnist-mlp", "/v1/models/mnist-mlp/predict"),
    "score": ("names-lm", "/v1/models/names-lm/score"),
}
SERVER_NAMES = ("batchserve", "baseline", "floor", "fastapi-floor", "raw-floor")
# Constant answers: not compared with batchserve's.
FLOORS = ("floor", "fastapi-floor", "raw-floor")
START_MARK, END_MARK = "<!-- run:start -->", "<!-- run:end -->"
PACKAGES = ("torch", "fastapi", "starlette", "pydantic", "uvicorn", "uvloop", "httptools")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--concurrency", default="1,8,64", help="comma-separated wrk -c values")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 s warm-up")
    p.add_argument("--servers", default=",".join(SERVER_NAMES), help="subset to run")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS), help="subset to run")
    p.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("BATCHSERVE_MODEL_REPOSITORY", ROOT / "models" / "repository")),
        help="model repository (default $BATCHSERVE_MODEL_REPOSITORY or models/repository)",
    )
    p.add_argument(
        "--baseline-route",
        choices=("def", "async"),
        default="async",
        help="async (default, the faster for small models) or a threadpool def route",
    )
    p.add_argument(
        "--batchserve-env", action="append", default=[], metavar="BATCHSERVE_X=V",
        help="extra setting for batchserve (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--c1-rounds", type=int, default=3, help="measurements in a row at concurrency 1"
    )
    p.add_argument("--batch-sizes", default="1,8,64", help="model-only batch sizes")
    p.add_argument("--no-model-only", action="store_true", help="skip the model-only loop")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    p.add_argument("--json-out", type=Path, help="default: results.json beside --out")
    p.add_argument("--profile", action="store_true", help="py-spy batchserve under predict load")
    p.add_argument("--profile-out", type=Path, help="default: bench/profile-ENDPOINT.json")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 1.0
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.servers = [s for s in args.servers.split(",") if s]
    args.endpoints = [e for e in args.endpoints.split(",") if e]
    unknown = set(args.servers) - set(SERVER_NAMES) | set(args.endpoints) - set(ENDPOINTS)
    if unknown:
        p.error(f"unknown server or endpoint: {sorted(unknown)}")
    args.json_out = args.json_out or args.out.with_name("results.json")
    if args.endpoints:
        args.profile_out = args.profile_out or ROOT / "bench" / f"profile-{args.endpoints[0]}.json"
    return args


def _interrupted(signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # so that `finally` stops the servers
    problem = _preflight(args)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    cpus = _pinning(args.no_pin)
    try:
        with tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp:
            if args.profile:
                return profile(args, Path(tmp), cpus)
            results = benchmark(args, Path(tmp), cpus)
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", file=sys.stderr)
        return 130
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    report.write_marked_section(args.out, report.render(results), START_MARK, END_MARK)
    print(f"\nwrote {args.out} and {args.json_out}\n")
    print(report.render(results))
    return 0


def _preflight(args: argparse.Namespace) -> str | None:
    if shutil.which("wrk") is None:
        return "wrk is not installed (apt-get install -y wrk)"
    if args.profile and shutil.which("py-spy") is None:
        return "py-spy is not installed (pip install py-spy)"
    missing = [m for m, _ in ENDPOINTS.values() if not (args.repository / m).is_dir()]
    if missing:
        return (
            f"{args.repository} has no {', '.join(missing)}; pass --repository or set "
            "BATCHSERVE_MODEL_REPOSITORY"
        )
    return None


def _pinning(disabled: bool) -> tuple[str | None, str | None]:
    """(server CPU, client CPU), or (None, None) when pinning is off or impossible."""
    available = sorted(os.sched_getaffinity(0))
    if disabled or shutil.which("taskset") is None or len(available) < 2:
        if not disabled:
            print("bench: fewer than 2 CPUs or no taskset; running unpinned", file=sys.stderr)
        return None, None
    return str(available[0]), str(available[1])


def benchmark(
    args: argparse.Namespace, tmp: Path, cpus: tuple[str | None, str | None]
) -> dict[str, Any]:
    bodies = write_bodies(tmp / "bodies")
    env = dict(kv.split("=", 1) for kv in args.batchserve_env)
    chosen = [
        s
        for s in servers.specs(args.repository, args.baseline_route, env)
        if s.name in args.servers
    ]
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": _settings(args, bodies, chosen, cpus, env),
        "answers": {},
        "runs": [],
    }
    reference: dict[str, list[Any]] = {}
    for spec in chosen:
        runs, answers = _bench_server(args, spec, tmp, bodies, cpus, reference)
        results["runs"] += runs
        results["answers"][spec.name] = answers
    if not args.no_model_only:
        sizes = {int(b) for b in args.batch_sizes.split(",")} | batches_reached(results["runs"])
        results["model_only"] = model_only(args, tmp / "bodies", cpus[0], sorted(sizes))
    return results


def batches_reached(runs: list[dict[str, Any]]) -> set[int]:
    """batchserve's mean batch size (rounded) in each run: the model-only loop measures those
    too, for the one-core bound at the batch size the server actually reached."""
    sizes = set()
    for row in runs:
        if row["server"] == "batchserve":
            mean = row.get("batches", {}).get(row["model"], {}).get("mean_batch")
            if mean:
                sizes.add(max(1, round(mean)))
    return sizes


def _bench_server(
    args: argparse.Namespace,
    spec: ServerSpec,
    tmp: Path,
    bodies: dict[str, dict[str, str]],
    cpus: tuple[str | None, str | None],
    reference: dict[str, list[Any]],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    print(f"== {spec.name}: starting", flush=True)
    server = servers.start(spec, tmp, cpus[0])
    runs, answers = [], {}
    try:
        for endpoint in args.endpoints:
            model, path = ENDPOINTS[endpoint]
            answers[endpoint] = check_answers(server, endpoint, bodies[endpoint]["path"], reference)
            print(f"   {endpoint}: answers {answers[endpoint]}", flush=True)
            body_file = bodies[endpoint]["path"]
            measure(server, path, body_file, max(args.concurrency), args.warmup, cpus[1])
            for concurrency in args.concurrency:
                for round_ in range(args.c1_rounds if concurrency == 1 else 1):
                    row = measure(server, path, body_file, concurrency, args.duration, cpus[1])
                    row.update(server=spec.name, endpoint=endpoint, model=model, path=path)
                    row["concurrency"], row["round"] = concurrency, round_ + 1
                    runs.append(row)
                    _progress(row)
    finally:
        servers.stop(server)
    return runs, answers


def _progress(row: dict[str, Any]) -> None:
    latency = row["latency_ms"]
    print(
        f"   {row['endpoint']:8} c={row['concurrency']:<4} {row['rps']:9,.0f} req/s  "
        f"p50 {latency['p50']:7.2f} ms  p99 {latency['p99']:7.2f} ms  "
        f"non-2xx {row['non_2xx']}  errors {row['socket_errors']}  cpu {row['server_cpu']:.2f}  "
        f"other {row['other_cpu']:.2f}",
        flush=True,
    )


def check_answers(
    server: Server, endpoint: str, body_file: str, reference: dict[str, list[Any]], count: int = 4
) -> str:
    """POST the first bodies; batchserve's answers are the reference the baseline must match."""
    path = ENDPOINTS[endpoint][1]
    lines = Path(body_file).read_text().splitlines()[:count]
    answers = []
    for line in lines:
        status, answer = post_json(server.base_url + path, line.encode())
        if status != 200:
            raise RuntimeError(f"{server.spec.name} answered {status} to {path}: {answer}")
        answers.append(answer)
    if server.spec.name in FLOORS:
        return f"{len(answers)} requests answered 200 (constant answers)"
    if server.spec.name == "batchserve" or endpoint not in reference:
        reference[endpoint] = answers
        return f"{len(answers)} requests answered 200 (the reference)"
    mismatches = [
        i
        for i, (a, b) in enumerate(zip(answers, reference[endpoint], strict=True))
        if not _same(a, b)
    ]
    if mismatches:
        return f"DIFFERENT from batchserve's on bodies {mismatches}: {answers[mismatches[0]]}"
    return f"{len(answers)} requests answered 200, same as batchserve's"


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if "predictions" in a:
        pa, pb = a["predictions"][0], b["predictions"][0]
        return pa["label"] == pb["label"] and abs(pa["probability"] - pb["probability"]) < 1e-4
    sa, sb = a["scores"][0], b["scores"][0]
    return sa["num_tokens"] == sb["num_tokens"] and abs(sa["log_prob"] - sb["log_prob"]) < 1e-3


def model_only(
    args: argparse.Namespace, bodies_dir: Path, cpu: str | None, batch_sizes: list[int]
) -> list[dict[str, Any]]:
    print("== model only", flush=True)
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    seconds = "1" if args.quick else "3"
    command = [
        *pin,
        sys.executable,
        "-m",
        "bench.model_only",
        str(args.repository),
        str(bodies_dir),
    ]
    command += ["--batch-sizes", ",".join(map(str, batch_sizes)), "--seconds", seconds]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    for r in rows:
        print(f"   {r['model']:10} batch {r['batch_size']:<4} {r['items_per_s']:12,.0f} items/s")
    return rows


def machine() -> dict[str, Any]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "git_commit": _git_commit(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "packages": {name: _version(name) for name in PACKAGES},
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?",
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    def git(*a: str) -> str:
        done = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "app", "models")
    return commit + (" (app/ or models/ modified)" if dirty else "")


def _settings(
    args: argparse.Namespace,
    bodies: dict[str, dict[str, str]],
    chosen: list[ServerSpec],
    cpus: tuple[str | None, str | None],
    env: dict[str, str],
) -> dict[str, Any]:
    pinning = f"servers on CPU {cpus[0]}, wrk on CPU {cpus[1]} (taskset)" if cpus[0] else "none"
    return {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "endpoints": args.endpoints,
        "repository": str(args.repository),
        "checkpoints": _checkpoints(args.repository),
        "bodies": {e: {"note": b["note"]} for e, b in bodies.items() if e in args.endpoints},
        "servers": [{"name": s.name, "description": s.description} for s in chosen],
        "batchserve_env": env,
        "pinning": pinning,
        "server_cpu": cpus[0] or "any",
        "client_cpu": cpus[1] or "any",
    }


def _checkpoints(repository: Path) -> dict[str, Any]:
    out = {}
    for model, _ in ENDPOINTS.values():
        versions = [p for p in (repository / model).iterdir() if p.name.isdigit()]
        newest = max(versions, key=lambda p: int(p.name))
        config = json.loads((newest / "config.json").read_text())
        out[model] = {
            "version": newest.name,
            "metrics": config.get("metrics") or {},
            "sha256": (config.get("weights_sha256") or "?")[:12],
        }
    return out


def profile(args: argparse.Namespace, tmp: Path, cpus: tuple[str | None, str | None]) -> int:
    """Record batchserve with py-spy (on the client CPU) while wrk drives the first of
    --endpoints (predict by default) at the highest concurrency."""
    endpoint = args.endpoints[0]
    bodies = write_bodies(tmp / "bodies")[endpoint]["path"]
    env = dict(kv.split("=", 1) for kv in args.batchserve_env)
    spec = servers.specs(args.repository, args.baseline_route, env)[0]
    _, path = ENDPOINTS[endpoint]
    concurrency = max(args.concurrency)
    server = servers.start(spec, tmp, cpus[0])
    try:
        measure(server, path, bodies, concurrency, args.warmup, cpus[1])
        pin = ["taskset", "-c", cpus[1]] if cpus[1] else []
        seconds = max(1, round(args.duration))
        command = [*pin, "py-spy", "record", "--pid", str(server.process.pid), "--nonblocking"]
        command += ["--rate", "250", "--duration", str(seconds), "--format", "speedscope"]
        spy = subprocess.Popen(
            [*command, "-o", str(args.profile_out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)  # let py-spy attach before the load starts
        try:
            row = measure(server, path, bodies, concurrency, seconds + 1, cpus[1])
        finally:
            _, spy_err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            print(f"bench: py-spy failed: {spy_err.strip()}", file=sys.stderr)
            return 1
        row.update(server="batchserve", endpoint=endpoint, concurrency=concurrency)
        _progress(row)
    finally:
        servers.stop(server)
    summary = speedscope.summarise(json.loads(args.profile_out.read_text()))
    text = _profile_section(args, row, summary)
    start, end = (f"<!-- profile-{endpoint}:{edge} -->" for edge in ("start", "end"))
    report.write_marked_section(args.out, text, start, end)
    print(f"\nwrote {args.profile_out} (open it in https://www.speedscope.app) and {args.out}\n")
    print(text)
    return 0


def _profile_section(args: argparse.Namespace, row: dict[str, Any], summary: dict[str, Any]) -> str:
    m = machine()
    endpoint, concurrency = row["endpoint"], row["concurrency"]
    cpu_us = row["server_cpu"] / row["rps"] * 1e6 if row["rps"] else 0.0
    return "\n".join(
        [
            f"## Where a request's time goes: py-spy, `{endpoint}` at c={concurrency}",
            "",
            f"`python -m bench.run --profile --endpoints {endpoint}` on {m['date']} UTC, commit "
            f"{m['git_commit']}, {m['cpu_model']}: py-spy samples batchserve at 250 Hz for "
            f"{round(args.duration)} s while wrk drives it ({row['rps']:,.0f} req/s under the "
            f"profiler, {cpu_us:.0f} us of server CPU per request). Shares are of all samples of "
            f"non-idle threads; `{args.profile_out.name}` holds the whole profile (speedscope).",
            "",
            "```",
            speedscope.render(summary, top=15),
            "```",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
