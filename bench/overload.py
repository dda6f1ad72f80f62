"""Overload and soak: batchserve offered several times its capacity with a small queue and a
deadline on every request, while a prober checks that health answers promptly; then a long run of
mixed valid and invalid requests, watching memory and the status of every answer.

Run: `python -m bench.overload [--duration 60] [--soak-requests 100000] [--quick]
[--out bench/RESULTS.md]`; see bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/overload.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench import servers
from bench.bodies import SURNAMES, mnist_digits
from bench.load import measure, run_wrk
from bench.report import write_marked_section
from bench.run import _interrupted, _pinning, machine
from bench.servers import ROOT, Server

LUA = Path(__file__).resolve().parent / "overload.lua"
PREDICT = "/v1/models/mnist-mlp/predict"
MODELS = ("mnist-mlp", "names-rnn", "names-lm")
START_MARK, END_MARK = "<!-- overload:start -->", "<!-- overload:end -->"
PROBE_INTERVAL_S = 0.1  # health probe (and RSS sample) period
SAMPLE_INTERVAL_S = 0.05  # the python predict sampler's period during overload


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    p.add_argument("--soak-requests", type=int, default=100_000, help="requests in the soak")
    p.add_argument("--quick", action="store_true", help="smoke test: 10 s overload, 10k soak")
    p.add_argument("--connections", type=int, default=1024, help="wrk -c during the overload")
    p.add_argument("--queue-size", type=int, default=128, help="BATCHSERVE_MAX_QUEUE_SIZE")
    p.add_argument("--timeout-ms", type=int, default=500, help="X-Request-Timeout-Ms sent")
    p.add_argument("--capacity-duration", type=float, default=5.0, help="capacity run seconds")
    p.add_argument("--soak-concurrency", type=int, default=32, help="wrk -c during the soak")
    p.add_argument("--idle", type=float, default=5.0, help="idle seconds before 'after' memory")
    p.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("BATCHSERVE_MODEL_REPOSITORY", ROOT / "models" / "repository")),
        help="model repository (default $BATCHSERVE_MODEL_REPOSITORY or models/repository)",
    )
    p.add_argument(
        "--batchserve-env", action="append", default=[], metavar="BATCHSERVE_X=V",
        help="extra setting for batchserve, both phases (repeatable)",
    )  # fmt: skip
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--out", type=Path, help="also write the section into this file (markers)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.soak_requests, args.capacity_duration, args.idle = 10, 10_000, 3, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # so that `finally` stops the servers
    problem = preflight(args.repository)
    if problem:
        print(f"overload: {problem}", file=sys.stderr)
        return 2
    cpus = _pinning(args.no_pin)
    if cpus[1] is not None:  # the prober and sampler threads run beside wrk, off the server's CPU
        os.sched_setaffinity(0, {int(cpus[1])})
    results: dict[str, Any] = {"machine": machine(), "cpus": cpus}
    try:
        with tempfile.TemporaryDirectory(prefix="batchserve-overload-") as tmp:
            results["overload"] = overload(args, Path(tmp), cpus)
            results["soak"] = soak(args, Path(tmp), cpus)
    except KeyboardInterrupt:
        print("overload: interrupted; servers stopped", file=sys.stderr)
        return 130
    results["overload_summary"] = overload_summary(results["overload"], args.timeout_ms)
    results["soak_summary"] = soak_summary(results["soak"], args.soak_concurrency)
    results["checks"] = checks(results)
    text = render(args, results)
    print("\n" + text)
    if args.out:
        write_marked_section(args.out, text, START_MARK, END_MARK)
        print(f"wrote the section into {args.out}")
    for phase in ("overload", "soak"):
        if results[phase]["log_tail"]:
            print(f"overload: the {phase} server logged:\n{results[phase]['log_tail']}")
    failed = [name for name, ok in results["checks"] if not ok]
    if failed:
        print(f"overload: failed checks: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def preflight(repository: Path) -> str | None:
    if shutil.which("wrk") is None:
        return "wrk is not installed (apt-get install -y wrk)"
    missing = [m for m in MODELS if not (repository / m).is_dir()]
    if missing:
        return f"{repository} has no {', '.join(missing)}; pass --repository"
    return None


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    expected: int  # the status the request should get from an unloaded server
    method: str
    path: str
    body: str = ""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _v2(name: str, datatype: str, shape: list[int], data: list[Any]) -> str:
    return _json({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]})


def predict_calls(digits: list[list[float]]) -> list[Call]:
    return [Call(200, "POST", PREDICT, _json({"inputs": [d]})) for d in digits]


def soak_calls(digits: list[list[float]]) -> list[Call]:
    """A mix of valid requests (about 60%) and invalid ones, each with the status it must get."""
    rnn, lm = "/v1/models/names-rnn/predict", "/v1/models/names-lm/score"
    names = list(dict.fromkeys(SURNAMES))[:24]
    pairs = [{"context": n[:3], "continuation": n[3:]} for n in names[14:18]]
    valid = [
        *predict_calls(digits[:8]),
        Call(200, "POST", PREDICT, _json({"inputs": [_rows(digits[8])], "top_k": 3})),
        *(Call(200, "POST", rnn, _json({"inputs": [n], "top_k": 2})) for n in names[:8]),
        *(Call(200, "POST", lm, _json({"inputs": [n]})) for n in names[8:14]),
        Call(200, "POST", lm, _json({"inputs": ["Smith", "Jones"], "per_token": True})),
        *(Call(200, "POST", lm, _json({"pairs": [p]})) for p in pairs),
        Call(200, "POST", "/v2/models/mnist-mlp/infer", _v2("input", "FP32", [1, 784], digits[9])),
        Call(200, "POST", "/v2/models/names-rnn/infer", _v2("text", "BYTES", [2], names[18:20])),
        Call(200, "POST", "/v2/models/names-lm/infer", _v2("text", "BYTES", [1], names[20:21])),
        Call(200, "GET", "/v1/models/names-rnn"),
    ]
    invalid = [
        Call(422, "POST", PREDICT, _json({"inputs": [digits[0][:783]]})),  # wrong length
        Call(422, "POST", PREDICT, _json({"inputs": [["a"] * 784]})),
        Call(422, "POST", PREDICT, _json({"inputs": ["Smith"]})),
        Call(422, "POST", PREDICT, _json({"inputs": [digits[0]], "top_k": 0})),  # bad top_k
        Call(422, "POST", rnn, _json({"inputs": ["Smith"], "top_k": 1000})),
        Call(422, "POST", rnn, _json({"inputs": ["Sm1th"]})),  # out of the alphabet
        Call(422, "POST", rnn, _json({"inputs": ["\u6c49\u5b57"]})),
        Call(422, "POST", rnn, _json({"inputs": ["x" * 40]})),  # over max_length
        Call(422, "POST", rnn, _json({"inputs": []})),
        Call(422, "POST", rnn, "[1,2]"),
        Call(400, "POST", rnn, '{"inputs":["Smith"'),  # malformed JSON
        Call(400, "POST", PREDICT, ""),
        Call(400, "POST", "/v1/models/names-rnn/score", _json({"inputs": ["Smith"]})),
        Call(400, "POST", "/v1/models/names-lm/predict", _json({"inputs": ["Smith"]})),
        Call(404, "POST", "/v1/models/nope/predict", _json({"inputs": ["Smith"]})),
        Call(404, "POST", "/v1/models/names-rnn/versions/9/predict", _json({"inputs": ["Smi"]})),
        Call(422, "POST", lm, _json({"pairs": [{"context": "Smi"}]})),
        Call(422, "POST", lm, _json({"inputs": [5]})),
        Call(400, "POST", "/v2/models/names-rnn/infer", _v2("text", "BYTES", [2], ["Smith"])),
        Call(400, "POST", "/v2/models/mnist-mlp/infer", _v2("input", "FP32", [1, 3], [1, 2, 3])),
        Call(404, "POST", "/v2/models/nope/infer", _json({"inputs": []})),
        Call(400, "POST", "/v2/models/names-lm/infer", "{bad"),
    ]
    return valid + invalid


def _rows(digit: list[float]) -> list[list[float]]:
    return [digit[r * 28 : (r + 1) * 28] for r in range(28)]


def write_calls(path: Path, calls: list[Call]) -> str:
    """The file overload.lua rotates: EXPECTED, METHOD, PATH, BODY, tab-separated."""
    for c in calls:
        assert "\t" not in c.body and "\n" not in c.body, c
    path.write_text("".join(f"{c.expected}\t{c.method}\t{c.path}\t{c.body}\n" for c in calls))
    return str(path)


def check_calls(server: Server, calls: list[Call]) -> list[str]:
    """Send each request once; the ones that did not get their expected status."""
    wrong = []
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        for c in calls:
            headers = {"Content-Type": "application/json"}
            got = client.request(c.method, c.path, content=c.body or None, headers=headers)
            if got.status_code != c.expected:
                wrong.append(f"{c.method} {c.path} {c.body[:60]!r}: {got.status_code}")
    return wrong


# --- watching the server ------------------------------------------------------------------


def memory_mib(pid: int) -> dict[str, float]:
    """Resident set size now (VmRSS) and its peak over the process's life (VmHWM), MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss" if key == "VmRSS" else "hwm"] = int(value.split()[0]) / 1024
    return out


@dataclass
class Watch:
    """Samples taken by a background thread every `interval_s` until stopped."""

    interval_s: float
    limit_s: float  # a bound on the thread's life, whatever happens to the caller
    take: Callable[[], dict[str, Any]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopped.is_set() and time.monotonic() - started < self.limit_s:
            begun = time.monotonic()
            self.samples.append(self.take())
            self.stopped.wait(max(0.0, self.interval_s - (time.monotonic() - begun)))


@contextmanager
def watching(*watches: Watch) -> Iterator[None]:
    threads = [threading.Thread(target=w.run, daemon=True) for w in watches]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        for w in watches:
            w.stopped.set()
        for t in threads:
            t.join(timeout=15)


def health_probe(server: Server, client: httpx.Client, url: str) -> Callable[[], dict[str, Any]]:
    """GET `url` on a new connection (as a kubelet probes), and the server's RSS."""

    def take() -> dict[str, Any]:
        started = time.perf_counter()
        try:
            status, error = client.get(url).status_code, ""
        except httpx.HTTPError as exc:
            status, error = 0, type(exc).__name__
        sample: dict[str, Any] = {"ok": status == 200, "ms": (time.perf_counter() - started) * 1e3}
        if status != 200:
            sample["error"] = error or str(status)
        try:
            sample["rss"] = memory_mib(server.process.pid)["rss"]
        except OSError:  # the server has gone; the health failures say so
            pass
        return sample

    return take


def predict_sampler(
    server: Server, client: httpx.Client, body: str, timeout_ms: int
) -> Callable[[], dict[str, Any]]:
    """One real predict request with the deadline, as wrk's clients send it: status, latency."""
    headers = {"Content-Type": "application/json", "X-Request-Timeout-Ms": str(timeout_ms)}

    def take() -> dict[str, Any]:
        started = time.perf_counter()
        try:
            status = client.post(server.base_url + PREDICT, content=body, headers=headers)
            code = status.status_code
        except httpx.HTTPError:
            code = 0
        return {"status": code, "ms": (time.perf_counter() - started) * 1e3}

    return take


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def _idle_memory(server: Server, idle_s: float) -> dict[str, float]:
    """RSS after `idle_s` of no load and one scrape of /metrics."""
    time.sleep(idle_s)
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=10) as response:
        response.read()
    return memory_mib(server.process.pid)


def _start(env: dict[str, str], args: argparse.Namespace, tmp: Path, cpu: str | None) -> Server:
    spec = servers.specs(args.repository, "async", env)[0]
    server = servers.start(spec, tmp, cpu)
    deadline = time.monotonic() + 60  # bench.servers waits for mnist-mlp and names-lm only
    while time.monotonic() < deadline:
        listed = servers.get_json(server.base_url + "/v1/models")["models"]
        if all(m["state"] == "ready" for m in listed):
            return server
        time.sleep(0.2)
    servers.stop(server)
    raise RuntimeError(f"batchserve's models were not all ready after 60 s: {listed}")


def _stopped(server: Server) -> dict[str, Any]:
    """Stop with SIGTERM (bench.servers escalates to SIGKILL after 10 s): was it up, its exit
    code, and the tracebacks its log holds (each an unhandled error)."""
    alive = server.process.poll() is None
    servers.stop(server)
    log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    return {
        "alive_at_end": alive,
        "exit_code": server.process.returncode,
        "tracebacks": log.count("Traceback"),
        "log_tail": servers.log_tail(server) if "Traceback" in log else "",
    }


# --- the two phases -----------------------------------------------------------------------


def overload(args: argparse.Namespace, tmp: Path, cpus: tuple[str | None, str | None]) -> dict:
    env = {
        "BATCHSERVE_MAX_QUEUE_SIZE": str(args.queue_size),
        "BATCHSERVE_HEALTH_PORT": str(servers.free_port()),
        **_user_env(args),
    }
    digits, note = mnist_digits()
    calls = predict_calls(digits)
    bodies = write_calls(tmp / "predict.tsv", calls)
    print(f"== overload: starting batchserve ({env})", flush=True)
    server = _start(env, args, tmp, cpus[0])
    out: dict[str, Any] = {"env": env, "bodies": note}
    try:
        out["memory_started"] = memory_mib(server.process.pid)
        out["capacity"] = _capacity(server, args, bodies, cpus[1])
        out["memory_before"] = memory_mib(server.process.pid)
        health_port = int(env["BATCHSERVE_HEALTH_PORT"])
        out.update(_flood(server, args, bodies, calls[0].body, cpus[1], health_port))
        out["memory_after"] = _idle_memory(server, args.idle)
    finally:
        out.update(_stopped(server))
    return out


def _capacity(server: Server, args: argparse.Namespace, bodies: str, cpu: str | None) -> dict:
    measure(server, PREDICT, bodies, 64, 2, cpu, LUA)  # warm-up
    row = measure(server, PREDICT, bodies, 64, args.capacity_duration, cpu, LUA)
    served = row["statuses"].get(200, 0) / row["duration_s"]
    print(f"   capacity: {served:,.0f} req/s served at c=64 ({row['statuses']})", flush=True)
    return {"served_rps": served, "row": row}


def _flood(
    server: Server,
    args: argparse.Namespace,
    bodies: str,
    body: str,
    cpu: str | None,
    health_port: int,
) -> dict[str, Any]:
    limit_s = args.duration + 60
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with (
        httpx.Client(timeout=2.0, limits=no_keepalive) as probe_client,
        httpx.Client(timeout=10.0) as sample_client,
    ):
        main_url = server.base_url + "/v2/health/live"
        port_url = f"http://127.0.0.1:{health_port}/v2/health/live"
        probe = Watch(PROBE_INTERVAL_S, limit_s, health_probe(server, probe_client, main_url))
        port_probe = Watch(PROBE_INTERVAL_S, limit_s, health_probe(server, probe_client, port_url))
        sampler = Watch(
            SAMPLE_INTERVAL_S,
            limit_s,
            predict_sampler(server, sample_client, body, args.timeout_ms),
        )
        print(
            f"   overload: wrk -t1 -c{args.connections} for {args.duration:g} s, "
            f"X-Request-Timeout-Ms {args.timeout_ms}",
            flush=True,
        )
        with watching(probe, port_probe, sampler):
            row = measure(
                server, PREDICT, bodies, args.connections, args.duration, cpu,
                LUA, [str(args.timeout_ms)],
            )  # fmt: skip
    hwm = memory_mib(server.process.pid)["hwm"]
    result = {
        "wrk": row,
        "health": probe.samples,
        "health_port": port_probe.samples,
        "sampled": sampler.samples,
        "hwm_after": hwm,
    }
    print(f"   overload: {row['statuses']} errors {row['errors']}", flush=True)
    return result


def soak(args: argparse.Namespace, tmp: Path, cpus: tuple[str | None, str | None]) -> dict:
    env = _user_env(args)
    digits, _ = mnist_digits()
    calls = soak_calls(digits)
    bodies = write_calls(tmp / "soak.tsv", calls)
    chunk = max(1000, min(10_000, args.soak_requests // 10))
    print(f"== soak: {args.soak_requests:,} requests of {len(calls)} kinds, chunks of ~{chunk:,}")
    server = _start(env, args, tmp, cpus[0])
    out: dict[str, Any] = {"env": env, "kinds": len(calls), "chunk": chunk}
    try:
        out["wrong_status"] = check_calls(server, calls)
        out["runs"], out["memory"] = _soak_chunks(server, args, bodies, chunk, cpus[1])
        out["memory_after"] = _idle_memory(server, args.idle)
    finally:
        out.update(_stopped(server))
    return out


def _soak_chunks(
    server: Server, args: argparse.Namespace, bodies: str, chunk: int, cpu: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """wrk runs of about `chunk` requests each (wrk stops on time, not count: the first run, 1 s,
    gives the rate), reading RSS between them, until `--soak-requests` are answered."""
    runs, memory = [], [{"requests": 0, **memory_mib(server.process.pid)}]
    done, rate = 0, 0.0
    for _ in range(2 * (args.soak_requests // chunk) + 5):  # a bound should the rate collapse
        if done >= args.soak_requests:
            break
        want = min(chunk, args.soak_requests - done)
        seconds = min(120.0, max(1.0, want / rate)) if rate else 1.0
        row = run_wrk(server.base_url + "/", bodies, args.soak_concurrency, seconds, cpu, LUA)
        rate = row["requests"] / row["duration_s"]
        done += row["requests"]
        runs.append(row)
        memory.append({"requests": done, **memory_mib(server.process.pid)})
        print(f"   soak: {done:,} requests, RSS {memory[-1]['rss']:.1f} MiB", flush=True)
    return runs, memory


def _user_env(args: argparse.Namespace) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in args.batchserve_env)


# --- what it means ------------------------------------------------------------------------


def overload_summary(o: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
    row = o["wrk"]
    seconds, statuses = row["duration_s"], row["statuses"]
    answered = sum(statuses.values())
    accepted = [s["ms"] for s in o["sampled"] if s["status"] == 200]
    peak = max([s["rss"] for s in o["health"] if "rss" in s] or [0.0])
    return {
        "offered_rps": answered / seconds,
        "served_rps": statuses.get(200, 0) / seconds,
        "share": {code: statuses.get(code, 0) / max(1, answered) for code in (200, 503, 504)},
        "other_statuses": {s: n for s, n in statuses.items() if s not in (200, 503, 504)},
        "socket_errors": row["socket_errors"],
        "no_retry_after": row.get("extra", {}).get("503_without_retry_after", -1),
        "sampled": len(o["sampled"]),
        "sampled_statuses": _count(s["status"] for s in o["sampled"]),
        "accepted_ms": _spread(accepted),
        "accepted_late": sum(ms > timeout_ms for ms in accepted),
        "health": _probes(o["health"]),
        "health_port": _probes(o["health_port"]),
        "rss_peak_sampled": peak,
    }


def _probes(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ms": _spread([s["ms"] for s in samples if s["ok"]]),
        "count": len(samples),
        "failures": sum(not s["ok"] for s in samples),
        "errors": _count(s["error"] for s in samples if not s["ok"]),
    }


def soak_summary(s: dict[str, Any], concurrency: int) -> dict[str, Any]:
    statuses: dict[int, int] = {}
    sent: dict[int, int] = {}
    for row in s["runs"]:
        for code, n in row["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
        for code, n in row.get("extra", {}).get("sent_by_expected_status", {}).items():
            sent[int(code)] = sent.get(int(code), 0) + n
    memory = s["memory"]
    steady = memory[1] if len(memory) > 2 else memory[0]  # after the first chunk's warm-up
    # Each chunk stops with up to `concurrency` requests sent but not answered.
    slack = concurrency * len(s["runs"])
    off = sum(abs(statuses.get(c, 0) - sent.get(c, 0)) for c in set(statuses) | set(sent))
    return {
        "requests": sum(row["requests"] for row in s["runs"]),
        "seconds": sum(row["duration_s"] for row in s["runs"]),
        "statuses": dict(sorted(statuses.items())),
        "sent_by_expected": dict(sorted(sent.items())),
        "classes": _by_class(statuses),
        "server_errors": sum(n for code, n in statuses.items() if code >= 500),
        "socket_errors": sum(row["socket_errors"] for row in s["runs"]),
        "mix_matches": off <= 2 * slack and set(statuses) <= set(sent),
        "mix_off": off,
        "rss_start": memory[0]["rss"],
        "rss_steady": steady["rss"],
        "rss_end": memory[-1]["rss"],
        "rss_after_idle": s["memory_after"]["rss"],
        "hwm_end": memory[-1]["hwm"],
    }


def _count(values: Iterator[Any]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _by_class(statuses: dict[int, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for code, n in statuses.items():
        out[f"{code // 100}xx"] = out.get(f"{code // 100}xx", 0) + n
    return dict(sorted(out.items()))


def _spread(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": max(ms or [0.0]),
    }


def checks(results: dict[str, Any]) -> list[tuple[str, bool]]:
    o, s = results["overload"], results["soak"]
    osum, ssum = results["overload_summary"], results["soak_summary"]
    return [
        ("overload: every 503 carries Retry-After", osum["no_retry_after"] == 0),
        ("overload: no status but 200, 503 and 504", not osum["other_statuses"]),
        ("overload: no socket errors", osum["socket_errors"] == 0),
        ("overload: some requests served", osum["served_rps"] > 0),
        ("overload: every probe of the health port answered 200", _probes_ok(osum)),
        ("overload: health port p99 under 1 s (a kubelet's default timeout)", _p99_ok(osum)),
        ("overload: accepted requests answered within their deadline", not osum["accepted_late"]),
        ("overload: server up at the end, exit code 0 on SIGTERM", _clean_exit(o)),
        ("soak: each request kind got its expected status", not s["wrong_status"]),
        ("soak: no 5xx", ssum["server_errors"] == 0),
        ("soak: no socket errors", ssum["socket_errors"] == 0),
        ("soak: statuses match the mix sent", ssum["mix_matches"]),
        ("soak: server up at the end, exit code 0 on SIGTERM", _clean_exit(s)),
        ("no traceback in the server's log", o["tracebacks"] + s["tracebacks"] == 0),
    ]


def _probes_ok(summary: dict[str, Any]) -> bool:
    return summary["health_port"]["failures"] == 0


def _p99_ok(summary: dict[str, Any]) -> bool:
    ms = summary["health_port"]["ms"]
    return ms["n"] > 0 and ms["p99"] < 1000


def _probe_rows(where: str, probes: dict[str, Any]) -> list[str]:
    ms = probes["ms"]
    return [
        f"| {where}: p50 / p99 / max | {ms['p50']:.1f} / {ms['p99']:.1f} / {ms['max']:.1f} ms |",
        f"| {where}: probes failed | {probes['failures']} of {probes['count']}"
        f"{_failures(probes['errors'])} |",
    ]


def _clean_exit(phase: dict[str, Any]) -> bool:
    return bool(phase["alive_at_end"]) and phase["exit_code"] == 0


# --- the report ---------------------------------------------------------------------------


def render(args: argparse.Namespace, results: dict[str, Any]) -> str:
    m, o = results["machine"], results["overload"]
    server_cpu, client_cpu = results["cpus"]
    out = [
        "## Overload and soak",
        "",
        f"`python -m bench.overload{' --quick' if args.quick else ''}` on {m['date']} UTC, "
        f"commit {m['git_commit']}, {m['cpu_model']}; batchserve on CPU {server_cpu or 'any'}, "
        f"wrk, health prober and predict sampler on CPU {client_cpu or 'any'}; "
        f"load average at start {m['load_average_at_start']}.",
        "",
    ]
    out += _render_overload(args, o, results["overload_summary"])
    out += _render_soak(args, results["soak"], results["soak_summary"])
    out += ["### Checks", ""]
    out += [f"- {'pass' if ok else '**FAIL**'}: {name}" for name, ok in results["checks"]]
    return "\n".join(out) + "\n"


def _render_overload(args: argparse.Namespace, o: dict[str, Any], s: dict[str, Any]) -> list[str]:
    row, cap = o["wrk"], o["capacity"]["served_rps"]
    settings = ", ".join(f"`{k}={v}`" for k, v in o["env"].items())
    mem = [o["memory_started"]["rss"], o["memory_before"]["rss"], s["rss_peak_sampled"]]
    mem += [o["hwm_after"], o["memory_after"]["rss"]]
    acc = s["accepted_ms"]
    return [
        "### Overload",
        "",
        f"Settings: {settings} (others default), one torch thread. Capacity first: `wrk -t1 "
        f"-c64` on `predict` mnist-mlp for {args.capacity_duration:g} s. Then `wrk -t1 "
        f"-c{args.connections}` for {args.duration:g} s, every request with "
        f"`X-Request-Timeout-Ms: {args.timeout_ms}`; {o['bodies']}. Meanwhile `GET "
        f"/v2/health/live` every {PROBE_INTERVAL_S * 1e3:.0f} ms on a new connection, on the main "
        "port and on the health port (`BATCHSERVE_HEALTH_PORT`, answered by a thread of its own), "
        "and a "
        f"python client sends the same predict request every {SAMPLE_INTERVAL_S * 1e3:.0f} ms "
        "for the latency of accepted (200) requests.",
        "",
        "| | |",
        "|---|---|",
        f"| capacity (served at c=64) | {cap:,.0f} req/s |",
        f"| offered (all answers) | {s['offered_rps']:,.0f} req/s from {args.connections} "
        f"connections ({args.connections / 64:.0f}x the capacity run's) |",
        f"| served (200) | {s['served_rps']:,.0f} req/s ({s['served_rps'] / cap:.2f}x capacity) |",
        f"| 503 queue full | {s['share'][503]:.1%} of answers |",
        f"| 503 without Retry-After | {s['no_retry_after']} |",
        f"| 504 deadline exceeded | {s['share'][504]:.1%} of answers |",
        f"| other statuses / socket errors | {s['other_statuses'] or 0} / {s['socket_errors']} |",
        f"| wrk latency, all answers p50 / p99 | {row['latency_ms']['p50']:.1f} / "
        f"{row['latency_ms']['p99']:.1f} ms |",
        f"| sampled predict requests | {s['sampled']}: {_statuses(s['sampled_statuses'])} |",
        f"| accepted (200) p50 / p99 / max | {acc['p50']:.1f} / {acc['p99']:.1f} / "
        f"{acc['max']:.1f} ms |",
        f"| accepted answered after {args.timeout_ms} ms | {s['accepted_late']} of {acc['n']} |",
        *_probe_rows("health port", s["health_port"]),
        *_probe_rows("health on the main port", s["health"]),
        f"| server CPU | {row['server_cpu']:.2f} |",
        f"| mean batch, compute per pass: capacity run / overload | "
        f"{_batches(o['capacity']['row'])}"
        f" / {_batches(row)} |",
        "| RSS at start / before / peak (sampled, VmHWM) / after idle | "
        + " / ".join(f"{v:.1f}" for v in mem)
        + " MiB |",
        f"| server alive at end, exit code after SIGTERM | {o['alive_at_end']}, {o['exit_code']} |",
        "",
        "wrk is a closed-loop client: it offers overload as many connections, each sending its "
        "next request when answered, so offered req/s is every answer, whatever its status, per "
        "second. Latencies are measured at the client. The server's deadline covers the time to "
        "*start* the work, from when it reads the request; an accepted request answered after "
        "the deadline was started in time (or read late) and finished after it. `compute per "
        "pass` is batchserve's `batchserve_compute_duration_seconds`.",
        "",
    ]


def _render_soak(args: argparse.Namespace, soak: dict[str, Any], s: dict[str, Any]) -> list[str]:
    growth = s["rss_end"] - s["rss_steady"]
    per_10k = growth / max(1, s["requests"] - soak["memory"][1]["requests"]) * 10_000
    series = ", ".join(f"{m['requests'] // 1000}k {m['rss']:.1f}" for m in soak["memory"])
    wrong = "; ".join(soak["wrong_status"]) or "none"
    return [
        "### Soak",
        "",
        f"Default settings{_env_note(soak['env'])}. `wrk -t1 -c{args.soak_concurrency}` rotates "
        f"{soak['kinds']} requests (valid and invalid: wrong lengths, malformed JSON, unknown "
        "models and versions, out-of-alphabet and too-long strings, bad `top_k`, the wrong "
        "endpoint for the task, bad /v2 tensors) over predict on mnist-mlp and names-rnn, score "
        f"on names-lm (strings and pairs) and /v2 infer, in chunks of {soak['chunk']:,} "
        "requests (the first, 1 s, warms up and gives the rate); RSS read between chunks.",
        "",
        "| | |",
        "|---|---|",
        f"| requests | {s['requests']:,} in {s['seconds']:.0f} s "
        f"({s['requests'] / s['seconds']:,.0f} req/s) |",
        f"| statuses | {_statuses(s['statuses'])} |",
        f"| sent, by expected status | {_statuses(s['sent_by_expected'])} |",
        f"| by class | {_statuses(s['classes'])} |",
        f"| 5xx / socket errors | {s['server_errors']} / {s['socket_errors']} |",
        f"| kinds with an unexpected status (sent once each first) | {wrong} |",
        f"| RSS start / after first chunk / end / after idle | {s['rss_start']:.1f} / "
        f"{s['rss_steady']:.1f} / {s['rss_end']:.1f} / {s['rss_after_idle']:.1f} MiB |",
        f"| RSS growth after the first chunk | {growth:+.1f} MiB ({per_10k:+.2f} MiB per 10k "
        "requests) |",
        f"| VmHWM at end | {s['hwm_end']:.1f} MiB |",
        f"| server alive at end, exit code after SIGTERM | {soak['alive_at_end']}, "
        f"{soak['exit_code']} |",
        "",
        f"RSS (MiB) by requests served: {series}.",
        "",
    ]


def _failures(errors: dict[str, int]) -> str:
    return f" ({_statuses(errors)})" if errors else ""


def _batches(row: dict[str, Any]) -> str:
    b = row.get("batches", {}).get("mnist-mlp")
    return f"{b['mean_batch']:.1f} items, {b['mean_compute_ms']:.2f} ms" if b else "none"


def _statuses(counts: dict[Any, int]) -> str:
    return ", ".join(f"{k}: {n:,}" for k, n in counts.items()) or "none"


def _env_note(env: dict[str, str]) -> str:
    return "" if not env else " except " + ", ".join(f"`{k}={v}`" for k, v in env.items())


if __name__ == "__main__":
    sys.exit(main())
