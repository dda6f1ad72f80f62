"""`batchserve serve --workers N`: a supervisor binds the port (and the health port) once and
starts N worker processes that share the listening sockets, each loading the models itself and
batching on its own. It replaces dead workers, drains them all on SIGTERM, and gives
prometheus_client the directory where the workers' metrics meet."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import uvicorn
from prometheus_client.multiprocess import mark_process_dead

from app.api.ops import observe_models
from app.logs import configure_logging
from app.main import Application
from app.metrics import Metrics, WorkerMetrics
from app.server import GracefulServer, uvicorn_config
from app.settings import Settings

log = logging.getLogger("batchserve")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
BACKLOG = 2048  # uvicorn's default
# A worker that exits before it serves is started again after FIRST_RETRY_S, doubled for each
# further failed start in a row; after FAILED_STARTS_TO_GIVE_UP in a row the supervisor stops.
FIRST_RETRY_S = 0.5
LONGEST_RETRY_S = 30.0
FAILED_STARTS_TO_GIVE_UP = 5
# On SIGTERM the workers get drain + grace + this to exit before they are killed.
STOP_MARGIN_S = 10.0
STARTUP_FAILURE = 3  # uvicorn's exit status when the application cannot start
READY = "ready"
TICKS_PER_REFRESH = 10  # uvicorn ticks every 0.1 s: the gauges are at most a second old


@dataclass
class Listeners:
    """The sockets every worker serves on, bound and listening before any worker starts."""

    http: socket.socket
    health: socket.socket | None

    def close(self) -> None:
        self.http.close()
        if self.health is not None:
            self.health.close()


@dataclass
class WorkerSpec:
    """What a worker process starts with (pickled to it; the sockets travel as descriptors)."""

    settings: Settings
    slot: int
    listeners: Listeners
    metrics_dir: Path
    restarts: int
    supervisor_pid: int
    ready: Connection  # the worker sends READY once it serves


@dataclass
class Worker:
    slot: int
    process: BaseProcess
    ready_signal: Connection | None  # None once read or closed
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0


def supervise(settings: Settings) -> int:
    """Serve with settings.workers processes until SIGTERM or SIGINT; 0 when every worker
    drained and exited cleanly, 1 otherwise (a port in use, workers that keep failing to start)."""
    try:
        listeners = bind(settings)
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.host, exc)
        return 1
    try:
        with metrics_directory() as metrics_dir:
            return Supervisor(settings, listeners, metrics_dir).run()
    finally:
        listeners.close()


def bind(settings: Settings) -> Listeners:
    http = _listening_socket(settings.host, settings.port)
    try:
        health = None
        if settings.health_port is not None:
            health = _listening_socket(settings.host, settings.health_port)
    except OSError:
        http.close()
        raise
    return Listeners(http, health)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"port {port}: {exc.strerror}") from None
    return sock


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """$PROMETHEUS_MULTIPROC_DIR, emptied of an earlier run's files as prometheus_client
    requires; when unset, a temporary directory that is removed afterwards."""
    configured = os.environ.get(METRICS_DIR_VARIABLE)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        stale = list(path.glob("*.db"))
        for file in stale:
            file.unlink()
        if stale:
            log.info("removed %d metrics files of an earlier run from %s", len(stale), path)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="batchserve-metrics-"))
    os.environ[METRICS_DIR_VARIABLE] = str(path)  # the workers inherit it
    try:
        yield path
    finally:
        del os.environ[METRICS_DIR_VARIABLE]
        shutil.rmtree(path, ignore_errors=True)


class Supervisor:
    """Starts the workers, replaces those that die, and stops them all on SIGTERM or SIGINT.
    It waits on the workers' exit sentinels, their ready pipes and a signal wake-up socket."""

    def __init__(self, settings: Settings, listeners: Listeners, metrics_dir: Path) -> None:
        self.settings = settings
        self.listeners = listeners
        self.metrics_dir = metrics_dir
        # spawn, not fork: the parent has imported torch (threads, perhaps CUDA) and a forked
        # copy of that state is unsafe; each worker starts a fresh interpreter.
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, Worker] = {}
        self.pending: dict[int, float] = {}  # slot -> when to start its worker (monotonic)
        self.failed_starts = 0  # in a row
        self.restarts = 0
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.received: list[int] = []
        self.announced = False

    def run(self) -> int:
        host, port = self.listeners.http.getsockname()[:2]
        log.info("listening on http://%s:%d with %d workers", host, port, self.settings.workers)
        with self._signals() as wake:
            for slot in range(self.settings.workers):
                self._start(slot)
            while self.workers or self.pending:
                self._step(wake)
        log.info("all workers stopped")
        return self.exit_code

    # -- the loop ------------------------------------------------------------------------------
    def _step(self, wake: socket.socket) -> None:
        signals = [w.ready_signal for w in self.workers.values() if w.ready_signal is not None]
        sentinels = {w.process.sentinel: w for w in self.workers.values()}
        woken = wait([wake, *signals, *sentinels], self._timeout())
        self._handle_signals(wake)
        for worker in list(self.workers.values()):
            if worker.ready_signal is not None and worker.ready_signal in woken:
                self._read_ready(worker)
        for sentinel, worker in sentinels.items():
            if sentinel in woken:
                self._exited(worker)
        now = time.monotonic()
        for slot, at in list(self.pending.items()):
            if at <= now:
                del self.pending[slot]
                self.restarts += 1
                self._start(slot)
        if self.stopping and now > self.stop_deadline:
            self._kill_stragglers()

    def _timeout(self) -> float:
        times = list(self.pending.values())
        if self.stopping:
            times.append(self.stop_deadline)
        soonest = min(times, default=time.monotonic() + 1.0) - time.monotonic()
        return min(max(soonest, 0.0), 1.0)

    # -- workers -------------------------------------------------------------------------------
    def _start(self, slot: int) -> None:
        if self.stopping:  # given up while starting the first workers: the sockets are closed
            return
        reader, writer = self.context.Pipe(duplex=False)
        spec = WorkerSpec(
            self.settings,
            slot,
            self.listeners,
            self.metrics_dir,
            self.restarts,
            os.getpid(),
            writer,
        )
        process = self.context.Process(
            target=run_worker, args=(spec,), name=f"batchserve-worker-{slot}"
        )
        try:
            process.start()
        except OSError as exc:
            reader.close()
            self._failed_start(slot, f"worker {slot} could not be started ({exc})")
            return
        finally:
            writer.close()  # the worker has its own copy; EOF here once it exits
        self.workers[slot] = Worker(slot, process, reader)
        log.info("worker %d started (pid %d)", slot, process.pid)

    def _read_ready(self, worker: Worker) -> None:
        assert worker.ready_signal is not None
        try:
            message = worker.ready_signal.recv()
        except (EOFError, OSError):
            message = None  # it exited; its sentinel says so
        worker.ready_signal.close()
        worker.ready_signal = None
        if message == READY:
            worker.ready = True
            self.failed_starts = 0
            log.info("worker %d (pid %d) serving", worker.slot, worker.pid)
            if not self.announced and all(w.ready for w in self.workers.values()):
                self.announced = True
                log.info("all %d workers serving", len(self.workers))

    def _exited(self, worker: Worker) -> None:
        pid = worker.pid
        worker.process.join()
        code = worker.process.exitcode
        worker.process.close()
        del self.workers[worker.slot]
        if worker.ready_signal is not None:
            worker.ready_signal.close()
        # Its live gauges (queue depth, model state, its request count) leave the totals; its
        # counters and histograms stay in them.
        mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        how = f"worker {worker.slot} (pid {pid}) {_describe(code)}"
        if self.stopping:
            clean = code == 0 or (not worker.ready and code == -signal.SIGTERM)
            (log.info if clean else log.error)("%s", how)
            if not clean:
                self.exit_code = 1
        elif worker.ready:
            log.error("%s; starting a new one", how)
            self.pending[worker.slot] = time.monotonic()
        else:
            self._failed_start(worker.slot, f"{how} before it was ready")

    def _failed_start(self, slot: int, how: str) -> None:
        self.failed_starts += 1
        if self.failed_starts >= FAILED_STARTS_TO_GIVE_UP:
            log.error(
                "%s: %d failed starts in a row; giving up (see the errors above)",
                how,
                self.failed_starts,
            )
            self.exit_code = 1
            self._begin_stop(signal.SIGTERM)
            return
        delay_s = min(FIRST_RETRY_S * 2 ** (self.failed_starts - 1), LONGEST_RETRY_S)
        log.error("%s; starting another in %.1f s", how, delay_s)
        self.pending[slot] = time.monotonic() + delay_s

    def _kill_stragglers(self) -> None:
        for worker in self.workers.values():
            if worker.process.is_alive():
                log.error(
                    "worker %d (pid %d) still running after drain and grace; killing it",
                    worker.slot,
                    worker.pid,
                )
                worker.process.kill()
        self.exit_code = 1
        self.stop_deadline = float("inf")  # once

    # -- signals -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals(self) -> Iterator[socket.socket]:
        """SIGTERM and SIGINT are queued by the handler and wake the loop through a socket."""
        wake, wakeup_fd = socket.socketpair()
        for end in (wake, wakeup_fd):
            end.setblocking(False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        previous_fd = signal.set_wakeup_fd(wakeup_fd.fileno())
        try:
            yield wake
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake.close()
            wakeup_fd.close()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.received.append(sig)

    def _handle_signals(self, wake: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            while wake.recv(512):
                pass
        while self.received:
            self._begin_stop(self.received.pop(0))

    def _begin_stop(self, sig: int) -> None:
        if self.stopping:
            if sig == signal.SIGINT:  # a second Ctrl+C: uvicorn's forced exit in each worker
                self._signal_all(signal.SIGINT)
            return
        self.stopping = True
        self.pending.clear()
        # No worker will be started again; once the workers close theirs, the port is closed.
        self.listeners.close()
        settings = self.settings
        wait_s = settings.shutdown_drain_s + settings.shutdown_grace_s + STOP_MARGIN_S
        self.stop_deadline = time.monotonic() + wait_s
        log.info("%s: draining %d workers", signal.Signals(sig).name, len(self.workers))
        self._signal_all(signal.SIGTERM)  # even on SIGINT: each drains as on SIGTERM

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, sig)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


# -- in the worker process --------------------------------------------------------------------


def run_worker(spec: WorkerSpec) -> None:
    """A worker's body, in a freshly spawned interpreter: the app over the shared sockets."""
    configure_logging(spec.settings.log_level, with_pid=True)
    _stop_with(spec.supervisor_pid)
    metrics = Metrics(multiprocess_dir=spec.metrics_dir)
    app = Application(spec.settings, metrics, spec.listeners.health)
    server = WorkerServer(uvicorn_config(app, log_config=None), app, spec)
    try:
        server.run(sockets=[spec.listeners.http])
    except KeyboardInterrupt:  # uvicorn raises Ctrl+C again once it has shut down
        pass
    sys.exit(0 if server.started else STARTUP_FAILURE)


def _stop_with(supervisor_pid: int) -> None:
    """Have the kernel send this worker SIGTERM (a drain) if the supervisor dies, even by
    SIGKILL, so that no worker is left holding the port."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor_pid:  # it died before the line above
        raise SystemExit("batchserve worker: the supervisor is gone")


class WorkerServer(GracefulServer):
    """GracefulServer that tells the supervisor when it serves, and refreshes its gauges every
    second: a scrape reaches one worker, which reads the others' gauges from their files."""

    def __init__(self, config: uvicorn.Config, app: Application, spec: WorkerSpec) -> None:
        super().__init__(config, app.lifecycle, app.settings.shutdown_drain_s, app.stop_grpc)
        self.app = app
        self.spec = spec
        self.worker_metrics: WorkerMetrics | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        observe_models(self.app.metrics, self.app.plane)
        self.worker_metrics = self.app.metrics.serving_as_worker(self.spec.restarts)
        with contextlib.suppress(OSError):  # a supervisor that is gone: SIGTERM follows
            self.spec.ready.send(READY)
        self.spec.ready.close()

    async def on_tick(self, counter: int) -> bool:
        if counter % TICKS_PER_REFRESH == 0 and self.worker_metrics is not None:
            observe_models(self.app.metrics, self.app.plane)
            self.worker_metrics.observe_requests(self.app.metrics.requests)
        return await super().on_tick(counter)
