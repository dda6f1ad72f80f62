"""Triton's REST extensions that its clients and perf_analyzer call, against a live server over the
shipped models: model configuration, statistics, classification (class_count), compressed
requests and answers (a bomb is a 413, and the server keeps serving), and BYTES inputs shaped
[N, 1] as MLServer's StringCodec sends them."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import live_server, settings_for, write_tiny_repository
from tests.numbers import PROBABILITY_TOLERANCE, assert_same_numbers

MODELS = ("mnist-mlp", "names-rnn", "names-lm")
NAMES = ["Nakamura", "Kowalski", "Rossi"]


@pytest.fixture(scope="module")
def url(shipped_server: str) -> str:
    return shipped_server


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url.removeprefix("http://")) as triton_client:
        yield triton_client


def _text(names: list[str], shape: list[int] | None = None) -> triton.InferInput:
    array = np.array(names, dtype=object).reshape(shape or [len(names)])
    tensor = triton.InferInput("text", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


def _probabilities(url: str, names: list[str]) -> np.ndarray:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(names)], "data": names}]}
    outputs = httpx.post(f"{url}/v2/models/names-rnn/infer", json=body).json()["outputs"]
    probabilities = next(o for o in outputs if o["name"] == "probabilities")
    return np.array(probabilities["data"]).reshape(probabilities["shape"])


# -- model configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_model_config_describes_the_tensors_of_the_metadata_without_the_batch_dim(
    client: triton.InferenceServerClient, model: str
) -> None:
    config = client.get_model_config(model)
    metadata = client.get_model_metadata(model)
    assert config["name"] == model and config["platform"] == metadata["platform"]
    for kind in ("input", "output"):
        described = {t["name"]: t for t in metadata[f"{kind}s"]}
        assert [t["name"] for t in config[kind]] == list(described)
        for tensor in config[kind]:
            shape = described[tensor["name"]]["shape"]
            assert tensor["dims"] == (shape[1:] or [1])
            datatype = described[tensor["name"]]["datatype"]
            assert tensor["data_type"] == (
                "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
            )


def test_model_config_carries_the_batching_settings_as_perf_analyzer_reads_them(
    client: triton.InferenceServerClient, url: str
) -> None:
    config = client.get_model_config("mnist-mlp", "1")
    batching = httpx.get(f"{url}/v1/models/mnist-mlp").json()["batching"]
    assert config["max_batch_size"] == batching["max_batch_size"] > 0
    delay_us = config["dynamic_batching"]["max_queue_delay_microseconds"]
    assert delay_us == round(batching["max_batch_delay_ms"] * 1000)
    assert (
        config["dynamic_batching"]["default_queue_policy"]["max_queue_size"]
        == (batching["max_queue_size"])
    )
    # perf_analyzer reads 64-bit fields with GetInt: numbers, and no sequence batching.
    assert isinstance(delay_us, int) and "sequence_batching" not in config


def test_the_config_of_an_unknown_model_is_a_404(url: str) -> None:
    response = httpx.get(f"{url}/v2/models/no-such-model/config")
    assert response.status_code == 404 and "no-such-model" in response.json()["error"]


# -- statistics ---------------------------------------------------------------------------------

UINT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def test_statistics_list_every_ready_version_with_the_fields_perf_analyzer_needs(
    client: triton.InferenceServerClient,
) -> None:
    stats = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in stats} == {(m, "1") for m in MODELS}
    for version in stats:
        assert type(version["inference_count"]) is int and type(version["execution_count"]) is int
        for field in (*UINT_FIELDS, "cache_hit", "cache_miss"):
            duration = version["inference_stats"][field]
            assert type(duration["count"]) is int and type(duration["ns"]) is int, field


def test_statistics_count_requests_items_and_forward_passes(
    client: triton.InferenceServerClient,
) -> None:
    def stats() -> dict[str, Any]:
        found: dict[str, Any] = client.get_inference_statistics("names-rnn", "1")["model_stats"][0]
        return found

    before = stats()
    client.infer("names-rnn", [_text(NAMES)])
    with pytest.raises(triton.InferenceServerException):
        client.infer("names-rnn", [_text(["K#m"])])
    after = stats()
    added = {
        f: after["inference_stats"][f]["count"] - before["inference_stats"][f]["count"]
        for f in UINT_FIELDS
    }
    assert added == {"success": 1, "fail": 1, "queue": 1, "compute_input": 1,
                     "compute_infer": 1, "compute_output": 1}  # fmt: skip
    assert after["inference_count"] - before["inference_count"] == len(NAMES)
    assert after["execution_count"] - before["execution_count"] >= 1
    success_ns = (
        after["inference_stats"]["success"]["ns"] - before["inference_stats"]["success"]["ns"]
    )
    infer_ns = (
        after["inference_stats"]["compute_infer"]["ns"]
        - before["inference_stats"]["compute_infer"]["ns"]
    )
    assert 0 < infer_ns <= success_ns  # the forward pass is part of the request's time
    assert after["last_inference"] > 0 and after["last_inference"] >= before["last_inference"]
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert sizes.get(len(NAMES), 0) >= 1


def test_statistics_of_an_unknown_model_or_version_are_a_404(url: str) -> None:
    assert httpx.get(f"{url}/v2/models/no-such-model/stats").status_code == 404
    assert httpx.get(f"{url}/v2/models/names-rnn/versions/9/stats").status_code == 404


def test_server_metadata_lists_the_extensions_served(client: triton.InferenceServerClient) -> None:
    extensions = client.get_server_metadata()["extensions"]
    assert {"classification", "statistics", "model_configuration"} <= set(extensions)


# -- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_class_count_answers_the_top_classes_as_value_index_label_strings(
    client: triton.InferenceServerClient, url: str, binary: bool
) -> None:
    output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
    result = client.infer("names-rnn", [_text(NAMES)], outputs=[output])
    classes = result.as_numpy("probabilities")
    assert classes.shape == (len(NAMES), 2)
    labels = httpx.get(f"{url}/v1/models/names-rnn").json()["labels"]
    expected = _probabilities(url, NAMES)
    for row, probabilities in zip(classes.tolist(), expected, strict=True):
        ranked = np.argsort(-probabilities)[:2]
        for text, index in zip(row, ranked, strict=True):
            text = text.decode() if isinstance(text, bytes) else text
            value, position, label = text.split(":")
            assert int(position) == index and label == labels[index]
            assert len(value.partition(".")[2]) == 6  # std::to_string: six decimals
            assert abs(float(value) - probabilities[index]) <= 5e-7 + PROBABILITY_TOLERANCE


def test_class_count_beyond_the_classes_gives_every_class(
    client: triton.InferenceServerClient,
) -> None:
    output = triton.InferRequestedOutput("probabilities", class_count=1000)
    result = client.infer("mnist-mlp", [_image()], outputs=[output])
    assert result.as_numpy("probabilities").shape == (1, 10)


def test_class_count_on_an_output_without_labels_gives_value_and_index(
    client: triton.InferenceServerClient,
) -> None:
    output = triton.InferRequestedOutput("num_tokens", class_count=1)
    result = client.infer("names-lm", [_text(["Kim"])], outputs=[output])
    (text,) = result.as_numpy("num_tokens").ravel().tolist()
    assert text.decode() == "4:0"  # K, i, m and the end of the string; an integer as written


def test_class_count_on_a_string_output_is_a_400(url: str) -> None:
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Kim"]}],
        "outputs": [{"name": "label", "parameters": {"classification": 2}}],
    }
    response = httpx.post(f"{url}/v2/models/names-rnn/infer", json=body)
    assert response.status_code == 400 and "classification" in response.json()["error"]


def _image() -> triton.InferInput:
    tensor = triton.InferInput("input", [1, 784], "FP32")
    tensor.set_data_from_numpy(np.full((1, 784), 0.5, dtype=np.float32), binary_data=True)
    return tensor


# -- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_answers_give_the_plain_answer(
    client: triton.InferenceServerClient, algorithm: str
) -> None:
    inputs = [_text(NAMES * 40)]  # 120 rows: an answer well over the compression threshold
    plain = client.infer("names-rnn", inputs)
    compressed = client.infer(
        "names-rnn",
        inputs,
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert compressed.as_numpy("label").tolist() == plain.as_numpy("label").tolist()
    assert_same_numbers(
        compressed.as_numpy("probabilities").tolist(), plain.as_numpy("probabilities").tolist()
    )


def test_an_answer_is_compressed_only_when_asked_and_large_enough(url: str) -> None:
    rows = 64
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 784],
                        "data": [0.5] * 784 * rows}]}  # fmt: skip
    encoded = json.dumps(body).encode()
    with httpx.Client() as plain_client:
        asked = plain_client.post(
            f"{url}/v2/models/mnist-mlp/infer",
            content=gzip.compress(encoded),
            headers={"Content-Encoding": "gzip", "Accept-Encoding": "deflate;q=0.5, gzip"},
        )
        not_asked = plain_client.post(
            f"{url}/v2/models/mnist-mlp/infer",
            content=encoded,
            headers={"Accept-Encoding": "identity"},
        )
        small = plain_client.get(f"{url}/v2/health/live", headers={"Accept-Encoding": "gzip"})
    assert asked.status_code == 200 and asked.headers["content-encoding"] == "gzip"
    assert asked.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in not_asked.headers
    assert asked.json() == not_asked.json()  # httpx decompressed it
    assert "content-encoding" not in small.headers


def test_an_unsupported_content_encoding_is_a_415_naming_the_supported_ones(url: str) -> None:
    response = httpx.post(
        f"{url}/v2/models/names-rnn/infer",
        content=b"...",
        headers={"Content-Encoding": "br", "Content-Type": "application/json"},
    )
    assert response.status_code == 415
    assert response.headers["accept-encoding"] == "gzip, deflate"
    assert "br" in response.json()["error"]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_broken_compressed_data_is_a_400(url: str, damage: str) -> None:
    packed = zlib.compress(b'{"inputs": ["Kim"]}')
    content = packed[:-6] if damage == "truncated" else b"not zlib data at all"
    response = httpx.post(
        f"{url}/v1/models/names-rnn/predict",
        content=content,
        headers={"Content-Encoding": "deflate", "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and "deflate" in response.json()["error"]


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("bomb") / "repository")
    with live_server(settings_for(repository, max_body_bytes=1 << 20)) as base:
        yield base


def _bomb(size: int) -> bytes:
    """`size` bytes of JSON-ish zeros, gzip-compressed a thousandfold."""
    stream = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"0" * (1 << 20)
    parts = [stream.compress(b'{"inputs": [[')]
    parts += [stream.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + stream.flush()


def test_a_compressed_body_bomb_is_a_413_and_the_server_keeps_serving(small_limit: str) -> None:
    bomb = _bomb(1 << 28)  # 256 MiB once inflated (256 times the limit), 255 KiB on the wire
    assert len(bomb) < 1 << 20
    response = httpx.post(
        f"{small_limit}/v1/models/names-rnn/predict",
        content=bomb,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413 and "decompressed" in response.json()["error"]
    after = httpx.post(f"{small_limit}/v1/models/names-rnn/predict", json={"inputs": ["Kim"]})
    assert after.status_code == 200


def test_a_compressed_body_within_the_limit_is_served(small_limit: str) -> None:
    content = gzip.compress(json.dumps({"inputs": ["Kim"] * 100}).encode())
    response = httpx.post(
        f"{small_limit}/v1/models/names-rnn/predict",
        content=content,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200 and len(response.json()["predictions"]) == 100


# -- BYTES shapes -------------------------------------------------------------------------------


def test_strings_shaped_n_by_1_as_mlservers_string_codec_sends_them_are_accepted(url: str) -> None:
    tensor = {"name": "text", "datatype": "BYTES", "data": NAMES[:2],
              "parameters": {"content_type": "str"}}  # fmt: skip
    as_column = httpx.post(
        f"{url}/v2/models/names-rnn/infer", json={"inputs": [{**tensor, "shape": [2, 1]}]}
    )
    as_row = httpx.post(
        f"{url}/v2/models/names-rnn/infer", json={"inputs": [{**tensor, "shape": [2]}]}
    )
    assert as_column.status_code == 200, as_column.text
    assert_same_numbers(as_column.json()["outputs"], as_row.json()["outputs"])


def test_the_triton_client_may_send_strings_as_n_by_1(
    client: triton.InferenceServerClient, url: str
) -> None:
    result = client.infer("names-lm", [_text(NAMES, shape=[len(NAMES), 1])])
    assert result.as_numpy("log_prob").shape == (len(NAMES),)


@pytest.mark.parametrize("shape", [[2, 2], [1, 2], [2, 1, 1]])
def test_other_string_shapes_are_a_400(url: str, shape: list[int]) -> None:
    count = int(np.prod(shape))
    tensor = {"name": "text", "datatype": "BYTES", "shape": shape, "data": ["Kim"] * count}
    response = httpx.post(f"{url}/v2/models/names-rnn/infer", json={"inputs": [tensor]})
    assert response.status_code == 400 and "shape" in response.json()["error"]


def test_v2_models_stats_is_the_statistics_not_the_metadata_of_a_model_named_stats(
    url: str,
) -> None:
    stats = httpx.get(f"{url}/v2/models/stats")
    assert stats.status_code == 200 and "model_stats" in stats.json()
