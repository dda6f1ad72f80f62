"""The markdown report of a benchmark run (bench/RESULTS.md) from its results dictionary."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HOW_TO_READ = """\
How to read it: each server ran alone on CPU {server_cpu} and wrk on CPU {client_cpu}. `req/s` is
completed requests per second (one item each); `p50`/`p99` are wrk's latency percentiles;
`non-2xx` must be 0 and `errors` (socket errors and timeouts) should be 0 for a row to count.
`CPU` is the server's CPU time over the run (1.00 = the whole core); `other` is CPU time used by
anything else on the machine (wrk excluded): well above 0 means other work competed and the row
is not to be trusted. `x baseline` divides the row's req/s by the baseline's at the same
concurrency. `batch` is batchserve's mean items per
forward pass during the run (from its /metrics)."""


def render(results: dict[str, Any]) -> str:
    out = ["# batchserve benchmark", ""]
    out += _machine(results)
    out += _settings(results)
    out += _answers(results)
    for endpoint in results["settings"]["endpoints"]:
        out += _endpoint_table(results, endpoint)
    out += _model_only(results)
    out += _targets(results)
    return "\n".join(out) + "\n"


def _machine(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    rows = [
        ("date (UTC)", m["date"]),
        ("git commit", m["git_commit"]),
        ("CPU", f"{m['cpu_model']}, {m['cpus']} logical CPUs"),
        ("load average at start", m["load_average_at_start"]),
        ("python", m["python"]),
        *((name, version) for name, version in m["packages"].items()),
        ("wrk", m["wrk"]),
    ]
    return ["## Machine", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _settings(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    out = ["## Settings", ""]
    out.append(
        f"- {s['duration_s']:g} s per measurement after {s['warmup_s']:g} s of warm-up per "
        f"server and endpoint; concurrency {', '.join(map(str, s['concurrency']))} "
        "(`wrk -t1 -cC --latency`, keep-alive connections)."
    )
    out.append(f"- Pinning: {s['pinning']}.")
    out.append(f"- Model repository: `{s['repository']}`.")
    for name, info in s["checkpoints"].items():
        metrics = info["metrics"] or "no evaluation metrics in config.json (untrained?)"
        out.append(f"  - `{name}` version {info['version']}: {metrics}; sha256 {info['sha256']}")
    for endpoint, info in s["bodies"].items():
        out.append(f"- `{endpoint}` bodies: {info['note']}, one item per request, rotated.")
    for server in s["servers"]:
        out.append(f"- **{server['name']}**: {server['description']}.")
    if s["batchserve_env"]:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(s["batchserve_env"].items()))
        out.append(f"- batchserve settings: {shown}.")
    return [*out, "", _HOW_TO_READ.format(**s), ""]


def _answers(results: dict[str, Any]) -> list[str]:
    out = ["## Same answers", ""]
    for server, checks in results["answers"].items():
        for endpoint, check in checks.items():
            out.append(f"- {server} `{endpoint}`: {check}")
    return [*out, ""]


def _endpoint_table(results: dict[str, Any], endpoint: str) -> list[str]:
    rows = [r for r in results["runs"] if r["endpoint"] == endpoint]
    if not rows:
        return []
    baseline = {_key(r): r["rps"] for r in rows if r["server"] == "baseline"}
    model = rows[0]["model"]
    out = [f"## `{endpoint}` on `{model}` (`POST {rows[0]['path']}`)", ""]
    out.append("| server | concurrency | req/s | p50 ms | p99 ms | non-2xx | errors | CPU | other "
               "| x baseline | batch |")  # fmt: skip
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = baseline.get(_key(r))
        ratio = f"{r['rps'] / base:.2f}" if base else "-"
        batch = r.get("batches", {}).get(model, {}).get("mean_batch")
        out.append(
            f"| {r['server']} | {_concurrency(r)} | {r['rps']:,.0f} "
            f"| {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {r['non_2xx']} "
            f"| {r['socket_errors']} | {r['server_cpu']:.2f} | {r['other_cpu']:.2f} | {ratio} "
            f"| {'-' if batch is None else f'{batch:.1f}'} |"
        )
    return [*out, ""]


def _key(row: dict[str, Any]) -> tuple[int, int]:
    return row["concurrency"], row.get("round", 1)


def _concurrency(row: dict[str, Any]) -> str:
    rounds = row.get("round", 1)
    return (
        f"{row['concurrency']} (#{rounds})" if row["concurrency"] == 1 else str(row["concurrency"])
    )


def _row(
    results: dict[str, Any], server: str, endpoint: str, concurrency: int, round_: int = 1
) -> dict[str, Any] | None:
    for r in results["runs"]:
        if (r["server"], r["endpoint"], *_key(r)) == (server, endpoint, concurrency, round_):
            return r
    return None


def _model_us_per_item(results: dict[str, Any], endpoint: str, batch: int) -> float | None:
    for r in results.get("model_only") or []:
        if r["endpoint"] == endpoint and r["batch_size"] == batch:
            return float(r["us_per_batch"]) / batch
    return None


def _targets(results: dict[str, Any]) -> list[str]:
    """The performance targets, each from rows of this same run (missing rows: skipped)."""
    out = ["## Targets", ""]
    top = max(results["settings"]["concurrency"])
    ours, floor = (
        _row(results, "batchserve", "predict", top),
        _row(results, "raw-floor", "predict", top),
    )
    if ours and floor:
        ratio = ours["rps"] / floor["rps"]
        p99, floor_p99 = ours["latency_ms"]["p99"], floor["latency_ms"]["p99"]
        out.append(
            f"- `predict` at c={top}: {ours['rps']:,.0f} req/s = **{ratio:.2f}x** the raw-ASGI "
            f"floor's {floor['rps']:,.0f} (target 0.8x: {_met(ratio >= 0.8)}); p99 {p99:.1f} "
            f"ms against the floor's {floor_p99:.1f} ms ({_met(p99 <= floor_p99)})."
        )
    for endpoint in results["settings"]["endpoints"]:
        ours = _row(results, "batchserve", endpoint, top)
        floors = [(n, _row(results, n, endpoint, top)) for n in ("fastapi-floor", "raw-floor")]
        shown = [
            f"{ours['rps'] / row['rps']:.2f}x the {name}'s {row['rps']:,.0f}"
            for name, row in floors
            if ours and row
        ]
        if ours and shown:
            out.append(
                f"- `{endpoint}` at c={top}: batchserve {ours['rps']:,.0f} req/s = "
                + "; ".join(shown)
                + " (FastAPI route validating from the bytes; bare ASGI app)."
            )
    out += _one_core_bound(results, top)
    for endpoint in results["settings"]["endpoints"]:
        rounds = sorted({r.get("round", 1) for r in results["runs"] if r["concurrency"] == 1})
        pairs = [
            (_row(results, "batchserve", endpoint, 1, n), _row(results, "baseline", endpoint, 1, n))
            for n in rounds
        ]
        shown = [
            f"{a['latency_ms']['p50']:.2f} vs {b['latency_ms']['p50']:.2f}"
            for a, b in pairs
            if a and b
        ]
        if shown:
            held = all(
                a["latency_ms"]["p50"] <= b["latency_ms"]["p50"] for a, b in pairs if a and b
            )
            out.append(
                f"- `{endpoint}` at c=1, p50 ms, batchserve vs the plain route, {len(shown)} "
                f"rounds in a row: {'; '.join(shown)} (target: at or below in every round: "
                f"{_met(held)})."
            )
    return [*out, ""] if len(out) > 2 else []


def _one_core_bound(results: dict[str, Any], top: int) -> list[str]:
    """score: 1 / (the raw floor's CPU per request + the model's time per item at the batch
    size batchserve reached), both measured in this run."""
    ours, floor = (
        _row(results, "batchserve", "score", top),
        _row(results, "raw-floor", "score", top),
    )
    if not (ours and floor):
        return []
    batch = ours.get("batches", {}).get(ours["model"], {}).get("mean_batch")
    model_us = _model_us_per_item(results, "score", max(1, round(batch))) if batch else None
    if model_us is None:
        return []
    floor_us = floor["server_cpu"] / floor["rps"] * 1e6
    bound = 1e6 / (floor_us + model_us)
    ratio = ours["rps"] / bound
    return [
        f"- `score` at c={top}: one-core bound 1 / ({floor_us:.1f} us raw-floor CPU per request "
        f"+ {model_us:.1f} us model time per item at batch {round(batch)}) = {bound:,.0f} req/s; "
        f"batchserve {ours['rps']:,.0f} req/s = **{ratio:.2f}x** (target 0.75x: "
        f"{_met(ratio >= 0.75)})."
    ]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _model_only(results: dict[str, Any]) -> list[str]:
    rows = results.get("model_only") or []
    if not rows:
        return []
    out = ["## Model only (the compute ceiling)", ""]
    out.append("A pure torch loop in one process pinned to one CPU, `torch.set_num_threads(1)`,")
    out.append("`inference_mode`, the same checkpoints and inputs; no HTTP, no parsing.")
    out += ["", "| model | batch | items/s | us per forward |", "|---|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['batch_size']} | {r['items_per_s']:,.0f} "
            f"| {r['us_per_batch']:,.1f} |"
        )
    return [*out, ""]


def write_marked_section(path: Path, text: str, start_mark: str, end_mark: str) -> None:
    """Put `text` between the two markers in `path` (appended with them when absent), leaving
    the rest of the file alone: each benchmark owns its own section of RESULTS.md."""
    block = f"{start_mark}\n{text}{end_mark}\n"
    old = path.read_text() if path.exists() else ""
    start, end = old.find(start_mark), old.find(end_mark)
    if start != -1 and end > start:
        rest = old[end + len(end_mark) :].lstrip("\n")
        new = old[:start] + block + ("\n" + rest if rest else "")
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def run_section_benchmark(
    args: Any,
    benchmark: Callable[[Any, Path], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    section: tuple[Path, str, str],
    prefix: str,
) -> int:
    """The common main of a benchmark that owns a section of RESULTS.md: needs wrk, runs in a
    temporary directory, keeps --json-out, writes its section with --write, prints it."""
    if shutil.which("wrk") is None:
        print("bench: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        results = benchmark(args, Path(tmp))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    if args.write:
        write_marked_section(section[0], text, section[1], section[2])
    print(text)
    return 0
