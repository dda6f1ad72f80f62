"""Starting, probing and stopping the servers under test: each a subprocess in its own process
group on a free loopback port, optionally pinned to one CPU with `taskset`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MODELS = ("mnist-mlp", "names-lm")
_UVICORN = ["-m", "uvicorn", "--factory", "--loop", "uvloop", "--http", "httptools"]
_UVICORN += ["--no-access-log", "--log-level", "warning", "--host", HOST]


@dataclass
class ServerSpec:
    name: str
    description: str
    args: list[str]  # after `python`; the port is appended as `--port N`
    env: dict[str, str]
    ready: Callable[[int], bool]
    # The source tree it runs from: its working directory and PYTHONPATH, so that `-m app`
    # imports that tree's app/ and models/ (another commit's worktree, say), not this one's.
    source: Path = ROOT


@dataclass
class Server:
    spec: ServerSpec
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads) so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def specs(
    repository: Path, baseline_route: str, batchserve_env: dict[str, str]
) -> list[ServerSpec]:
    common = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    batchserve_env = {
        **common,
        "BATCHSERVE_MODEL_REPOSITORY": str(repository),
        "BATCHSERVE_DEVICE": "cpu",
        "BATCHSERVE_TORCH_THREADS": "1",
        "BATCHSERVE_ACCESS_LOG": "false",
        "BATCHSERVE_LOG_LEVEL": "warning",
        **batchserve_env,
    }
    bench_env = {**common, "BENCH_MODEL_REPOSITORY": str(repository), "BENCH_TORCH_THREADS": "1"}
    return [
        ServerSpec(
            "batchserve",
            "`python -m app serve`: dynamic batching, one inference thread",
            ["-m", "app", "serve", "--host", HOST],
            batchserve_env,
            _batchserve_ready,
        ),
        ServerSpec(
            "baseline",
            f"`bench/baseline_app.py`: plain FastAPI, `{baseline_route}` route, "
            "one forward pass per request",
            [*_UVICORN, "bench.baseline_app:create_app"],
            {**bench_env, "BENCH_BASELINE_ROUTE": baseline_route},
            _health_ready,
        ),
        ServerSpec(
            "floor",
            "`bench/floor_app.py`: plain FastAPI, same pydantic parsing, constant answer, no model",
            [*_UVICORN, "bench.floor_app:create_app"],
            common,
            _health_ready,
        ),
        ServerSpec(
            "fastapi-floor",
            "`bench/fastapi_floor_app.py`: a FastAPI route validating batchserve's request "
            "models from the bytes (model_validate_json), pre-encoded constant answer, no model",
            [*_UVICORN, "bench.fastapi_floor_app:create_app"],
            common,
            _health_ready,
        ),
        ServerSpec(
            "raw-floor",
            "`bench/raw_floor_app.py`: a bare ASGI app, orjson parses the body, constant "
            "answer, no validation, no model",
            [*_UVICORN, "bench.raw_floor_app:create_app"],
            common,
            _health_ready,
        ),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, body: bytes, timeout: float = 10.0) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _batchserve_ready(port: int) -> bool:
    listed = get_json(f"http://{HOST}:{port}/v1/models")["models"]
    states = {m["name"]: m["state"] for m in listed}
    missing = [m for m in MODELS if m not in states]
    if missing:
        raise RuntimeError(f"batchserve does not serve {missing}; it lists {sorted(states)}")
    failed = [m for m in MODELS if states[m] == "failed"]
    if failed:
        raise RuntimeError(f"batchserve failed to load {failed}")
    return all(states[m] == "ready" for m in MODELS)


def _health_ready(port: int) -> bool:
    return get_json(f"http://{HOST}:{port}/health").get("status") == "ok"


def start(spec: ServerSpec, log_dir: Path, cpu: str | None, timeout_s: float = 120.0) -> Server:
    port = free_port()
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    command = [*pin, sys.executable, *spec.args, "--port", str(port)]
    env = {**os.environ, **spec.env, "PYTHONPATH": str(spec.source)}
    log_path = log_dir / f"{spec.name}.log"
    with log_path.open("wb") as log:
        # A new session: Ctrl-C in the terminal reaches the runner only, which stops us in order.
        process = subprocess.Popen(
            command,
            cwd=spec.source,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(spec, port, process, log_path)
    try:
        _wait_ready(server, timeout_s)
    except BaseException:
        stop(server)
        raise
    return server


def _wait_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.spec.name} exited at start-up:\n{log_tail(server)}")
        try:
            if server.spec.ready(server.port):
                return
        except (OSError, ValueError, KeyError):
            pass  # not listening yet, or not answering JSON yet
        time.sleep(0.2)
    raise RuntimeError(
        f"{server.spec.name} was not ready after {timeout_s:.0f} s:\n{log_tail(server)}"
    )


def stop(server: Server, grace_s: float = 10.0) -> None:
    process = server.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def log_tail(server: Server, lines: int = 30) -> str:
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
