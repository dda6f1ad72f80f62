"""Hostile requests: how long the main port's health check takes while one client sends each input
that used to stall the event loop or hold the server's memory and connections.

    python -m bench.hostile                          # this checkout
    python -m bench.hostile --revision 8c48c26       # the same against an older commit ("before")
    python -m bench.hostile --out bench/RESULTS.md   # both, written between the hostile markers

Each attack runs alone against a fresh batchserve (pinned to CPU 0; the attack and the prober on
CPU 1) while a prober sends `GET /v2/health/live` every 20 ms on a new connection, as a kubelet
does. Reported per attack: the probe's p50/p99/max latency and failures, the server's peak RSS,
what the attacker got back, and, for attacks that hold connections, how many of them the server
had closed 15 s later. All traffic stays on 127.0.0.1."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.overload import Watch, health_probe, memory_mib, percentile, watching
from bench.report import write_marked_section
from bench.servers import HOST, ROOT, Server, ServerSpec, start, stop

PROBE_INTERVAL_S = 0.02
HOLD_CHECK_S = 15.0  # how long after an attack held connections we count the closed ones
TARGET_P99_MS = 50.0
START_MARK, END_MARK = "<!-- hostile:start -->", "<!-- hostile:end -->"


@dataclass(frozen=True)
class Attack:
    name: str
    what: str
    run: Callable[[Server], dict[str, Any]]


# -- the attacks --------------------------------------------------------------------------------


def _post(server: Server, path: str, body: bytes, headers: dict[str, str] | None = None) -> dict:
    started = time.perf_counter()
    try:
        response = httpx.post(
            server.base_url + path,
            content=body,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=120,
        )
        got = f"{response.status_code}"
    except httpx.HTTPError as exc:
        got = type(exc).__name__
    return {"answer": got, "answer_s": time.perf_counter() - started}


def _json_attack(path: str, body: Callable[[], bytes]) -> Callable[[Server], dict[str, Any]]:
    return lambda server: _post(server, path, body())


def _binary_bytes(server: Server) -> dict[str, Any]:
    payload = struct.pack("<I", 3) + b"Kim" + b"\x00\x00\x00\x00" * 4_000_000  # 16 MB
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1]}
    header = orjson.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(payload)}}]}
    )
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return _post(server, "/v2/models/names-lm/infer", header + payload, headers)


def _repeated(
    times: int, path: str, body: Callable[[], bytes], headers: dict[str, str] | None = None
) -> Callable[[Server], dict[str, Any]]:
    """The same request `times` times in a row, so that the probes see each one's stall."""

    def attack(server: Server) -> dict[str, Any]:
        content = body()
        started = time.perf_counter()
        answers = [_post(server, path, content, headers)["answer"] for _ in range(times)]
        kinds = ", ".join(f"{answers.count(a)} x {a}" for a in sorted(set(answers)))
        return {"answer": kinds, "answer_s": (time.perf_counter() - started) / times}

    return attack


def _whitespace_gzip() -> bytes:
    """15.6 KB of gzip that inflates to 16 MiB: a JSON body padded with white space."""
    raw = b'{"inputs": ["Kim"]' + b" " * (16 * 2**20 - 32) + b"}"
    return gzip.compress(raw, compresslevel=9)


def _max_batch() -> bytes:
    """The largest valid predict: 1,024 images of 784 values (about 5 MB of JSON)."""
    return orjson.dumps({"inputs": [[0.5] * 784] * 1024})


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection((HOST, server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def _send_header(sock: socket.socket, megabytes: int) -> str:
    """An unfinished header of up to `megabytes` MB, sent as fast as the server takes it."""
    sock.sendall(b"POST /v1/models/names-rnn/predict HTTP/1.1\r\nHost: x\r\nX-Big: ")
    chunk = b"a" * (1 << 20)
    try:
        for _ in range(megabytes):
            sock.sendall(chunk)
    except OSError as exc:
        return f"closed by the server ({type(exc).__name__})"
    return f"{megabytes} MB sent"


def _huge_header(server: Server) -> dict[str, Any]:
    started = time.perf_counter()
    with _connect(server) as sock:
        sent = _send_header(sock, 128)
        with contextlib.suppress(OSError):
            sock.sendall(b"\r\n\r\n{}")
            sent += "; answer: " + (sock.recv(64).split(b"\r\n")[0].decode() or "none")
    return {"answer": sent, "answer_s": time.perf_counter() - started}


def _held(count: int, opener: Callable[[Server], socket.socket]) -> Callable[[Server], dict]:
    """Open `count` connections with `opener`, then count how many the server has closed."""

    def attack(server: Server) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            socks = []
            for _ in range(count):
                try:
                    socks.append(stack.enter_context(opener(server)))
                except OSError:
                    break
            opened = len(socks)
            time.sleep(HOLD_CHECK_S)
            closed = sum(_closed(s) for s in socks)
        return {
            "answer": f"{opened} opened, {closed} closed by the server after {HOLD_CHECK_S:.0f} s"
        }

    return attack


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _idle(server: Server) -> socket.socket:
    return _connect(server)


def _half_header(server: Server) -> socket.socket:
    sock = _connect(server)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Half: ")
    return sock


def _big_unfinished(server: Server) -> socket.socket:
    sock = _connect(server)
    _send_header(sock, 64)
    return sock


def _slow_body(server: Server) -> dict[str, Any]:
    started = time.perf_counter()
    head = (
        b"POST /v1/models/names-rnn/predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    answer = "held for the whole attack (60 s)"
    with _connect(server) as sock:
        sock.sendall(head)
        for _ in range(60):
            try:
                sock.sendall(b" ")
                sock.setblocking(False)
                data = sock.recv(256)
                sock.setblocking(True)
                answer = f"answered {data.split(b' ')[1].decode()}" if data else "closed"
                break
            except BlockingIOError:
                sock.setblocking(True)
                time.sleep(1)
            except OSError:
                answer = "closed"
                break
    return {"answer": answer, "answer_s": time.perf_counter() - started}


ATTACKS = [
    Attack(
        "nfkd-string",
        "predict, one string of 1M x U+FDFA (2.9 MB; 18M characters once NFKD-normalized)",
        _json_attack(
            "/v1/models/names-rnn/predict", lambda: orjson.dumps({"inputs": ["\ufdfa" * 10**6]})
        ),
    ),
    Attack(
        "ascii-string",
        "predict, one 16 MiB ASCII string",
        _json_attack(
            "/v1/models/names-rnn/predict",
            lambda: orjson.dumps({"inputs": ["a" * (16 * 2**20 - 64)]}),
        ),
    ),
    Attack(
        "pair-string",
        "score, a pair whose continuation is 1M x U+FDFA",
        _json_attack(
            "/v1/models/names-lm/score",
            lambda: orjson.dumps({"pairs": [{"context": "", "continuation": "\ufdfa" * 10**6}]}),
        ),
    ),
    Attack("v2-bytes", "/v2 binary BYTES, shape [1], 16 MB of zero-length elements", _binary_bytes),
    Attack(
        "tiny-values",
        "predict, 2M one-element arrays (8 MB of JSON)",
        _json_attack(
            "/v1/models/mnist-mlp/predict",
            lambda: b'{"inputs": [' + b",".join([b"[0]"] * 2_000_000) + b"]}",
        ),
    ),
    Attack(
        "gzip-whitespace",
        "predict, 20 x a 16 KB gzip body that inflates to 16 MiB of white space",
        _repeated(
            20, "/v1/models/names-rnn/predict", _whitespace_gzip, {"Content-Encoding": "gzip"}
        ),
    ),
    Attack(
        "max-batch",
        "predict, 10 x the largest valid batch (1,024 x 784 numbers, ~5 MB of JSON)",
        _repeated(10, "/v1/models/mnist-mlp/predict", _max_batch),
    ),
    Attack("huge-header", "one 128 MB header, sent as fast as the server reads", _huge_header),
    Attack(
        "big-unfinished-headers",
        "8 connections, each 64 MB of an unfinished header, then held",
        _held(8, _big_unfinished),
    ),
    Attack("idle-connections", "2,000 connections that send nothing", _held(2000, _idle)),
    Attack(
        "half-sent-headers",
        "1,000 connections that send half a header, then nothing",
        _held(1000, _half_header),
    ),
    Attack("slow-body", "a 1,000-byte body sent at 1 byte/s", _slow_body),
]


# -- running them -------------------------------------------------------------------------------


def run_attack(attack: Attack, spec: ServerSpec, tmp: Path, cpus: tuple[str | None, ...]) -> dict:
    server = start(spec, tmp, cpus[0])
    try:
        prober_client = httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))
        probe = Watch(
            PROBE_INTERVAL_S,
            300,
            health_probe(server, prober_client, server.base_url + "/v2/health/live"),
        )
        with watching(probe):
            time.sleep(0.5)  # a baseline before the attack
            outcome = attack.run(server)
            time.sleep(0.5)
        prober_client.close()
        peak = memory_mib(server.process.pid)["hwm"]
    finally:
        stop(server)
    latencies = [s["ms"] for s in probe.samples if s["ok"]]
    return {
        "attack": attack.name,
        "what": attack.what,
        **outcome,
        "probes": len(probe.samples),
        "probe_failures": sum(not s["ok"] for s in probe.samples),
        "probe_p50_ms": percentile(latencies, 50),
        "probe_p99_ms": percentile(latencies, 99),
        "probe_max_ms": max(latencies, default=0.0),
        "peak_rss_mib": peak,
    }


def batchserve_spec(source: Path, repository: Path) -> ServerSpec:
    env = {
        "BATCHSERVE_MODEL_REPOSITORY": str(repository),
        "BATCHSERVE_DEVICE": "cpu",
        "BATCHSERVE_TORCH_THREADS": "1",
        "BATCHSERVE_ACCESS_LOG": "false",
        "BATCHSERVE_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
    }
    return ServerSpec(
        "batchserve",
        "python -m app serve",
        ["-m", "app", "serve", "--host", HOST],
        env,
        _ready,
        source,
    )


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://{HOST}:{port}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def checkout(revision: str | None) -> Iterator[tuple[Path, str]]:
    """The source tree to serve from: this checkout, or `revision` in a temporary worktree."""
    if revision is None:
        yield ROOT, _describe("HEAD")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), revision],
            check=True,
        )
        try:
            yield tree, _describe(revision)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
            )


def _describe(revision: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", revision],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip()[:90]


def measure(revision: str | None, only: list[str], tmp: Path) -> dict[str, Any]:
    cpus: tuple[str | None, ...] = ("0", "1") if (os.cpu_count() or 1) >= 2 else (None, None)
    if cpus[1] is not None:
        os.sched_setaffinity(0, {int(cpus[1])})
    with checkout(revision) as (source, described):
        repository = source / "models" / "repository"
        spec = batchserve_spec(source, repository)
        rows = []
        for attack in ATTACKS:
            if only and attack.name not in only:
                continue
            print(f"[{described[:7]}] {attack.name} ...", file=sys.stderr, flush=True)
            rows.append(run_attack(attack, spec, tmp, cpus))
    return {"revision": described, "rows": rows}


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = [
        "## Hostile requests",
        "",
        f"`python -m bench.hostile` on {time.strftime('%Y-%m-%d')}: each attack alone against a "
        "fresh server (CPU 0; attacker and prober on CPU 1), `GET /v2/health/live` on the main "
        f"port every {PROBE_INTERVAL_S * 1000:.0f} ms on a new connection. Target: probe p99 under "
        f"{TARGET_P99_MS:.0f} ms.",
        "",
    ]
    for run in runs:
        lines += [
            f"### {run['revision']}",
            "",
            "| attack | what the attacker got | probe p50 / p99 / max ms | probes failed "
            "| peak RSS MiB |",
            "|---|---|---:|---:|---:|",
        ]
        for r in run["rows"]:
            took = f" in {r['answer_s']:.1f} s" if "answer_s" in r else ""
            lines.append(
                f"| {r['what']} | {r['answer']}{took} | {r['probe_p50_ms']:.1f} / "
                f"{r['probe_p99_ms']:.1f} / {r['probe_max_ms']:.0f} | "
                f"{r['probe_failures']} of {r['probes']} | {r['peak_rss_mib']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--revision", help="measure this commit instead of the checkout")
    parser.add_argument("--before", help="with --out: also measure this older commit first")
    parser.add_argument("--only", default="", help="comma-separated attack names")
    parser.add_argument("--out", type=Path, help="write the section into this markdown file")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "hostile.json")
    args = parser.parse_args(argv)
    only = [a for a in args.only.split(",") if a]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(args.before, only, Path(tmp))] if args.before else []
        runs.append(measure(args.revision, only, Path(tmp)))
    args.json_out.write_text(json.dumps(runs, indent=1))
    text = markdown(runs)
    print(text)
    if args.out:
        write_marked_section(args.out, text, START_MARK, END_MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
