"""A fuzzer that looks for the next bad request: type-confused, out-of-range and oversized bodies
for every operation of the live server's /openapi.json (schemathesis' positive and negative data,
plus hostile values planted into valid bodies), and generated gRPC messages (shapes, datatypes,
raw_input_contents of the wrong length, garbage bytes), each sent while innocent requests of
every model run beside it and a prober checks the health endpoint.

    python -m bench.fuzz --cases 10000          # the shipped models, until 10,000 cases
    python -m bench.fuzz --seconds 600 --seed 7

A finding is: a 5xx (but 501 not_implemented and 503 model_not_ready/queue_full, which are
documented answers), a gRPC UNKNOWN or INTERNAL, an innocent request that failed or answered
differently from before the run, a health probe that got no answer within PROBE_TIMEOUT_S, or
a server that is not healthy after. Prints the count of cases and every finding; exits 1 on any.
The tests (`tests/test_fuzz_isolation.py`) run the same code for a bounded number of cases."""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import hypothesis
import hypothesis.errors
import hypothesis.strategies as st
import schemathesis
import uvicorn
import uvloop
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from schemathesis import GenerationMode

from app.api.grpc.generated import grpc_service_pb2
from app.main import Application, create_app
from app.server import uvicorn_config
from app.settings import DEFAULT_REPOSITORY, Settings

ADMIN_KEY = "fuzz-admin-key"
PROBE_TIMEOUT_S = 10.0  # a liveness bound, not a latency target
REQUEST_TIMEOUT_S = 60.0
IMAGE = [0.25] * 784
# 5xx answers that are documented outcomes, not failures: by code.
DOCUMENTED_5XX = {501: {"not_implemented"}, 503: {"model_not_ready", "queue_full"}}
# Numbers and values that have broken servers before: past int64, past float range, empty,
# type-confused, deep, long.
HOSTILE_VALUES: list[Any] = [
    2**63,
    2**64 - 1,
    -(2**63),
    2**53 + 1,
    10**30,
    -1,
    0,
    1e308,
    -1e308,
    5e-324,
    0.5,
    "",
    "x" * 70_000,
    "\x00",
    "<s></s>",
    [],
    {},
    None,
    True,
    [{}] * 784,
    [[0.5] * 28] * 27 + [[{}] * 28],
    [0.5] * 783 + [{}],
    [2**63] * 4,
    [[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]],
    {"": {"": {"": None}}},
    ["Kim"] * 1025,
]
GRPC_BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
DATATYPES = ["FP32", "FP64", "FP16", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "BF16", "", "X"]


@dataclass
class Report:
    cases: int = 0
    http_cases: int = 0
    grpc_cases: int = 0
    innocent: int = 0
    probes: int = 0
    slowest_probe_s: float = 0.0
    operations: set[str] = field(default_factory=set)  # HTTP operations sent at least once
    grpc_methods: set[str] = field(default_factory=set)
    unsent: dict[str, int] = field(default_factory=dict)  # cases the client could not send
    findings: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def find(self, finding: str) -> None:
        with self.lock:
            if len(self.findings) < 200:
                self.findings.append(finding)


CHUNK = 200  # examples per hypothesis run; runs go on, with the next seed, within the budget


def drive(one: Callable[[Any], None], budget: Callable[[], bool], seed: int) -> None:
    """Call `one(data)` with hypothesis' data, run after run, until `budget()` says stop. Each
    run has its own seed (seed, seed + 1, ...): the same seed, the same cases. Nothing is
    raised into hypothesis (findings are recorded), so it never replays or shrinks."""
    settings = hypothesis.settings(
        max_examples=CHUNK,
        deadline=None,
        database=None,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    run = 0
    while budget():
        test = hypothesis.seed(seed + run)(settings(hypothesis.given(st.data())(one)))
        # Once the budget is spent, `one` returns without drawing; hypothesis, seeing a case
        # draw less than before, calls its strategy flaky. That ends this run, as wanted.
        with contextlib.suppress(hypothesis.errors.FlakyStrategyDefinition):
            test()
        run += 1


# -- the server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[tuple[str, Application]]:
    """batchserve under uvicorn (on uvloop) in a thread, on a loopback port; its URL and app."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, log_level="critical"))
    thread = threading.Thread(target=lambda: uvloop.run(server.serve([sock])), daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError("the server did not start")
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


# -- beside the cases: innocent requests and a health prober --------------------------------------


@dataclass(frozen=True, eq=False)
class Innocent:
    model: str
    path: str
    body: dict[str, Any]

    def answer(self, response: httpx.Response) -> Any:
        """What must not change: labels, the completion's text, or scores to 4 places."""
        body = response.json()
        if "predictions" in body:
            return [p["label"] for p in body["predictions"]]
        if "choices" in body:
            return [c["text"] for c in body["choices"]]
        return [round(s["log_prob"], 4) for s in body["scores"]]


def innocents(models: set[str]) -> list[Innocent]:
    known = [
        Innocent("mnist-mlp", "/v1/models/mnist-mlp/predict", {"inputs": [IMAGE, IMAGE]}),
        Innocent("names-rnn", "/v1/models/names-rnn/predict", {"inputs": ["Nakamura", "Kim"]}),
        Innocent("names-lm", "/v1/models/names-lm/score", {"inputs": ["Johnson", "Li"]}),
        Innocent(
            "names-lm",
            "/v1/completions",
            {
                "model": "names-lm",
                "prompt": "Ko",
                "max_tokens": 12,
                "n": 3,
                "temperature": 1.5,
                "top_k": 20,
                "seed": 11,
            },
        ),
    ]
    return [i for i in known if i.model in models]


class Beside:
    """Innocent requests in a loop and a health prober, each on its own thread, while the
    cases run; `control` marks the spans in which a case may have unloaded a model."""

    def __init__(self, url: str, report: Report, requests: list[Innocent]) -> None:
        self.url, self.report, self.requests = url, report, requests
        self.expected: dict[Innocent, Any] = {}
        self.stop = threading.Event()
        self.controls: list[tuple[float, float]] = []
        self.threads = [
            threading.Thread(target=self._innocent, daemon=True),
            threading.Thread(target=self._probe, daemon=True),
        ]

    def __enter__(self) -> Beside:
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S) as client:
            for request in self.requests:
                response = client.post(request.path, json=request.body)
                response.raise_for_status()
                self.expected[request] = request.answer(response)
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 10)

    @contextlib.contextmanager
    def control(self) -> Iterator[None]:
        """A case that may unload or load a model runs inside."""
        index = len(self.controls)
        self.controls.append((time.monotonic(), math.inf))  # open while the case runs
        try:
            yield
        finally:
            self.controls[index] = (self.controls[index][0], time.monotonic() + 1.0)

    def _excused(self, started: float, ended: float) -> bool:
        return any(a <= ended and started <= b for a, b in self.controls)

    def _innocent(self) -> None:
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S) as client:
            while not self.stop.is_set():
                for request in self.requests:
                    started = time.monotonic()
                    try:
                        response = client.post(request.path, json=request.body)
                        got = request.answer(response) if response.status_code == 200 else None
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        self.report.find(f"innocent {request.path}: {exc!r}")
                        continue
                    with self.report.lock:
                        self.report.innocent += 1
                    if got == self.expected[request]:
                        continue
                    if response.status_code != 200 and self._excused(started, time.monotonic()):
                        continue  # its model was being unloaded by a case
                    self.report.find(
                        f"innocent {request.path} answered {response.status_code} "
                        f"{response.text[:300]!r} (expected {self.expected[request]!r})"
                    )

    def _probe(self) -> None:
        while not self.stop.wait(0.05):
            started = time.monotonic()
            try:
                status = httpx.get(f"{self.url}/v2/health/live", timeout=PROBE_TIMEOUT_S)
                ok = status.status_code == 200
            except httpx.HTTPError as exc:
                ok, status = False, exc  # type: ignore[assignment]
            took = time.monotonic() - started
            with self.report.lock:
                self.report.probes += 1
                self.report.slowest_probe_s = max(self.report.slowest_probe_s, took)
            if not ok:
                self.report.find(f"health probe: {status!r} after {took:.1f} s")


# -- HTTP cases ----------------------------------------------------------------------------------


def _plant(body: Any, rng: random.Random, value: Any) -> Any:
    """`body` with one value somewhere in it (a field, an item, the whole) replaced by `value`."""
    if isinstance(body, dict) and body and rng.random() < 0.85:
        key = rng.choice(sorted(body, key=str))
        return {**body, key: _plant(body[key], rng, value)}
    if isinstance(body, list) and body and rng.random() < 0.7:
        i = rng.randrange(len(body))
        return [*body[:i], _plant(body[i], rng, value), *body[i + 1 :]]
    return value


def _operation_strategies(url: str) -> list[tuple[str, Any]]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    strategies = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema raises here
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies.append((f"{operation.label} {mode.value}", operation.as_strategy(mode)))
    return strategies


def _documented(status: int, text: str) -> bool:
    codes = DOCUMENTED_5XX.get(status)
    return codes is not None and any(f'"{code}"' in text for code in codes)


def _restore_models(url: str, names: set[str]) -> None:
    """Load again whatever a case unloaded (or loaded wrong)."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S, headers=headers) as client:
        for name in sorted(names):
            client.post(f"/v2/repository/models/{name}/load")


def fuzz_http(
    url: str,
    report: Report,
    beside: Beside,
    budget: Callable[[], bool],
    seed: int,
    models: set[str],
) -> None:
    """Schemathesis' cases for every documented operation, and hostile values planted into
    positive ones, until `budget()` says stop."""
    strategies = _operation_strategies(url)
    names = [label for label, _ in strategies]
    labels = [label.rsplit(" ", 1)[0] for label in names]  # the operation, without the mode
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    hostile = st.sampled_from(HOSTILE_VALUES) | st.integers() | st.floats() | st.text(max_size=40)

    def one(data: Any) -> None:
        if not budget():
            return
        index = data.draw(st.integers(0, len(strategies) - 1))
        case = data.draw(strategies[index][1])
        if data.draw(st.booleans()) and isinstance(case.body, dict | list):
            rng = random.Random(data.draw(st.integers(0, 2**32)))
            case.body = _plant(case.body, rng, data.draw(hostile))
        control = "/v2/repository/" in case.path and case.method.upper() == "POST"
        try:
            with beside.control() if control else contextlib.nullcontext():
                try:
                    response = case.call(base_url=url, headers=auth, timeout=REQUEST_TIMEOUT_S)
                finally:
                    if control:  # even if the client failed after the server acted
                        _restore_models(url, models)
        except Exception as exc:  # noqa: BLE001 - a case the client itself cannot send
            if "timed out" in str(exc).lower() or "connection" in type(exc).__name__.lower():
                report.find(f"{names[index]}: {type(exc).__name__}: {exc} on {_shown(case)}")
            with report.lock:
                kind = type(exc).__name__
                report.unsent[kind] = report.unsent.get(kind, 0) + 1
            return
        with report.lock:
            report.cases += 1
            report.http_cases += 1
            report.operations.add(labels[index])
        status = response.status_code
        if status >= 500 and not _documented(status, response.text):
            report.find(f"{names[index]}: {status} {response.text[:300]!r} on {_shown(case)}")

    drive(one, budget, seed)


def _shown(case: Any) -> str:
    body = repr(getattr(case, "body", None))
    return f"{case.method} {case.formatted_path} query={case.query} body={body[:400]}"


# -- gRPC cases ----------------------------------------------------------------------------------


def _scalar(fd: pb_descriptor.FieldDescriptor, names: list[str]) -> st.SearchStrategy[Any]:
    kind = pb_descriptor.FieldDescriptor
    if fd.type in (kind.TYPE_INT32, kind.TYPE_SINT32, kind.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if fd.type in (kind.TYPE_INT64, kind.TYPE_SINT64, kind.TYPE_SFIXED64):
        return st.sampled_from([-(2**63), 2**63 - 1, -1, 0, 1]) | st.integers(-(2**63), 2**63 - 1)
    if fd.type in (kind.TYPE_UINT32, kind.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if fd.type in (kind.TYPE_UINT64, kind.TYPE_FIXED64):
        return st.sampled_from([0, 1, 2**64 - 1]) | st.integers(0, 2**64 - 1)
    if fd.type in (kind.TYPE_FLOAT, kind.TYPE_DOUBLE):
        return st.floats(width=32 if fd.type == kind.TYPE_FLOAT else 64)
    if fd.type == kind.TYPE_BOOL:
        return st.booleans()
    if fd.type == kind.TYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values])
    if fd.type == kind.TYPE_BYTES:
        return st.binary(max_size=64)
    special = {"name", "model_name", "datatype"}
    if fd.name in special:
        return st.sampled_from([*names, *DATATYPES]) | st.text(max_size=12)
    return st.text(max_size=16)


def _message(
    descriptor: pb_descriptor.Descriptor, names: list[str], depth: int = 0
) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts of field values for `descriptor` (a subset of its fields), nested to depth 3."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        if fd.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            if fd.message_type.GetOptions().map_entry:
                value = fd.message_type.fields_by_name["value"]
                inner = (
                    _message(value.message_type, names, depth + 1)
                    if value.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE
                    else _scalar(value, names)
                )
                fields[fd.name] = st.dictionaries(st.text(max_size=12), inner, max_size=3)
                continue
            one = _message(fd.message_type, names, depth + 1)
        else:
            one = _scalar(fd, names)
        repeated = _repeated(fd)
        fields[fd.name] = st.lists(one, max_size=5) if repeated else one
    return st.fixed_dictionaries({}, optional=fields)


def _repeated(fd: pb_descriptor.FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


def _fill(message: pb_message.Message, values: dict[str, Any]) -> None:
    for name, value in values.items():
        fd = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if fd.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(item, dict):
                        _fill(target[key], item)
                    else:
                        target[key] = item
            elif _repeated(fd):
                for item in value:
                    _fill(target.add(), item)
            else:
                _fill(target, value)
        elif _repeated(fd):
            target.extend(value)
        else:
            # A oneof member, or a plain field.
            setattr(message, name, value)


@st.composite
def _infer_request(draw: Any, names: list[str]) -> bytes:
    """A ModelInferRequest shaped like a real one, with one thing wrong (or none): the shape,
    the datatype, typed contents or raw contents of another length."""
    request = grpc_service_pb2.ModelInferRequest(model_name=draw(st.sampled_from(names)))
    count = draw(st.integers(0, 3))
    raw = draw(st.booleans())
    for _ in range(count):
        tensor = request.inputs.add()
        tensor.name = draw(st.sampled_from(["input", "text", "x", ""]))
        tensor.datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(
            st.lists(
                st.sampled_from([1, 2, 784, 28, 0, -1, 2**31, 2**62, -(2**63)])
                | st.integers(-3, 1030),
                max_size=4,
            )
        )
        tensor.shape.extend(shape)
        if raw:
            length = draw(st.sampled_from([0, 1, 3, 4, 784 * 4, 784 * 4 + 1, 784 * 8]))
            request.raw_input_contents.append(draw(st.binary(min_size=length, max_size=length)))
        else:
            which = draw(st.sampled_from(["fp32", "int", "bytes", "int64", "none"]))
            size = draw(st.sampled_from([0, 1, 783, 784, 785]))
            if which == "fp32":
                tensor.contents.fp32_contents.extend(
                    draw(st.lists(st.floats(width=32), min_size=size, max_size=size))
                )
            elif which == "int":
                tensor.contents.int_contents.extend([7] * size)
            elif which == "int64":
                tensor.contents.int64_contents.extend([2**62] * size)
            elif which == "bytes":
                tensor.contents.bytes_contents.extend(
                    draw(st.lists(st.binary(max_size=40), min_size=min(size, 3), max_size=3))
                )
    if draw(st.booleans()):  # raw contents that belong to no input
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    for _ in range(draw(st.integers(0, 2))):
        wanted = request.outputs.add()
        wanted.name = draw(st.sampled_from(["probabilities", "log_prob", "y", ""]))
        if draw(st.booleans()):
            wanted.parameters["classification"].int64_param = draw(
                st.sampled_from([-1, 0, 3, 2**62])
            )
    return bytes(request.SerializeToString())


def fuzz_grpc(target: str, report: Report, budget: Callable[[], bool], seed: int) -> None:
    """Generated messages for every unary method of the inference service (repository control
    excluded: the HTTP cases cover it) and health, and garbage bytes for each."""
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    names = ["mnist-mlp", "names-rnn", "names-lm", "no-such-model", ""]
    methods = [
        m
        for m in service.methods
        if not m.client_streaming and not m.server_streaming and "RepositoryModel" not in m.name
    ]
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
    auth = (("authorization", f"Bearer {ADMIN_KEY}"),)

    def call(path: str, payload: bytes) -> None:
        stub = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            stub(payload, timeout=REQUEST_TIMEOUT_S, metadata=auth)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in GRPC_BAD_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
                report.find(f"gRPC {path}: {code} {exc.details()!r} on {payload[:200]!r}")
        with report.lock:
            report.cases += 1
            report.grpc_cases += 1
            report.grpc_methods.add(path)

    def one(data: Any) -> None:
        if not budget():
            return
        kind = data.draw(st.sampled_from(["infer", "any", "garbage", "health"]))
        if kind == "infer":
            call("/inference.GRPCInferenceService/ModelInfer", data.draw(_infer_request(names)))
            return
        if kind == "health":
            payload = data.draw(st.binary(max_size=12) | st.just(b"\n\x04none"))
            call("/grpc.health.v1.Health/Check", payload)
            return
        method = data.draw(st.sampled_from(methods))
        path = f"/{service.full_name}/{method.name}"
        if kind == "garbage":
            call(path, data.draw(st.binary(max_size=64)))
            return
        message = getattr(grpc_service_pb2, method.input_type.name)()
        try:
            _fill(message, data.draw(_message(method.input_type, names)))
        except (TypeError, ValueError):
            return  # a value protobuf itself refuses (e.g. two members of one oneof)
        call(path, bytes(message.SerializeToString()))

    try:
        drive(one, budget, seed)
    finally:
        channel.close()


# -- a whole run ---------------------------------------------------------------------------------


def run(
    url: str,
    grpc_target: str | None,
    models: set[str],
    cases: int | None,
    seconds: float | None,
    seed: int,
) -> Report:
    """HTTP cases and (with `grpc_target`) gRPC cases, three to one, with innocent requests and
    a health prober beside them; then the server must be healthy and answer as before."""
    report = Report()
    deadline = None if seconds is None else time.monotonic() + seconds
    share = 0.75 if grpc_target else 1.0

    def within(part: float) -> Callable[[], bool]:
        def more() -> bool:
            if deadline is not None and time.monotonic() >= deadline - (1 - part) * seconds:  # type: ignore[operator]
                return False
            return cases is None or report.cases < math.ceil(cases * part)

        return more

    with Beside(url, report, innocents(models)) as beside:
        fuzz_http(url, report, beside, within(share), seed, models)
        if grpc_target is not None:
            fuzz_grpc(grpc_target, report, within(1.0), seed)
    _restore_models(url, models)
    for name in sorted(models):
        ready = httpx.get(f"{url}/v2/models/{name}/ready", timeout=REQUEST_TIMEOUT_S)
        if ready.status_code != 200:
            report.find(f"after the run: {name} is not ready ({ready.status_code})")
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        for request, expected in beside.expected.items():
            response = client.post(request.path, json=request.body)
            if response.status_code != 200 or request.answer(response) != expected:
                report.find(f"after the run: {request.path} answered {response.text[:300]!r}")
    if httpx.get(f"{url}/v2/health/ready", timeout=PROBE_TIMEOUT_S).status_code != 200:
        report.find("after the run: /v2/health/ready is not 200")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    args = parser.parse_args(argv)
    if args.cases is None and args.seconds is None:
        args.cases = 1000
    settings = Settings(
        model_repository=args.repository,
        admin_api_key=ADMIN_KEY,
        grpc_port=0,
        access_log=False,
        max_items_per_request=64,
    )
    models = {p.name for p in args.repository.iterdir() if p.is_dir()}
    with tempfile.TemporaryDirectory(), serve(settings) as (url, app):
        started = time.monotonic()
        report = run(url, f"127.0.0.1:{app.grpc_port}", models, args.cases, args.seconds, args.seed)
        took = time.monotonic() - started
    print(
        f"cases: {report.cases} ({report.http_cases} HTTP, {report.grpc_cases} gRPC) in "
        f"{took:.0f} s, seed {args.seed}; innocent requests beside them: {report.innocent}; "
        f"health probes: {report.probes}, slowest {report.slowest_probe_s * 1000:.0f} ms; "
        f"findings: {len(report.findings)}; not sendable by the client: {report.unsent}"
    )
    for finding in report.findings:
        print(f"  - {finding}")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
