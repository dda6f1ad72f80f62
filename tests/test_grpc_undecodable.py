"""A gRPC message that does not decode is the client's fault: INVALID_ARGUMENT naming the message
type, with an access-log line and a metric, on the inference service and on health alike (grpc
itself answers UNKNOWN "Unexpected DecodeError" with a traceback). Raw bytes sent through a
real channel with identity serializers to a live server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from app.main import Application
from tests.conftest import live_app, settings_for, write_tiny_repository

GARBAGE = [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 3, b"\x12\x05ab"]
METHODS = [
    ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
    ("/inference.GRPCInferenceService/ModelMetadata", "inference.ModelMetadataRequest"),
    ("/inference.GRPCInferenceService/ModelReady", "inference.ModelReadyRequest"),
    ("/inference.GRPCInferenceService/ServerLive", "inference.ServerLiveRequest"),
    ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Application]]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("grpc") / "repository")
    with live_app(settings_for(repository, grpc_port=0, access_log=True)) as (url, app):
        yield url, app


def _decodes_badly(payload: bytes, name: str) -> bool:
    from grpc_health.v1 import health_pb2

    from app.api.grpc.generated import grpc_service_pb2

    kind = name.rpartition(".")[2]
    message = getattr(grpc_service_pb2, kind, None) or getattr(health_pb2, kind)
    try:
        message.FromString(payload)
    except Exception:  # noqa: BLE001 - DecodeError
        return True
    return False


def _access_lines(caplog: pytest.LogCaptureFixture, path: str, wanted: int) -> list[Any]:
    """The access lines of `path`, waiting a little for the last (written after the answer)."""
    for _ in range(100):
        records = [r for r in caplog.records if r.name == "batchserve.access"]
        lines = [json.loads(r.getMessage()) for r in records]
        mine = [line for line in lines if line["path"] == path]
        if len(mine) >= wanted:
            break
        time.sleep(0.02)
    return mine


@pytest.mark.parametrize(("method", "type_name"), METHODS)
def test_an_undecodable_message_is_invalid_argument_logged_and_counted(
    served: tuple[str, Application],
    method: str,
    type_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, app = served
    garbage = [g for g in GARBAGE if _decodes_badly(g, type_name)]
    assert garbage  # the payloads are garbage to this message type
    before = httpx.get(f"{url}/metrics").text.count("\n")
    with (
        caplog.at_level("INFO", logger="batchserve.access"),
        grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel,
    ):
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for payload in garbage:
            with pytest.raises(grpc.RpcError) as raised:
                call(payload, timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
            assert type_name in raised.value.details()
        mine = _access_lines(caplog, method, len(garbage))
    assert len(mine) == len(garbage) and all(line["status"] == 400 for line in mine), mine
    assert all(line["error"] == "malformed_request" for line in mine)
    metrics = httpx.get(f"{url}/metrics").text
    assert 'batchserve_rejected_requests_total{reason="malformed_request"}' in metrics
    assert metrics.count("\n") >= before
    # And the server goes on answering well-formed calls.
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_a_well_formed_health_check_still_answers(served: tuple[str, Application]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, app = served
    with grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_undecodable_bytes_are_garbage_to_protobuf_itself(tmp_path: Path) -> None:
    """The payloads above are rejected by protobuf's own parser (so the server is not
    answering INVALID_ARGUMENT to messages that decode)."""
    assert _decodes_badly(GARBAGE[0], "inference.ModelInferRequest")
    assert not _decodes_badly(b"", "inference.ModelInferRequest")
