"""A load generator in plain Python, for machines without a working wrk (bench/gpu_check.py falls
back to it and says so): worker processes, each an asyncio loop holding keep-alive HTTP/1.1
connections that POST the lines of a .jsonl file in turn, as bench/post.lua does with wrk. It
costs more CPU per request than wrk, so give it more cores; `run` returns what
bench.load.run_wrk does.

A worker alone: `python -m bench.pyload URL BODIES --connections 8 --duration 2 --out FILE`
(writes its counts and latencies as JSON)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

_KEPT_LATENCIES = 200_000  # per process: enough for p99.9, bounded memory


def _requests(url: str, bodies: str) -> list[bytes]:
    parts = urllib.parse.urlsplit(url)
    head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    head += "Content-Type: application/json\r\n"
    out = []
    for line in Path(bodies).read_text().splitlines():
        if line:
            body = line.encode()
            out.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    if not out:
        raise ValueError(f"no bodies in {bodies}")
    return out


async def _connection(
    host: str, port: int, requests: list[bytes], start: int, deadline: float, tally: dict[str, Any]
) -> None:
    """One keep-alive connection: send, read the whole answer, record, repeat until `deadline`."""
    index = start
    while time.perf_counter() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally["errors"]["connect"] += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while (sent := time.perf_counter()) < deadline:
                writer.write(requests[index % len(requests)])
                index += 1
                status = await _read_response(reader)
                tally["statuses"][status] = tally["statuses"].get(status, 0) + 1
                if len(tally["latencies"]) < _KEPT_LATENCIES:
                    tally["latencies"].append((time.perf_counter() - sent) * 1e3)
                tally["requests"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            tally["errors"]["read"] += 1
        finally:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = dict(line.partition(":")[::2] for line in lines[1:] if line)
    length = next((v for k, v in headers.items() if k.lower() == "content-length"), None)
    if length is None:
        raise ValueError("an answer without Content-Length")
    await reader.readexactly(int(length))
    return status


def worker(url: str, bodies: str, connections: int, duration_s: float) -> dict[str, Any]:
    """One process's share: `connections` connections for `duration_s`, on uvloop if present."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    parts = urllib.parse.urlsplit(url)
    requests = _requests(url, bodies)
    tally: dict[str, Any] = {
        "requests": 0,
        "statuses": {},
        "latencies": [],
        "errors": {"connect": 0, "read": 0},
    }

    async def main() -> None:
        deadline = time.perf_counter() + duration_s
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        await asyncio.gather(
            *(_connection(host, port, requests, i * 7, deadline, tally) for i in range(connections))
        )

    started, cpu_before = time.perf_counter(), time.process_time()
    asyncio.run(main())
    tally["duration_s"] = time.perf_counter() - started
    tally["cpu_s"] = time.process_time() - cpu_before
    return tally


def run(
    url: str,
    bodies: str,
    concurrency: int,
    duration_s: float,
    cpus: list[int] | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """`concurrency` connections shared by `processes` workers (each pinned to one of `cpus`
    in turn, when given) for `duration_s`."""
    count = max(1, min(concurrency, processes))
    shares = [concurrency // count + (1 if i < concurrency % count else 0) for i in range(count)]
    workers = []
    with tempfile.TemporaryDirectory(prefix="pyload-") as tmp:
        for i, share in enumerate(shares):
            pin = ["taskset", "-c", str(cpus[i % len(cpus)])] if cpus else []
            command = [*pin, sys.executable, "-m", "bench.pyload", url, bodies]
            command += ["--connections", str(share), "--duration", str(duration_s)]
            command += ["--out", f"{tmp}/{i}.json"]
            workers.append(subprocess.Popen(command))
        try:
            for process in workers:
                if process.wait(timeout=duration_s + 60) != 0:
                    raise RuntimeError(f"a pyload worker exited {process.returncode}")
        finally:
            for process in workers:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        tallies = [json.loads(Path(f"{tmp}/{i}.json").read_text()) for i in range(count)]
    return summarise(tallies)


def summarise(tallies: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(t["requests"] for t in tallies)
    duration = max(t["duration_s"] for t in tallies)
    statuses: dict[int, int] = {}
    for t in tallies:
        for status, n in t["statuses"].items():
            statuses[int(status)] = statuses.get(int(status), 0) + n
    latencies = sorted(x for t in tallies for x in t["latencies"])
    errors = {
        "connect": sum(t["errors"]["connect"] for t in tallies),
        "read": sum(t["errors"]["read"] for t in tallies),
        "write": 0,
        "status": 0,
        "timeout": 0,
    }
    return {
        "requests": requests,
        "duration_s": duration,
        "rps": requests / duration if duration else 0.0,
        "latency_ms": {
            **{f"p{p:g}": _percentile(latencies, p) for p in (50, 90, 99, 99.9)},
            "mean": sum(latencies) / len(latencies) if latencies else 0.0,
            "max": latencies[-1] if latencies else 0.0,
        },
        "statuses": statuses,
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "socket_errors": errors["connect"] + errors["read"],
        "errors": errors,
        "client_cpu": sum(t["cpu_s"] for t in tallies) / duration if duration else 0.0,
    }


def _percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("bodies")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tally = worker(args.url, args.bodies, args.connections, args.duration)
    args.out.write_text(json.dumps(tally))


if __name__ == "__main__":
    main()
