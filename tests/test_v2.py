"""The Open Inference Protocol (`/v2`) as the official Triton HTTP client sees it, against a live
server over the shipped models: health, metadata, and `infer` in JSON and binary form giving the
numbers `/v1` gives. Then, with plain HTTP, how bad tensors are refused."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from app.main import create_app
from tests.conftest import SHIPPED, live_server, settings_for, write_tiny_repository
from tests.numbers import LOG_PROB_TOLERANCE, PROBABILITY_TOLERANCE, assert_same_numbers
from tests.v1_reference import model_labels, v1_labels, v1_probabilities

MODELS = ("mnist-mlp", "names-rnn", "names-lm")
NAMES = ["Smith", "Nakamura", "Rossi", "Kowalski"]
# FP32 on the wire; /v1 answers float64 sums; the requests may run in batches of other sizes.
RTOL, ATOL = 1e-6, PROBABILITY_TOLERANCE


def _shipped_complete() -> bool:
    return all((SHIPPED / m / "1" / "model.safetensors").is_file() for m in MODELS)


@pytest.fixture(scope="module")
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shipped models once they are all committed; tiny stand-ins with the same interfaces
    until then."""
    if _shipped_complete():
        yield request.getfixturevalue("shipped_server")
        return
    repository = write_tiny_repository(tmp_path_factory.mktemp("v2") / "repository")
    with live_server(settings_for(repository)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url.removeprefix("http://")) as triton_client:
        yield triton_client


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((3, 784), dtype=np.float32)


def _text_input(names: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(names)], "BYTES")
    tensor.set_data_from_numpy(np.array(names, dtype=object), binary_data=binary)
    return tensor


def _outputs(names: list[str], binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(n, binary_data=binary) for n in names]


def _strings(array: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in array.tolist()]


def _infer(url: str, model: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body)


def _image_request(rows: int = 1, **overrides: Any) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "FP32", "shape": [rows, 784], "data": [0.5] * 784 * rows}
    tensor.update(overrides)
    return {"inputs": [tensor]}


# -- the Triton client -------------------------------------------------------------------------


def test_server_is_live_and_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


@pytest.mark.parametrize("model", MODELS)
def test_every_shipped_model_and_its_first_version_is_ready(
    client: triton.InferenceServerClient, model: str
) -> None:
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, "1")


def test_an_unknown_model_is_not_ready(client: triton.InferenceServerClient) -> None:
    assert not client.is_model_ready("no-such-model")


def test_server_metadata_names_batchserve_and_the_binary_extension(
    client: triton.InferenceServerClient,
) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "batchserve" and metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]
    assert "model_repository" not in metadata["extensions"]  # no admin key on this server


def _expected_tensors(url: str, model: str) -> tuple[list[dict], list[dict]]:
    if model == "mnist-mlp":
        inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}]
    else:
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    if model == "names-lm":
        outputs = [
            {"name": "log_prob", "datatype": "FP32", "shape": [-1]},
            {"name": "num_tokens", "datatype": "INT32", "shape": [-1]},
            {"name": "perplexity", "datatype": "FP32", "shape": [-1]},
        ]
    else:
        classes = len(model_labels(url, model))
        outputs = [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]
    return inputs, outputs


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_gives_the_contract_tensor_names_datatypes_and_shapes(
    client: triton.InferenceServerClient, url: str, model: str
) -> None:
    metadata = client.get_model_metadata(model)
    inputs, outputs = _expected_tensors(url, model)
    assert metadata["name"] == model and metadata["platform"] == "pytorch"
    assert "1" in metadata["versions"]
    assert metadata["inputs"] == inputs and metadata["outputs"] == outputs


def test_version_metadata_describes_that_version(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("names-lm", "1")
    assert metadata["versions"] == ["1"] and metadata["state"] == "ready"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_mnist_infer_gives_the_probabilities_and_labels_of_v1(
    client: triton.InferenceServerClient, url: str, images: np.ndarray, binary: bool
) -> None:
    tensor = triton.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    result = client.infer(
        "mnist-mlp", [tensor], outputs=_outputs(["probabilities", "label"], binary)
    )
    expected = v1_probabilities(url, "mnist-mlp", images.tolist())
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=RTOL, atol=ATOL)
    assert _strings(result.as_numpy("label")) == v1_labels(url, "mnist-mlp", images.tolist())


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_names_rnn_infer_gives_the_probabilities_and_labels_of_v1(
    client: triton.InferenceServerClient, url: str, binary: bool
) -> None:
    outputs = _outputs(["probabilities", "label"], binary)
    result = client.infer("names-rnn", [_text_input(NAMES, binary)], outputs=outputs)
    expected = v1_probabilities(url, "names-rnn", NAMES)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=RTOL, atol=ATOL)
    assert _strings(result.as_numpy("label")) == v1_labels(url, "names-rnn", NAMES)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_names_lm_infer_gives_the_scores_of_v1(
    client: triton.InferenceServerClient, url: str, binary: bool
) -> None:
    outputs = _outputs(["log_prob", "num_tokens", "perplexity"], binary)
    result = client.infer("names-lm", [_text_input(NAMES, binary)], outputs=outputs)
    scores = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": NAMES}).json()["scores"]
    for field in ("log_prob", "perplexity"):
        expected = [s[field] for s in scores]
        np.testing.assert_allclose(
            result.as_numpy(field), expected, rtol=RTOL, atol=LOG_PROB_TOLERANCE
        )
    assert result.as_numpy("num_tokens").tolist() == [s["num_tokens"] for s in scores]
    assert result.as_numpy("num_tokens").dtype == np.int32


def test_infer_without_requested_outputs_returns_all_of_them_as_binary(
    client: triton.InferenceServerClient,
) -> None:
    # The Triton client asks for binary_data_output when no outputs are named.
    result = client.infer("names-lm", [_text_input(NAMES, binary=True)])
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["log_prob", "num_tokens", "perplexity"]
    assert all(o["parameters"]["binary_data_size"] > 0 for o in outputs)
    assert result.as_numpy("log_prob").shape == (len(NAMES),)


def test_infer_on_a_named_version_answers_from_it(client: triton.InferenceServerClient) -> None:
    result = client.infer("names-rnn", [_text_input(NAMES[:1], False)], model_version="1")
    assert result.get_response()["model_version"] == "1"


def test_triton_client_raises_the_servers_error_message(
    client: triton.InferenceServerClient,
) -> None:
    tensor = triton.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["Smith"], dtype=object))
    with pytest.raises(triton.InferenceServerException, match="input 'text'"):
        client.infer("mnist-mlp", [tensor])


# -- plain HTTP ---------------------------------------------------------------------------------


def test_request_id_is_echoed(url: str) -> None:
    response = _infer(url, "mnist-mlp", {**_image_request(), "id": "request-17"})
    assert response.status_code == 200 and response.json()["id"] == "request-17"


def test_outputs_selects_only_the_named_outputs(url: str) -> None:
    response = _infer(url, "mnist-mlp", {**_image_request(), "outputs": [{"name": "label"}]})
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["label"]
    assert outputs[0]["datatype"] == "BYTES" and outputs[0]["shape"] == [1]


def test_json_outputs_are_flat_row_major_with_their_shape(url: str) -> None:
    response = _infer(url, "mnist-mlp", _image_request(rows=2))
    probabilities = response.json()["outputs"][0]
    assert probabilities["shape"] == [2, 10] and len(probabilities["data"]) == 20


def test_nested_and_flat_input_data_give_the_same_answer(url: str, images: np.ndarray) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": [3, 784]}
    flat = _infer(url, "mnist-mlp", {"inputs": [{**tensor, "data": images.ravel().tolist()}]})
    nested = _infer(url, "mnist-mlp", {"inputs": [{**tensor, "data": images.tolist()}]})
    assert flat.status_code == nested.status_code == 200
    assert_same_numbers(flat.json()["outputs"], nested.json()["outputs"])


def test_parameters_are_accepted_and_change_nothing(url: str) -> None:
    body = {**_image_request(), "parameters": {"priority": 1, "custom": "x"}}
    with_parameters, without = (
        _infer(url, "mnist-mlp", body),
        _infer(url, "mnist-mlp", _image_request()),
    )
    assert with_parameters.status_code == 200
    assert_same_numbers(with_parameters.json()["outputs"], without.json()["outputs"])


def test_wrong_datatype_is_a_400_naming_the_input_and_both_types(url: str) -> None:
    response = _infer(url, "mnist-mlp", _image_request(datatype="FP64"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert "input 'input'" in error and "FP64" in error and "FP32" in error


@pytest.mark.parametrize(
    "shape", [[1, 28, 28], [784], [1, 783], [0, 784]], ids=["3d", "no-batch", "width", "empty"]
)
def test_a_shape_that_does_not_fit_the_metadata_is_a_400(url: str, shape: list[int]) -> None:
    response = _infer(url, "mnist-mlp", _image_request(shape=shape))
    assert response.status_code == 400
    assert "input 'input'" in response.json()["error"] and "shape" in response.json()["error"]


def test_data_with_fewer_elements_than_the_shape_is_a_400(url: str) -> None:
    response = _infer(url, "mnist-mlp", _image_request(shape=[2, 784]))
    assert response.status_code == 400
    assert "784 elements" in response.json()["error"] and "1568" in response.json()["error"]


def test_strings_in_fp32_data_are_a_400(url: str) -> None:
    response = _infer(url, "mnist-mlp", _image_request(data=["0.5"] * 784))
    assert response.status_code == 400
    assert "must be numbers" in response.json()["error"]


def test_a_value_outside_the_input_range_is_a_400_naming_the_row(url: str) -> None:
    response = _infer(url, "mnist-mlp", _image_request(data=[0.5] * 783 + [7.0]))
    assert response.status_code == 400
    assert response.json()["error"].startswith("input[0]: element 783")


def test_an_unknown_output_name_is_a_400_listing_the_outputs(url: str) -> None:
    response = _infer(url, "mnist-mlp", {**_image_request(), "outputs": [{"name": "logits"}]})
    assert response.status_code == 400
    assert "'logits'" in response.json()["error"] and "probabilities" in response.json()["error"]


def test_an_unknown_input_name_is_a_400_listing_the_inputs(url: str) -> None:
    response = _infer(url, "mnist-mlp", _image_request(name="pixels"))
    assert response.status_code == 400
    assert "'pixels'" in response.json()["error"] and "['input']" in response.json()["error"]


def test_a_string_with_characters_outside_the_alphabet_is_a_400_naming_it(url: str) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["Kim", "#"]}]}
    response = _infer(url, "names-rnn", body)
    assert response.status_code == 400 and response.json()["error"].startswith("text[1]:")


def test_binary_outputs_follow_the_json_header_as_the_extension_defines(url: str) -> None:
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": NAMES[:2]}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
    }
    response = _infer(url, "names-rnn", body)
    header_length = int(response.headers["inference-header-content-length"])
    assert response.headers["content-type"] == "application/octet-stream"
    header = json.loads(response.content[:header_length])
    payload = response.content[header_length:]
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(payload)
    labels, offset = [], 0
    while offset < len(payload):
        (size,) = struct.unpack_from("<I", payload, offset)
        labels.append(payload[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    assert labels == v1_labels(url, "names-rnn", NAMES[:2])


def _binary_text_request(names: list[str], declared_size: int | None = None) -> tuple[bytes, str]:
    payload = b"".join(struct.pack("<I", len(n)) + n.encode() for n in names)
    size = len(payload) if declared_size is None else declared_size
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(names)]}
    parameters = {"binary_data_size": size}
    header = json.dumps({"inputs": [{**tensor, "parameters": parameters}]}).encode()
    return header + payload, str(len(header))


def test_binary_inputs_give_the_same_answer_as_json(url: str) -> None:
    content, length = _binary_text_request(NAMES)
    binary = httpx.post(
        f"{url}/v2/models/names-lm/infer",
        content=content,
        headers={"Inference-Header-Content-Length": length},
    )
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(NAMES)], "data": NAMES}
    as_json = _infer(url, "names-lm", {"inputs": [tensor]})
    assert binary.status_code == 200
    assert_same_numbers(binary.json()["outputs"], as_json.json()["outputs"], LOG_PROB_TOLERANCE)


def test_a_binary_data_size_past_the_end_of_the_body_is_a_400(url: str) -> None:
    content, length = _binary_text_request(NAMES, declared_size=1000)
    response = httpx.post(
        f"{url}/v2/models/names-lm/infer",
        content=content,
        headers={"Inference-Header-Content-Length": length},
    )
    assert response.status_code == 400 and "binary_data_size" in response.json()["error"]


def test_an_inference_header_length_beyond_the_body_is_a_400(url: str) -> None:
    response = httpx.post(
        f"{url}/v2/models/names-lm/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "99"},
    )
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]


def test_an_unknown_model_is_a_404_with_an_error_message(url: str) -> None:
    response = _infer(url, "no-such-model", _image_request())
    assert response.status_code == 404 and "no-such-model" in response.json()["error"]


def test_malformed_json_is_a_400(url: str) -> None:
    response = httpx.post(f"{url}/v2/models/mnist-mlp/infer", content=b"{not json")
    assert response.status_code == 400 and "JSON" in response.json()["error"]


def test_health_endpoints_answer_probes(url: str) -> None:
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}


def test_openapi_documents_the_v2_operations(url: str) -> None:
    schema = httpx.get(f"{url}/openapi.json").json()
    paths = schema["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert {"/v2", "/v2/health/ready", "/v2/models/{name}/versions/{version}/infer"} <= set(paths)
    assert "application/octet-stream" in infer["requestBody"]["content"]
    assert schema["components"]["schemas"]["InferRequestV2"]["examples"]
    assert not any(p.startswith("/v2/repository") for p in paths)  # no admin key here


def test_a_model_that_failed_to_load_makes_the_server_not_ready(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    (repository / "names-rnn" / "1" / "model.safetensors").write_bytes(b"not safetensors")
    with live_server(settings_for(repository)) as base:
        server = httpx.get(f"{base}/v2/health/ready")
        model = httpx.get(f"{base}/v2/models/names-rnn/ready")
        other = httpx.get(f"{base}/v2/models/names-lm/ready")
    assert server.status_code == 503 and "names-rnn" in server.json()["error"]
    assert model.status_code == 400 and model.json()["ready"] is False
    assert "failed" in model.json()["error"]
    assert other.status_code == 200


async def test_readiness_is_503_while_the_server_drains_but_liveness_stays(
    tiny_repository: Path,
) -> None:
    app = create_app(settings_for(tiny_repository))
    app.lifecycle.draining = True  # what SIGTERM sets
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as asgi:
        ready = await asgi.get("/v2/health/ready")
        live = await asgi.get("/v2/health/live")
    assert ready.status_code == 503 and "shutting down" in ready.json()["error"]
    assert live.status_code == 200
