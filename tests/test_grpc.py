"""The Open Inference Protocol over gRPC (BATCHSERVE_GRPC_PORT), as the official Triton gRPC client
sees it against a live server over the shipped models: the same checks as tests/test_v2.py's
tritonclient.http tests, answers identical to REST's for the same inputs, and then what is
gRPC's own: status codes, keys in metadata, deadlines, request ids, message limits, the health
service, and typed (non-raw) tensor contents."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.api.grpc.generated import grpc_service_pb2 as pb
from app.api.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from app.api.grpc.generated import model_config_pb2
from app.main import Application
from tests.conftest import live_app, settings_for, write_tiny_repository
from tests.numbers import LOG_PROB_TOLERANCE, PROBABILITY_TOLERANCE
from tests.v1_reference import model_labels, v1_labels, v1_probabilities

MODELS = ("mnist-mlp", "names-rnn", "names-lm")
NAMES = ["Smith", "Nakamura", "Rossi", "Kowalski"]
RTOL, ATOL = 1e-6, PROBABILITY_TOLERANCE
ROOT = Path(__file__).resolve().parents[1]
KEY, ADMIN_KEY = "grpc-user-key", "grpc-admin-key"
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def url(shipped_server: str) -> str:
    return shipped_server


@pytest.fixture(scope="module")
def client(shipped_grpc: str) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(shipped_grpc) as grpc_client:
        yield grpc_client


@pytest.fixture(scope="module")
def rest(url: str) -> Iterator[triton_http.InferenceServerClient]:
    with triton_http.InferenceServerClient(url.removeprefix("http://")) as http_client:
        yield http_client


@pytest.fixture(scope="module")
def stub(shipped_grpc: str) -> Iterator[Any]:
    """The generated stub on a plain channel, for what tritonclient does not expose."""
    with grpc.insecure_channel(shipped_grpc) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((3, 784), dtype=np.float32)


def _strings(array: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in array.tolist()]


def _text(names: list[str]) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("text", [len(names)], "BYTES")
    tensor.set_data_from_numpy(np.array(names, dtype=object))
    return tensor


def _image(images: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return tensor


def _outputs(names: list[str]) -> list[triton_grpc.InferRequestedOutput]:
    return [triton_grpc.InferRequestedOutput(n) for n in names]


def _status(error: pytest.ExceptionInfo[triton_grpc.InferenceServerException]) -> str:
    return str(error.value.status())


# -- the same checks as the tritonclient.http tests --------------------------------------------


def test_server_is_live_and_ready(client: triton_grpc.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


@pytest.mark.parametrize("model", MODELS)
def test_every_shipped_model_and_its_first_version_is_ready(
    client: triton_grpc.InferenceServerClient, model: str
) -> None:
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, "1")


def test_an_unknown_model_is_not_ready(client: triton_grpc.InferenceServerClient) -> None:
    assert not client.is_model_ready("no-such-model")


def test_server_metadata_names_batchserve_and_its_extensions(
    client: triton_grpc.InferenceServerClient,
) -> None:
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "batchserve" and metadata["version"]
    assert {"binary_tensor_data", "classification", "statistics"} <= set(metadata["extensions"])
    assert "model_repository" not in metadata["extensions"]  # no admin key on this server


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_is_the_rest_metadata(
    client: triton_grpc.InferenceServerClient, url: str, model: str
) -> None:
    over_grpc = client.get_model_metadata(model, as_json=True)
    over_rest = httpx.get(f"{url}/v2/models/{model}").json()
    for tensors in (over_grpc["inputs"], over_grpc["outputs"]):
        for tensor in tensors:
            tensor["shape"] = [int(d) for d in tensor["shape"]]  # int64: strings in JSON
    assert over_grpc["name"] == model and over_grpc["platform"] == over_rest["platform"]
    assert over_grpc["versions"] == over_rest["versions"]
    assert over_grpc["inputs"] == over_rest["inputs"]
    assert over_grpc["outputs"] == over_rest["outputs"]


def test_version_metadata_describes_that_version(
    client: triton_grpc.InferenceServerClient,
) -> None:
    assert client.get_model_metadata("names-lm", "1").versions == ["1"]


def test_mnist_infer_gives_the_probabilities_and_labels_of_v1(
    client: triton_grpc.InferenceServerClient, url: str, images: np.ndarray
) -> None:
    result = client.infer(
        "mnist-mlp", [_image(images)], outputs=_outputs(["probabilities", "label"])
    )
    expected = v1_probabilities(url, "mnist-mlp", images.tolist())
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=RTOL, atol=ATOL)
    assert _strings(result.as_numpy("label")) == v1_labels(url, "mnist-mlp", images.tolist())


def test_names_rnn_infer_gives_the_probabilities_and_labels_of_v1(
    client: triton_grpc.InferenceServerClient, url: str
) -> None:
    result = client.infer("names-rnn", [_text(NAMES)], outputs=_outputs(["probabilities", "label"]))
    expected = v1_probabilities(url, "names-rnn", NAMES)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=RTOL, atol=ATOL)
    assert _strings(result.as_numpy("label")) == v1_labels(url, "names-rnn", NAMES)


def test_names_lm_infer_gives_the_scores_of_v1(
    client: triton_grpc.InferenceServerClient, url: str
) -> None:
    outputs = _outputs(["log_prob", "num_tokens", "perplexity"])
    result = client.infer("names-lm", [_text(NAMES)], outputs=outputs)
    scores = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": NAMES}).json()["scores"]
    for field in ("log_prob", "perplexity"):
        expected = [s[field] for s in scores]
        np.testing.assert_allclose(
            result.as_numpy(field), expected, rtol=RTOL, atol=LOG_PROB_TOLERANCE
        )
    assert result.as_numpy("num_tokens").tolist() == [s["num_tokens"] for s in scores]
    assert result.as_numpy("num_tokens").dtype == np.int32


def test_infer_without_requested_outputs_returns_all_of_them(
    client: triton_grpc.InferenceServerClient,
) -> None:
    result = client.infer("names-lm", [_text(NAMES)])
    outputs = result.get_response().outputs
    assert [o.name for o in outputs] == ["log_prob", "num_tokens", "perplexity"]
    assert result.as_numpy("log_prob").shape == (len(NAMES),)


def test_infer_on_a_named_version_answers_from_it(
    client: triton_grpc.InferenceServerClient,
) -> None:
    result = client.infer("names-rnn", [_text(NAMES[:1])], model_version="1")
    assert result.get_response().model_version == "1"


def test_triton_client_raises_the_servers_error_message_as_invalid_argument(
    client: triton_grpc.InferenceServerClient,
) -> None:
    with pytest.raises(triton_grpc.InferenceServerException, match="input 'text'") as error:
        client.infer("mnist-mlp", [_text(["Smith"])])
    assert _status(error) == str(Code.INVALID_ARGUMENT)


# -- REST and gRPC agree -----------------------------------------------------------------------


def _rest_inputs(model: str, images: np.ndarray) -> list[triton_http.InferInput]:
    if model == "mnist-mlp":
        tensor = triton_http.InferInput("input", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=True)
    else:
        tensor = triton_http.InferInput("text", [len(NAMES)], "BYTES")
        tensor.set_data_from_numpy(np.array(NAMES, dtype=object), binary_data=True)
    return [tensor]


@pytest.mark.parametrize("model", MODELS)
def test_rest_and_grpc_answer_the_same_inputs_the_same(
    client: triton_grpc.InferenceServerClient,
    rest: triton_http.InferenceServerClient,
    images: np.ndarray,
    model: str,
) -> None:
    grpc_inputs = [_image(images)] if model == "mnist-mlp" else [_text(NAMES)]
    over_grpc = client.infer(model, grpc_inputs)
    over_rest = rest.infer(model, _rest_inputs(model, images))
    names = [o.name for o in over_grpc.get_response().outputs]
    assert names == [o["name"] for o in over_rest.get_response()["outputs"]]
    tolerance = LOG_PROB_TOLERANCE if model == "names-lm" else PROBABILITY_TOLERANCE
    for name in names:
        a, b = over_grpc.as_numpy(name), over_rest.as_numpy(name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if a.dtype == object:
            assert a.tolist() == b.tolist(), name
        else:
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=tolerance, err_msg=name)


@pytest.mark.parametrize("model", MODELS)
def test_rest_and_grpc_give_the_same_model_configuration(
    client: triton_grpc.InferenceServerClient, url: str, model: str
) -> None:
    over_grpc = client.get_model_config(model).config
    over_rest = json_format.ParseDict(
        httpx.get(f"{url}/v2/models/{model}/config").json(), model_config_pb2.ModelConfig()
    )
    assert over_grpc == over_rest
    assert over_grpc.max_batch_size > 0 and over_grpc.HasField("dynamic_batching")


def test_statistics_count_grpc_and_rest_requests_alike(
    client: triton_grpc.InferenceServerClient, url: str
) -> None:
    def counts() -> tuple[int, int]:
        over_grpc = client.get_inference_statistics("names-lm", "1").model_stats[0]
        over_rest = httpx.get(f"{url}/v2/models/names-lm/versions/1/stats").json()
        rest_success = over_rest["model_stats"][0]["inference_stats"]["success"]["count"]
        assert over_grpc.inference_stats.success.count == rest_success
        return over_grpc.inference_stats.success.count, over_grpc.inference_count

    requests, items = counts()
    client.infer("names-lm", [_text(NAMES)])
    httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": NAMES[:2]})
    assert counts() == (requests + 2, items + len(NAMES) + 2)


def test_classification_gives_the_top_classes_as_value_index_label(
    client: triton_grpc.InferenceServerClient, url: str
) -> None:
    output = triton_grpc.InferRequestedOutput("probabilities", class_count=2)
    result = client.infer("names-rnn", [_text(NAMES[:2])], outputs=[output])
    classes = result.as_numpy("probabilities")
    assert classes.shape == (2, 2)
    labels = model_labels(url, "names-rnn")
    expected = v1_probabilities(url, "names-rnn", NAMES[:2])
    for row, probabilities in zip(classes.tolist(), expected, strict=True):
        value, index, label = row[0].decode().split(":")
        assert int(index) == int(np.argmax(probabilities)) and label == labels[int(index)]
        assert abs(float(value) - probabilities.max()) < 1e-6 + PROBABILITY_TOLERANCE


def test_a_gzip_compressed_call_is_answered(client: triton_grpc.InferenceServerClient) -> None:
    result = client.infer("names-rnn", [_text(NAMES)], compression_algorithm="gzip")
    assert len(result.as_numpy("label")) == len(NAMES)


# -- gRPC's own --------------------------------------------------------------------------------


def test_an_unknown_model_is_not_found(client: triton_grpc.InferenceServerClient) -> None:
    with pytest.raises(triton_grpc.InferenceServerException, match="no-such-model") as error:
        client.infer("no-such-model", [_text(["Smith"])])
    assert _status(error) == str(Code.NOT_FOUND)
    with pytest.raises(triton_grpc.InferenceServerException) as error:
        client.get_model_metadata("no-such-model")
    assert _status(error) == str(Code.NOT_FOUND)


def test_the_request_id_is_echoed_in_the_answer_and_its_trailing_metadata(stub: Any) -> None:
    request = pb.ModelInferRequest(model_name="names-rnn", id="call-17")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"Smith")
    answer, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "trace-17")])
    assert answer.id == "call-17"
    assert ("x-request-id", "trace-17") in call.trailing_metadata()


def test_typed_contents_are_answered_with_typed_contents_equal_to_raw(
    stub: Any, images: np.ndarray
) -> None:
    typed = pb.ModelInferRequest(model_name="mnist-mlp")
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=list(images.shape))
    tensor.contents.fp32_contents.extend(images.ravel().tolist())
    raw = pb.ModelInferRequest(model_name="mnist-mlp")
    raw.inputs.add(name="input", datatype="FP32", shape=list(images.shape))
    raw.raw_input_contents.append(images.tobytes())
    typed_answer, raw_answer = stub.ModelInfer(typed), stub.ModelInfer(raw)
    assert not typed_answer.raw_output_contents and len(raw_answer.raw_output_contents) == 2
    probabilities = np.frombuffer(raw_answer.raw_output_contents[0], dtype="<f4")
    np.testing.assert_allclose(
        typed_answer.outputs[0].contents.fp32_contents, probabilities, rtol=RTOL, atol=ATOL
    )
    assert len(typed_answer.outputs[1].contents.bytes_contents) == len(images)


def test_typed_contents_beside_raw_contents_are_invalid(stub: Any) -> None:
    request = pb.ModelInferRequest(model_name="names-rnn")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"Smith")
    request.raw_input_contents.append(b"\x05\x00\x00\x00Smith")
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == Code.INVALID_ARGUMENT
    assert "raw_input_contents" in error.value.details()


def test_data_in_the_wrong_typed_field_is_invalid(stub: Any) -> None:
    request = pb.ModelInferRequest(model_name="mnist-mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 784])
    tensor.contents.int_contents.extend([0] * 784)
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == Code.INVALID_ARGUMENT
    assert "fp32_contents" in error.value.details()


@pytest.mark.parametrize(
    ("method", "request_type"),
    [("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest),
     ("TraceSetting", pb.TraceSettingRequest)],
)  # fmt: skip
def test_what_batchserve_does_not_offer_is_unimplemented(
    stub: Any, method: str, request_type: Any
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, method)(request_type())
    assert error.value.code() == Code.UNIMPLEMENTED and "batchserve" in error.value.details()


def test_streaming_inference_is_unimplemented(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as error:
        list(stub.ModelStreamInfer(iter([pb.ModelInferRequest(model_name="names-rnn")])))
    assert error.value.code() == Code.UNIMPLEMENTED


def test_the_repository_rpcs_are_off_without_an_admin_key(
    client: triton_grpc.InferenceServerClient,
) -> None:
    with pytest.raises(triton_grpc.InferenceServerException) as error:
        client.get_model_repository_index()
    assert _status(error) == str(Code.UNIMPLEMENTED)


def _health(target: str, service: str = "") -> Any:
    with grpc.insecure_channel(target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        return check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_the_health_service_serves_while_the_server_is_ready(shipped_grpc: str) -> None:
    assert _health(shipped_grpc) == health_pb2.HealthCheckResponse.SERVING
    service = "inference.GRPCInferenceService"
    assert _health(shipped_grpc, service) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        _health(shipped_grpc, "no.such.Service")
    assert error.value.code() == Code.NOT_FOUND


def test_the_regenerated_stubs_match_the_committed_ones_and_tritonclients() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.api.grpc.regenerate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- servers of their own ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Application]]:
    """Keys on, a one-item queue that refuses at once when full, batches that wait 1.5 s for
    company, a 1 MiB message limit."""
    repository = write_tiny_repository(tmp_path_factory.mktemp("grpc") / "repository")
    settings = settings_for(
        repository,
        grpc_port=0,
        api_keys=KEY,
        admin_api_key=ADMIN_KEY,
        max_queue_size=1,
        max_queue_wait_ms=0,
        max_batch_delay_ms=1500,
        batch_idle_turns=0,
        max_body_bytes=1 << 20,
    )
    with live_app(settings) as served:
        yield served


def _grpc_client(served: tuple[str, Application]) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(f"127.0.0.1:{served[1].grpc_port}")


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize("key", [None, "wrong-key"], ids=["missing", "wrong"])
def test_a_missing_or_wrong_key_is_unauthenticated(
    guarded: tuple[str, Application], key: str | None
) -> None:
    client = _grpc_client(guarded)
    headers = _bearer(key) if key else None
    for call in (
        lambda: client.infer("names-rnn", [_text(["Kim"])], headers=headers),
        lambda: client.get_model_metadata("names-rnn", headers=headers),
        lambda: client.get_inference_statistics(headers=headers),
    ):
        with pytest.raises(triton_grpc.InferenceServerException, match="Authorization") as error:
            call()
        assert _status(error) == str(Code.UNAUTHENTICATED)
        assert key is None or key not in str(error.value.message())
    assert client.is_server_live()  # health stays open


def test_a_configured_key_in_the_authorization_metadata_serves(
    guarded: tuple[str, Application],
) -> None:
    client = _grpc_client(guarded)
    result = client.infer("names-rnn", [_text(["Kim"])], headers=_bearer(KEY))
    assert len(result.as_numpy("label")) == 1
    index = client.get_model_repository_index(headers=_bearer(ADMIN_KEY), as_json=True)
    assert {m["name"] for m in index["models"]} == set(MODELS)
    with pytest.raises(triton_grpc.InferenceServerException) as error:
        client.get_model_repository_index(headers=_bearer(KEY))  # the user key is not admin
    assert _status(error) == str(Code.UNAUTHENTICATED)


def test_the_grpc_deadline_is_the_requests_deadline(guarded: tuple[str, Application]) -> None:
    # The batch waits 1.5 s for company; a 0.3 s deadline passes first.
    client = _grpc_client(guarded)
    with pytest.raises(triton_grpc.InferenceServerException) as error:
        client.infer("names-rnn", [_text(["Kim"])], headers=_bearer(KEY), client_timeout=0.3)
    assert _status(error) == str(Code.DEADLINE_EXCEEDED)


def test_a_full_queue_is_resource_exhausted(guarded: tuple[str, Application]) -> None:
    first_done = threading.Event()
    client = _grpc_client(guarded)

    def first() -> None:
        client.infer("names-lm", [_text(["Kim"])], headers=_bearer(KEY), client_timeout=10)
        first_done.set()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        for _ in range(100):  # until the first request holds the queue's one place
            if guarded[1].plane.registry.get("names-lm").batcher.queued_items:
                break
            threading.Event().wait(0.02)
        with pytest.raises(triton_grpc.InferenceServerException, match="queue") as error:
            _grpc_client(guarded).infer("names-lm", [_text(["Lee"])], headers=_bearer(KEY))
        assert _status(error) == str(Code.RESOURCE_EXHAUSTED)
    finally:
        thread.join(timeout=10)
    assert first_done.is_set()


def test_an_oversized_message_is_refused_and_the_server_keeps_serving(
    guarded: tuple[str, Application],
) -> None:
    client = _grpc_client(guarded)
    rows = np.zeros((400, 784), dtype=np.float32)  # 1.25 MB of tensor data, over the 1 MiB limit
    with pytest.raises(triton_grpc.InferenceServerException) as error:
        client.infer("mnist-mlp", [_image(rows)], headers=_bearer(KEY))
    assert _status(error) == str(Code.RESOURCE_EXHAUSTED)
    result = client.infer("mnist-mlp", [_image(rows[:1])], headers=_bearer(KEY))
    assert result.as_numpy("probabilities").shape == (1, 10)


def test_while_draining_calls_are_unavailable_and_health_is_not_serving(
    guarded: tuple[str, Application],
) -> None:
    _, app = guarded
    target = f"127.0.0.1:{app.grpc_port}"
    client = _grpc_client(guarded)
    app.lifecycle.draining = True  # what SIGTERM sets
    try:
        with pytest.raises(triton_grpc.InferenceServerException, match="shutting down") as error:
            client.infer("names-rnn", [_text(["Kim"])], headers=_bearer(KEY))
        assert _status(error) == str(Code.UNAVAILABLE)
        assert client.is_server_live() and not client.is_server_ready()
        assert _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        app.lifecycle.draining = False
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING


def test_while_the_models_load_health_is_not_serving_and_inference_unavailable(
    guarded: tuple[str, Application],
) -> None:
    _, app = guarded
    target = f"127.0.0.1:{app.grpc_port}"
    app.lifecycle.starting = True  # as from the lifespan's start until the repository is loaded
    try:
        assert _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(triton_grpc.InferenceServerException, match="loading") as error:
            _grpc_client(guarded).infer("names-rnn", [_text(["Kim"])], headers=_bearer(KEY))
        assert _status(error) == str(Code.UNAVAILABLE)
    finally:
        app.lifecycle.starting = False


def test_a_model_that_failed_to_load_makes_health_not_serving(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    (repository / "names-rnn" / "1" / "model.safetensors").write_bytes(b"not safetensors")
    with live_app(settings_for(repository, grpc_port=0)) as (_, app):
        target = f"127.0.0.1:{app.grpc_port}"
        assert _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
        client = triton_grpc.InferenceServerClient(target)
        assert not client.is_server_ready() and not client.is_model_ready("names-rnn")
        assert client.is_model_ready("names-lm")


def test_the_admin_key_unloads_and_loads_a_model_over_grpc(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    settings = settings_for(repository, grpc_port=0, admin_api_key=ADMIN_KEY)
    with live_app(settings) as served:
        client, admin = _grpc_client(served), _bearer(ADMIN_KEY)
        client.unload_model("names-lm", headers=admin)
        assert not client.is_model_ready("names-lm")
        assert client.is_server_ready()  # unloaded on purpose: not counted against readiness
        client.load_model("names-lm", headers=admin)
        assert client.is_model_ready("names-lm")
        with pytest.raises(triton_grpc.InferenceServerException, match="config") as error:
            client.load_model("names-lm", headers=admin, config='{"max_batch_size": 8}')
        assert _status(error) == str(Code.INVALID_ARGUMENT)
        with pytest.raises(triton_grpc.InferenceServerException) as error:
            client.load_model("no-such-model", headers=admin)
        assert _status(error) == str(Code.NOT_FOUND)
