"""The same MLP weights served natively (PyTorch) and as ONNX (ONNX Runtime), side by side in one
batchserve process: wrk on `predict`, one MNIST digit per request, at c=1 and c=64, the two
models measured in alternating rounds so that a change in the machine's load hits both. Reports
req/s, latency, the mean batch and the compute time per forward pass, and the ONNX/native ratio
of each. Numbers to read, not to assert.

Run: `python -m bench.onnx_vs_native [--quick] [--duration 10] [--rounds 3] [--write]`
(`--write`: its own marked section of bench/RESULTS.md). Needs wrk and the `onnx` extra; the
ONNX version is exported from the shipped mnist-mlp with torch.onnx.export(dynamo=True)."""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from bench.bodies import write_bodies
from bench.load import measure
from bench.report import run_section_benchmark
from bench.servers import HOST, ROOT, ServerSpec, get_json, start, stop

NATIVE, ONNX = "mnist-mlp", "mnist-mlp-onnx"
SHIPPED = ROOT / "models" / "repository" / NATIVE
RESULTS = ROOT / "bench" / "RESULTS.md"
START = "<!-- bench.onnx_vs_native: start -->"
END = "<!-- bench.onnx_vs_native: end -->"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.onnx_vs_native", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency")
    p.add_argument("--concurrency", default="1,64", help="comma-separated wrk connections")
    p.add_argument("--threads", type=int, default=1, help="BATCHSERVE_TORCH_THREADS (both)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 s runs, one round")
    p.add_argument("--write", action="store_true", help="write its section of RESULTS.md")
    p.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 1.0, 1.0, 1
    args.levels = [int(n) for n in args.concurrency.split(",")]
    return args


def build_repository(root: Path) -> Path:
    """The shipped mnist-mlp, and the same weights exported to ONNX and imported beside it."""
    from models.checkpoint import load_checkpoint

    repository = root / "repository"
    shutil.copytree(SHIPPED, repository / NATIVE)
    module, config = load_checkpoint(SHIPPED / "1")
    path = root / "mlp.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            (torch.zeros(2, 784),),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            input_names=["input"],
            output_names=["logits"],
        )
        assert program is not None
        program.save(str(path))
    command = [sys.executable, "-m", "app", "import", "onnx", str(path), "--name", ONNX]
    command += ["--repository", str(repository), "--labels", ",".join(config.labels)]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    return repository


def spec(repository: Path, threads: int) -> ServerSpec:
    env = {
        "BATCHSERVE_MODEL_REPOSITORY": str(repository),
        "BATCHSERVE_ACCESS_LOG": "false",
        "BATCHSERVE_LOG_LEVEL": "warning",
        "BATCHSERVE_DEVICE": "cpu",
        "BATCHSERVE_TORCH_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    # Named "batchserve" so that bench.load.measure scrapes its batch metrics.
    return ServerSpec(
        "batchserve",
        "`python -m app serve`, mnist-mlp natively and as ONNX",
        ["-m", "app", "serve", "--host", HOST],
        env,
        lambda port: _both_ready(port),
    )


def _both_ready(port: int) -> bool:
    listed = get_json(f"http://{HOST}:{port}/v1/models")["models"]
    states = {m["name"]: m["state"] for m in listed}
    if "failed" in (states.get(NATIVE), states.get(ONNX)):
        raise RuntimeError(f"a model failed to load: {states}")
    return states.get(NATIVE) == "ready" and states.get(ONNX) == "ready"


def benchmark(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    repository = build_repository(tmp)
    bodies = write_bodies(tmp / "bodies")["predict"]
    server = start(spec(repository, args.threads), tmp, cpu=None)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        for level in args.levels:
            runs[str(level)] = {NATIVE: [], ONNX: []}
            for _ in range(args.rounds):
                for model in (NATIVE, ONNX):
                    path = f"/v1/models/{model}/predict"
                    measure(server, path, bodies["path"], level, args.warmup, None)
                    result = measure(server, path, bodies["path"], level, args.duration, None)
                    runs[str(level)][model].append(result)
    finally:
        stop(server)
    settings = {
        "endpoint": f"POST /v1/models/<model>/predict, one digit per request ({bodies['note']})",
        "wrk": f"-t1, {args.duration:g} s after {args.warmup:g} s warm-up, {args.rounds} "
        "alternating round(s)",
        "threads": args.threads,
        "onnxruntime": _version("onnxruntime"),
        "torch": torch.__version__,
    }
    return {"settings": settings, "runs": runs}


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _median(rows: list[dict[str, Any]], pick: Any) -> float:
    return statistics.median(pick(row) for row in rows)


def summary(rows: list[dict[str, Any]], model: str) -> dict[str, float]:
    def batch(row: dict[str, Any], key: str) -> float:
        return float(row.get("batches", {}).get(model, {}).get(key, 0.0))

    return {
        "rps": _median(rows, lambda r: r["rps"]),
        "p50": _median(rows, lambda r: r["latency_ms"]["p50"]),
        "p99": _median(rows, lambda r: r["latency_ms"]["p99"]),
        "mean_batch": _median(rows, lambda r: batch(r, "mean_batch")),
        "compute_ms": _median(rows, lambda r: batch(r, "mean_compute_ms")),
        "non_2xx": sum(r["non_2xx"] + r["socket_errors"] for r in rows),
        "other_cpu": max(r["other_cpu"] for r in rows),
    }


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "## ONNX Runtime against PyTorch: the same MLP weights (bench.onnx_vs_native)",
        "",
        f"{s['endpoint']}; wrk {s['wrk']}; {s['threads']} compute thread(s); torch "
        f"{s['torch']}, onnxruntime {s['onnxruntime']}. Medians over the rounds; ratio = "
        "ONNX / native.",
        "",
        "| c | model | req/s | p50 ms | p99 ms | mean batch | compute ms per pass | errors "
        "| other CPU busy |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level, models in results["runs"].items():
        native, onnx = summary(models[NATIVE], NATIVE), summary(models[ONNX], ONNX)
        for name, row in ((NATIVE, native), (ONNX, onnx)):
            lines.append(
                f"| {level} | {name} | {row['rps']:,.0f} | {row['p50']:.2f} | {row['p99']:.2f} "
                f"| {row['mean_batch']:.1f} | {row['compute_ms']:.3f} | {row['non_2xx']:.0f} "
                f"| {row['other_cpu']:.2f} |"
            )
        ratio = onnx["rps"] / native["rps"] if native["rps"] else float("nan")
        lines.append(f"| {level} | ratio | {ratio:.2f} | | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_section_benchmark(
        parse_args(argv), benchmark, render, (RESULTS, START, END), "batchserve-onnx-"
    )


if __name__ == "__main__":
    sys.exit(main())
