"""batchserve replicas (`python -m app serve`) on loopback behind HAProxy run with the shipped
deploy/haproxy/haproxy.cfg: start, SIGTERM, kill -9 and replace replicas, and read which of them
HAProxy holds up. Used by tests/test_haproxy.py and bench/replicas.py."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import HOST, free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
# The server names in haproxy.cfg, in order; their addresses come from the environment.
NAMES = ("replica1", "replica2")


def find_haproxy() -> str | None:
    """The haproxy binary; Debian puts it in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/local/sbin:/usr/sbin")


@dataclass
class Replica:
    """One `python -m app serve` process; a successor reuses the same ports, as a restarted
    container would, so that HAProxy's server line stays the same."""

    name: str
    log_dir: Path
    env: Mapping[str, str]
    cpu: str | None = None
    port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BATCHSERVE_HOST": HOST,
            "BATCHSERVE_PORT": str(self.port),
            "BATCHSERVE_HEALTH_PORT": str(self.health_port),
            **self.env,
        }
        pin = ["taskset", "-c", self.cpu] if self.cpu is not None else []
        self.generation += 1
        log = self.log_dir / f"{self.name}.{self.generation}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*pin, sys.executable, "-m", "app", "serve"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until its own health port says ready (models loaded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up:\n{self.log_tail()}")
            if _status(f"http://{HOST}:{self.health_port}/v2/health/ready") == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout_s:.0f} s:\n{self.log_tail()}")

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, as an orchestrator stops a container; the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        log = self.log_dir / f"{self.name}.{self.generation}.log"
        with contextlib.suppress(OSError):
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class Balancer:
    """HAProxy with the shipped config, its addresses set through the environment."""

    replicas: list[Replica]
    log_dir: Path
    binary: str
    cpu: str | None = None
    port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "BATCHSERVE_LB_BIND": f"{HOST}:{self.port}",
            "BATCHSERVE_LB_STATS": f"{HOST}:{self.stats_port}",
        }
        for number, replica in enumerate(self.replicas, start=1):
            env[f"BATCHSERVE_REPLICA{number}"] = f"{HOST}:{replica.port}"
            env[f"BATCHSERVE_REPLICA{number}_HEALTH_PORT"] = str(replica.health_port)
        pin = ["taskset", "-c", self.cpu] if self.cpu is not None else []
        with (self.log_dir / "haproxy.log").open("wb") as out:
            # -db: stay in the foreground, so that this process is HAProxy itself.
            self.process = subprocess.Popen(
                [*pin, self.binary, "-db", "-f", str(CONFIG)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def states(self) -> dict[str, str]:
        """HAProxy's view, {server name: "UP" | "DOWN" | "UP 1/2" | ...}, from its stats CSV."""
        url = f"http://{HOST}:{self.stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode().lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "replicas"}

    def wait_state(self, name: str, state: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                seen = self.states()
                if seen.get(name) == state:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"HAProxy did not mark {name} {state} in {timeout_s:.0f} s: {seen}")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.log_dir / "haproxy.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def replicas_behind_haproxy(
    log_dir: Path,
    haproxy: str,
    env: Mapping[str, str],
    replica_cpus: tuple[str | None, str | None] = (None, None),
    balancer_cpu: str | None = None,
) -> Iterator[Balancer]:
    """Two replicas started and ready, HAProxy holding both up; everything stopped on exit."""
    replicas = [Replica(n, log_dir, env, cpu) for n, cpu in zip(NAMES, replica_cpus, strict=True)]
    balancer = Balancer(replicas, log_dir, haproxy, balancer_cpu)
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        balancer.start()
        for replica in replicas:
            balancer.wait_state(replica.name, "UP")
        yield balancer
    finally:
        balancer.close()
        for replica in replicas:
            replica.close()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None
