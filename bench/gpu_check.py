"""bench/gpu_check.sh's driver: one pass over batchserve on a CUDA machine, each stage time-boxed,
one table out. Where torch sees no CUDA device it runs the same stages on the CPU and says so.

Stages, in order (a stage that fails is a FAILED row and the run goes on): the machine; the
model-only ceiling (bench/model_only.py) at batch 1..8192; end to end, wrk (or, without a working
wrk, bench/pyload.py) at c=64 and c=256 on predict (mnist-mlp) and score (names-lm) against
`python -m app serve` with pinned memory, without it, and with N worker processes, plus names-lm's
per-token log-probabilities on that device against a CPU server's; the test suite with device
auto; last, if time is left, torch.compile. Writes gpu_check.md and gpu_check.json to --out.

Run: `bench/gpu_check.sh [--quick] [...]` (it installs carried wheels first), or
`python -m bench.gpu_check --help`; see bench/README.md."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from bench import pyload, servers
from bench.bodies import SURNAMES, write_bodies
from bench.load import batch_metrics, run_wrk
from bench.servers import ROOT, Server, ServerSpec

STATUSES = ("ok", "FAILED", "skipped", "unsupported")
ENDPOINTS = {
    "predict": ("mnist-mlp", "/v1/models/mnist-mlp/predict"),
    "score": ("names-lm", "/v1/models/names-lm/score"),
}
AGREEMENT_LIMIT = 1e-4  # nats per token: CUDA against CPU, TF32 off (the default)
SUITE_MARKERS = "not slow and not browser and not network"
CUDA_BATCH_SIZES = "1,8,64,256,1024,4096,8192"
LOCAL_PACKAGES = {"app", "models", "tests", "bench"}


@dataclass
class Row:
    stage: str  # machine, model, agreement, e2e, suite
    case: str
    device: str
    status: str  # one of STATUSES
    value: float | None = None
    unit: str = ""
    notes: str = ""


@dataclass
class Plan:
    """What this machine allows: the device, who runs on which CPUs, and the load generator."""

    device: str
    fallback: str | None  # why the check runs on the CPU, or None on CUDA
    server_cpus: list[int]
    client_cpus: list[int]
    load: str  # "wrk" or "python"
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """One end-to-end server: its name in the table, settings, and worker processes."""

    name: str
    env: dict[str, str]
    workers: int = 1
    start_s: float = 90.0


class Budget:
    """The run's remaining seconds: each stage takes at most its cap and what is left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def cap(self, seconds: float) -> float:
        return min(seconds, self.left())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: 1 s rows, no compile")
    p.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench/gpu-check")
    )
    p.add_argument("--budget-s", type=float, default=270.0, help="whole run, all stages")
    p.add_argument("--stages", default="model,e2e,suite,compile", help="subset to run")
    p.add_argument("--batch-sizes", help=f"model-only (CUDA: {CUDA_BATCH_SIZES}; CPU: 1,8,64)")
    p.add_argument("--concurrency", default="64,256", help="end-to-end connections")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per end-to-end row")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each endpoint")
    p.add_argument("--workers", type=int, help="worker processes (default: 4; 2 on the CPU)")
    p.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--suite-path", type=Path, default=ROOT / "tests", help="what pytest runs")
    p.add_argument("--suite-jobs", type=int, help="pytest-xdist -n (default: CPUs/2 up to 8)")
    p.add_argument("--bodies", type=Path, help="request bodies (default: .gpu/bodies, else made)")
    p.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.0, 1.0
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = set(args.stages) - {"model", "e2e", "suite", "compile"}
    if unknown:
        p.error(f"unknown stages: {sorted(unknown)}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


# --------------------------------------------------------------------------- the machine


def plan_for(args: argparse.Namespace) -> Plan:
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise SystemExit("gpu_check: --device cuda, but torch sees no CUDA device")
    device = "cuda" if args.device != "cpu" and cuda else "cpu"
    fallback = None
    if device == "cpu":
        fallback = (
            "--device cpu"
            if args.device == "cpu"
            else (f"torch {torch.__version__} sees no CUDA device")
        )
    server_cpus, client_cpus = split_cpus(sorted(os.sched_getaffinity(0)))
    load = args.load if args.load != "auto" else ("wrk" if wrk_runs() else "python")
    return Plan(device, fallback, server_cpus, client_cpus, load)


def split_cpus(cpus: list[int]) -> tuple[list[int], list[int]]:
    """The servers get the first half of the CPUs, the load generator the rest; with one CPU
    (or no taskset) neither is pinned."""
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return [], []
    half = max(1, len(cpus) // 2)
    return cpus[:half], cpus[half:]


def wrk_runs() -> bool:
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return (done.stdout + done.stderr).startswith("wrk ")  # `wrk -v` exits 1 after printing


def machine_row(plan: Plan) -> Row:
    if plan.device == "cuda":
        name = torch.cuda.get_device_name(0)
        gpu = f"{name}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
    else:
        gpu = f"none: fell back to the CPU ({plan.fallback})"
    notes = [
        f"GPU: {gpu}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"Python {sys.version.split()[0]}",
        f"{os.cpu_count()} CPUs: servers on {_cpu_text(plan.server_cpus)}, "
        f"load on {_cpu_text(plan.client_cpus)}",
        f"load generator: {_load_text(plan)}",
        f"C++ compiler: {shutil.which(os.environ.get('CXX', 'g++')) or 'none'}",
        f"curl (the README's tests): {shutil.which('curl') or 'none'}",
    ]
    return Row("machine", "this run", plan.device, "ok", notes="; ".join(notes))


def _cpu_text(cpus: list[int]) -> str:
    return ",".join(map(str, cpus)) if cpus else "any CPU (unpinned)"


def _load_text(plan: Plan) -> str:
    threads = max(1, len(plan.client_cpus))
    if plan.load == "wrk":
        return f"wrk -t{threads}"
    return f"bench/pyload.py, {threads} processes (no working wrk: slower per request than wrk)"


def _cpu_arg(cpus: list[int]) -> str | None:
    """taskset's CPU list, or None for no pinning."""
    return ",".join(map(str, cpus)) or None


def _taskset(cpus: list[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


# --------------------------------------------------------------------------- model only


def model_rows(args: argparse.Namespace, plan: Plan, bodies: Path, budget: Budget) -> list[Row]:
    sizes = args.batch_sizes or (CUDA_BATCH_SIZES if plan.device == "cuda" else "1,8,64")
    seconds = "0.2" if args.quick else "0.5"
    command = [*_taskset(plan.server_cpus), sys.executable, "-m", "bench.model_only"]
    command += [str(args.repository), str(bodies), "--device", plan.device]
    command += ["--batch-sizes", sizes, "--seconds", seconds]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cap = budget.cap(90.0)
    code, out, err = run_bounded(command, cap, env)
    if code != 0:
        why = f"timed out after {cap:.0f} s" if code is None else f"exit {code}"
        return [Row("model", f"batch {sizes}", plan.device, "FAILED", notes=f"{why}: {_last(err)}")]
    measured: list[dict[str, Any]] = json.loads(out)
    plan.raw["model_only"] = measured
    return [
        Row(
            "model",
            f"{m['model']} batch {m['batch_size']}",
            plan.device,
            "ok",
            m["items_per_s"],
            "items/s",
            f"{m['us_per_batch']:,.0f} us per batch",
        )
        for m in measured
    ]


def run_bounded(
    command: list[str], timeout_s: float, env: dict[str, str] | None = None
) -> tuple[int | None, str, str]:
    """(exit status, or None when it ran past `timeout_s` and was stopped; stdout; stderr). The
    command gets a process group of its own, so whatever it started is stopped with it."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=max(1.0, timeout_s))
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        _stop_group(process)
        out, err = process.communicate()
        return None, out, err
    except BaseException:
        _stop_group(process)
        raise


def _stop_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


# --------------------------------------------------------------------------- end to end


def configs(args: argparse.Namespace, plan: Plan) -> list[Config]:
    workers = args.workers or (4 if plan.device == "cuda" else 2)
    return [
        Config("pinned", {"BATCHSERVE_PIN_MEMORY": "true"}),
        Config("not pinned", {"BATCHSERVE_PIN_MEMORY": "false"}),
        Config(f"{workers} workers", {}, workers),
    ]


COMPILE = Config("compile", {"BATCHSERVE_COMPILE": "true"}, start_s=180.0)


def server_spec(
    plan: Plan, config: Config, repository: Path, device: str | None = None
) -> ServerSpec:
    env = {
        "BATCHSERVE_DEVICE": device or plan.device,
        "BATCHSERVE_MAX_CONNECTIONS": "4096",
        **config.env,
    }
    spec = servers.specs(repository, "async", env)[0]
    args = [*spec.args, *(["--workers", str(config.workers)] if config.workers > 1 else [])]
    return dataclasses.replace(spec, args=args, description=config.name)


def e2e_rows(
    args: argparse.Namespace,
    plan: Plan,
    config: Config,
    bodies: Path,
    log_dir: Path,
    budget: Budget,
    check_agreement: bool = False,
) -> list[Row]:
    cases = [f"{config.name}: {e} c={c}" for e in ENDPOINTS for c in args.concurrency]
    spec = server_spec(plan, config, args.repository)
    # The start may take what the rows and a margin leave: a slow start fails on its own,
    # rather than the whole run being cut short.
    rows_s = len(ENDPOINTS) * (args.warmup + len(args.concurrency) * args.duration) + 10
    start_s = budget.cap(config.start_s) - rows_s
    if start_s < 10:
        return [Row("e2e", c, plan.device, "skipped", notes="out of time") for c in cases]
    try:
        server = servers.start(spec, log_dir, _cpu_arg(plan.server_cpus), start_s)
    except RuntimeError as exc:
        return _refused(plan, config, cases, str(exc))
    rows = []
    try:
        if check_agreement:
            rows.append(agreement_row(args, plan, server, log_dir))
        for endpoint in ENDPOINTS:
            rows += endpoint_rows(args, plan, server, config, endpoint, bodies)
    finally:
        servers.stop(server)
        _keep_log(server.log_path, args.out, config.name)
    return rows


def endpoint_rows(
    args: argparse.Namespace,
    plan: Plan,
    server: Server,
    config: Config,
    endpoint: str,
    bodies: Path,
) -> list[Row]:
    """A warm-up, then one row per concurrency; a load run that breaks is that row's FAILED."""
    model, path = ENDPOINTS[endpoint]
    body_file = str(bodies / f"{endpoint}.jsonl")
    rows = []
    for concurrency in [None, *args.concurrency]:
        case = f"{config.name}: {endpoint} " + (f"c={concurrency}" if concurrency else "warm-up")
        try:
            if concurrency is None:
                drive(plan, server.base_url + path, body_file, max(args.concurrency), args.warmup)
            else:
                rows.append(measure(plan, server, case, model, path, body_file, concurrency, args))
        except (OSError, RuntimeError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            rows.append(Row("e2e", case, plan.device, "FAILED", notes=_last(str(exc))))
    return rows


def _refused(plan: Plan, config: Config, cases: list[str], message: str) -> list[Row]:
    """Rows for a server that did not start: 'unsupported' when it refused --workers (a
    server without worker processes), else FAILED with the log's last line."""
    lines = message.splitlines()
    if config.workers > 1 and "--workers" in message:
        said = next((line for line in lines if "--workers" in line), lines[-1])
        return [Row("e2e", c, plan.device, "unsupported", notes=said.strip()) for c in cases]
    return [Row("e2e", c, plan.device, "FAILED", notes=_last(message)) for c in cases]


def drive(plan: Plan, url: str, body_file: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """One load run with the plan's generator on the client CPUs."""
    threads = max(1, len(plan.client_cpus))
    if plan.load == "wrk":
        return run_wrk(
            url, body_file, concurrency, seconds, _cpu_arg(plan.client_cpus), threads=threads
        )
    return pyload.run(url, body_file, concurrency, seconds, plan.client_cpus or None, threads)


def measure(
    plan: Plan,
    server: Server,
    case: str,
    model: str,
    path: str,
    body_file: str,
    concurrency: int,
    args: argparse.Namespace,
) -> Row:
    metrics_before = _metrics(server)
    cpu_before = group_cpu_seconds(server.process.pid)
    result = drive(plan, server.base_url + path, body_file, concurrency, args.duration)
    seconds = result["duration_s"] or 1.0
    server_cpu = (group_cpu_seconds(server.process.pid) - cpu_before) / seconds
    batch = _mean_batch(metrics_before, _metrics(server), model)
    plan.raw.setdefault("e2e", []).append({"case": case, "server_cpu": server_cpu, **result})
    latency = result["latency_ms"]
    notes = f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms; mean batch {batch}; "
    notes += f"server CPU {server_cpu:.2f}"
    bad = result["non_2xx"] or result["socket_errors"] or not result["requests"]
    if bad:
        notes += f"; non-2xx {result['non_2xx']}, socket errors {result['socket_errors']}"
    status = "FAILED" if bad else "ok"
    return Row("e2e", case, plan.device, status, result["rps"], "req/s", notes)


def _metrics(server: Server) -> dict[tuple[str, str], float]:
    try:
        return batch_metrics(server)
    except (OSError, ValueError):
        return {}


def _mean_batch(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], model: str
) -> str:
    def delta(metric: str) -> float:
        key = (metric, model)
        return after.get(key, 0.0) - before.get(key, 0.0)

    passes = delta("batchserve_batch_size_count")
    return f"{delta('batchserve_batch_size_sum') / passes:.1f}" if passes > 0 else "n/a"


def group_cpu_seconds(group: int) -> float:
    """User + system CPU time of every live process in the process group (the server and its
    workers), from /proc."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _keep_log(log_path: Path, out_dir: Path, name: str) -> None:
    with contextlib.suppress(OSError), (out_dir / "servers.log").open("a") as out:
        out.write(f"===== {name} ({log_path.name})\n{log_path.read_text(errors='replace')}\n")


# --------------------------------------------------------------------------- agreement


def agreement_row(args: argparse.Namespace, plan: Plan, server: Server, log_dir: Path) -> Row:
    """names-lm's per-token log-probabilities of the surnames from `server` (on the plan's
    device) against a CPU server's: the largest absolute difference."""
    names = list(dict.fromkeys(SURNAMES))
    case = f"names-lm per-token log-probs, {plan.device} vs cpu, {len(names)} surnames"
    spec = server_spec(plan, Config("cpu reference", {}), args.repository, device="cpu")
    spec = dataclasses.replace(spec, name="reference")
    try:
        here = token_log_probs(server.base_url, names)
        reference_server = servers.start(spec, log_dir, _cpu_arg(plan.server_cpus))
        try:
            reference = token_log_probs(reference_server.base_url, names)
        finally:
            servers.stop(reference_server)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        return Row("agreement", case, plan.device, "FAILED", notes=_last(str(exc)))
    if [t for t, _ in here] != [t for t, _ in reference]:
        return Row("agreement", case, plan.device, "FAILED", notes="the tokens differ")
    diff = max(abs(a - b) for (_, a), (_, b) in zip(here, reference, strict=True))
    status = "ok" if diff <= AGREEMENT_LIMIT else "FAILED"
    notes = f"limit {AGREEMENT_LIMIT:g}; {len(here)} tokens"
    if plan.device == "cpu":
        notes += "; no CUDA here: two CPU servers, a check of the check"
    return Row("agreement", case, plan.device, status, diff, "max abs diff", notes)


def token_log_probs(base_url: str, names: list[str]) -> list[tuple[str, float]]:
    """(token, log-prob) of each name's every token, in order, from one /v1 score request."""
    body = json.dumps({"inputs": names, "per_token": True}).encode()
    request = urllib.request.Request(
        base_url + ENDPOINTS["score"][1], data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        scores = json.loads(response.read())["scores"]
    return [(t["token"], float(t["log_prob"])) for s in scores for t in s["tokens"]]


# --------------------------------------------------------------------------- the suite


def suite_rows(args: argparse.Namespace, plan: Plan, budget: Budget, out_dir: Path) -> list[Row]:
    missing = uncollectable(args.suite_path)
    jobs = _suite_jobs(args)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "-m", SUITE_MARKERS]
    command += [arg for path in missing for arg in ("--ignore", str(path))]
    command += ["-n", str(jobs)] if jobs else []
    command.append(str(args.suite_path))
    # Device auto (no BATCHSERVE_* from outside); not CI, whose tests insist on CI's own tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSERVE_") and k != "CI"}
    cap = budget.cap(180.0)
    started = time.monotonic()
    code, out, err = run_bounded(command, cap, env)
    (out_dir / "suite.log").write_text(out + err)
    rows = [_suite_row(plan, code, out, cap, jobs, time.monotonic() - started)]
    if missing:
        listed = "; ".join(f"{p.name} (no {', '.join(m)})" for p, m in missing.items())
        rows.append(
            Row(
                "suite",
                "not collected",
                plan.device,
                "skipped",
                len(missing),
                "files",
                f"their imports are not installed here: {listed}",
            )
        )
    return rows


def _suite_jobs(args: argparse.Namespace) -> int:
    if args.suite_jobs is not None:
        return args.suite_jobs
    if importlib.util.find_spec("xdist") is None:
        return 0
    cpus = len(os.sched_getaffinity(0))
    return min(8, cpus // 2) if cpus >= 8 else 0


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b")


def _suite_row(
    plan: Plan, code: int | None, out: str, cap: float, jobs: int, seconds: float
) -> Row:
    summary = next((line for line in reversed(out.splitlines()) if _COUNT.search(line)), "")
    counts = {
        kind.rstrip("s") if kind.startswith("error") else kind: int(n)
        for n, kind in _COUNT.findall(summary)
    }
    failing = [
        line.split(" - ")[0] for line in out.splitlines() if line.startswith(("FAILED ", "ERROR "))
    ]
    device = "auto (cuda)" if plan.device == "cuda" else "auto (cpu)"
    kinds = ("failed", "error", "skipped", "deselected")
    notes = ", ".join(f"{counts.get(k, 0)} {k}" for k in kinds)
    notes += f"; -m '{SUITE_MARKERS}'" + (f" -n {jobs}" if jobs else "") + f"; {seconds:.0f} s"
    if failing:
        notes += "; " + "; ".join(failing[:8]) + (" ..." if len(failing) > 8 else "")
    if code is None:
        notes = f"timed out after {cap:.0f} s; " + notes
    ok = code == 0 and counts.get("passed", 0) > 0
    return Row(
        "suite",
        "pytest",
        device,
        "ok" if ok else "FAILED",
        counts.get("passed", 0),
        "passed",
        notes,
    )


def uncollectable(suite: Path) -> dict[Path, list[str]]:
    """Test modules whose top-level imports are not installed here (a carried wheel left
    behind), with the missing names: the suite runs without them and the table says so."""
    files = [suite] if suite.is_file() else sorted(suite.rglob("test_*.py"))
    missing = {}
    for path in files:
        absent = [name for name in _imported_roots(path) if not _importable(name)]
        if absent:
            missing[path] = absent
    return missing


def _imported_roots(path: Path) -> list[str]:
    roots = []
    for node in ast.parse(path.read_text()).body:  # module level only: guarded imports stay
        if isinstance(node, ast.Import):
            roots += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.append(node.module.split(".")[0])
    return sorted(set(roots) - LOCAL_PACKAGES - set(sys.stdlib_module_names))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------- the run


def run_stages(
    args: argparse.Namespace, plan: Plan, bodies: Path, tmp: Path, rows: list[Row]
) -> None:
    """Append each stage's rows to `rows` as it finishes (so an interrupted run keeps them)."""
    budget = Budget(args.budget_s)
    stages: list[tuple[str, Callable[[], list[Row]], float]] = []
    if "model" in args.stages:
        stages.append(("model", lambda: model_rows(args, plan, bodies, budget), 15.0))
    if "e2e" in args.stages:
        for i, config in enumerate(configs(args, plan)):
            run = _e2e(args, plan, config, bodies, tmp, budget, check_agreement=i == 0)
            stages.append((f"e2e {config.name}", run, 20.0))
    if "suite" in args.stages:
        stages.append(("suite", lambda: suite_rows(args, plan, budget, args.out), 20.0))
    if "compile" in args.stages and "e2e" in args.stages:
        quick = "--quick: a compiled server takes ~30 s to start on a CPU"
        compiled = (
            (lambda: [_skipped(plan, COMPILE, quick)])
            if args.quick
            else _e2e(args, plan, COMPILE, bodies, tmp, budget)
        )
        stages.append(("e2e compile", compiled, 0.0 if args.quick else 60.0))
    for name, stage, least_s in stages:
        print(f"== {name} ({budget.left():.0f} s left)", flush=True)
        if budget.left() < least_s:
            rows.append(
                Row(
                    name.split()[0],
                    name,
                    plan.device,
                    "skipped",
                    notes=f"out of time: {budget.left():.0f} s left",
                )
            )
            continue
        rows += _guarded(name, stage, plan)
        for row in rows[-1:]:
            print(f"   {row.status}: {row.case}", flush=True)


def _e2e(
    args: argparse.Namespace,
    plan: Plan,
    config: Config,
    bodies: Path,
    tmp: Path,
    budget: Budget,
    check_agreement: bool = False,
) -> Callable[[], list[Row]]:
    return lambda: e2e_rows(args, plan, config, bodies, tmp, budget, check_agreement)


def _skipped(plan: Plan, config: Config, why: str) -> Row:
    return Row("e2e", f"{config.name}: every row", plan.device, "skipped", notes=why)


def _guarded(name: str, stage: Callable[[], list[Row]], plan: Plan) -> list[Row]:
    """A stage's rows, or one FAILED row naming what it raised: the run goes on."""
    try:
        return stage()
    except Exception as exc:  # noqa: BLE001 - a stage's failure must not lose the other rows
        return [
            Row(
                name.split()[0],
                name,
                plan.device,
                "FAILED",
                notes=f"{type(exc).__name__}: {_last(str(exc))}",
            )
        ]


def _interrupted(signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # so that `finally` stops the servers
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "servers.log").unlink(missing_ok=True)
    started = time.monotonic()
    plan = plan_for(args)
    rows = [machine_row(plan)]
    with tempfile.TemporaryDirectory(prefix="batchserve-gpu-check-") as tmp:
        try:
            bodies, note = _bodies(args, Path(tmp))
            rows[0].notes += f"; bodies: {note}"
            run_stages(args, plan, bodies, Path(tmp), rows)
        except KeyboardInterrupt:
            rows.append(
                Row(
                    "run",
                    "interrupted",
                    plan.device,
                    "FAILED",
                    notes="stopped by a signal (out of time?); the rows above stand",
                )
            )
    write(args, plan, rows, time.monotonic() - started)
    return 1 if any(r.status == "FAILED" for r in rows) else 0


def _bodies(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    carried = ROOT / ".gpu" / "bodies"
    chosen = args.bodies or (carried if (carried / "predict.jsonl").is_file() else None)
    if chosen:
        return chosen, f"{chosen} (written by bench/gpu_wheels.sh)"
    notes = write_bodies(tmp / "bodies")
    return tmp / "bodies", "; ".join(b["note"] for b in notes.values())


def write(args: argparse.Namespace, plan: Plan, rows: list[Row], seconds: float) -> None:
    bad = [r for r in rows if r.status not in STATUSES]
    assert not bad, f"rows with an unknown status: {bad}"
    record = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "device": plan.device,
        "fallback": plan.fallback,
        "quick": args.quick,
        "elapsed_s": round(seconds, 1),
        "rows": [dataclasses.asdict(r) for r in rows],
        "raw": plan.raw,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
    text = render(record)
    (args.out / "gpu_check.md").write_text(text)
    print("\n" + text, flush=True)


def render(record: dict[str, Any]) -> str:
    where = f"FELL BACK TO THE CPU: {record['fallback']}" if record["fallback"] else "on CUDA"
    head = f"# batchserve GPU check ({record['date']} UTC, {record['elapsed_s']:.0f} s, {where}"
    head += ", --quick)" if record["quick"] else ")"
    lines = [head, "", "| stage | case | device | status | value | unit | notes |"]
    lines.append("|---|---|---|---|---:|---|---|")
    for r in record["rows"]:
        cells = [
            r["stage"],
            r["case"],
            r["device"],
            r["status"],
            _number(r["value"]),
            r["unit"],
            r["notes"],
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if value != 0 and abs(value) < 0.01:
        return f"{value:.2e}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main())
