"""ONNX model versions served like native ones: real models exported inside the test (the bundled
MLP's weights, a GRU over variable-length strings, a Keras 3 Dense model, a small CNN), imported
with `batchserve import onnx`, answering over /v1, /v2 HTTP and gRPC within 1e-5 of their own
framework's forward pass, batched under concurrency, and never changed by padding."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc

from app.cli import main
from models.checkpoint import load_checkpoint
from tests.conftest import SHIPPED, live_app, settings_for
from tests.numbers import PROBABILITY_TOLERANCE
from tests.onnx_exports import (
    ALPHABET,
    DigitCnn,
    GruClassifier,
    LastStepGru,
    batch_dim,
    export,
    export_fresh,
    export_keras,
    tokens_of,
)
from tests.v1_reference import v1_probabilities

pytestmark = pytest.mark.slow  # five exports through torch.onnx and Keras

WORDS = ["a", "be", "cat", "dove", "eagle", "falcon", "gazelle", "hedgehog", "iguana", "jackal"]


@dataclass
class Exported:
    """A served ONNX model, the items it is asked about, and its framework's answers to them."""

    name: str
    inputs: list[Any]
    expected: np.ndarray  # probabilities, one row per input


def _softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=-1).numpy()


def _import(repository: Path, path: Path, name: str, *options: str) -> None:
    code = main(
        ["import", "onnx", str(path), "--name", name, "--repository", str(repository), *options]
    )
    assert code == 0, f"import onnx {name} failed"


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 784), dtype=np.float32)


def _mlp(work: Path, repository: Path) -> Exported:
    shipped = SHIPPED / "mnist-mlp" / "1"
    module, config = load_checkpoint(shipped)
    path = export(
        module, (torch.zeros(2, 784),), work / "mlp.onnx", ["pixels"], ({0: batch_dim()},)
    )
    _import(repository, path, "mlp-onnx", "--labels", ",".join(config.labels))
    images = _images(6, seed=1)
    with torch.inference_mode():
        expected = _softmax(module(torch.from_numpy(images)))
    return Exported("mlp-onnx", images.tolist(), expected)


def _cnn(work: Path, repository: Path) -> Exported:
    torch.manual_seed(0)
    module = DigitCnn().eval()
    args = (torch.zeros(2, 1, 28, 28),)
    path = export(module, args, work / "cnn.onnx", ["images"], ({0: batch_dim()},))
    _import(repository, path, "cnn-onnx", "--input-shape", "28x28")
    images = _images(6, seed=2)
    with torch.inference_mode():
        expected = _softmax(module(torch.from_numpy(images).reshape(-1, 1, 28, 28)))
    return Exported("cnn-onnx", images.tolist(), expected)


def _gru(work: Path, repository: Path) -> Exported:
    torch.manual_seed(1)
    module = GruClassifier().eval()
    args = [{"zeros": [2, 5]}, {"values": [5, 3]}]
    dynamic = [{0: "batch", 1: "steps"}, {0: "batch"}]
    path = export_fresh(module, args, work / "gru.onnx", ["tokens", "lengths"], dynamic)
    options = ["--alphabet", ALPHABET, "--labels", "n,e,s,w", "--outputs-are", "log_probabilities"]
    _import(repository, path, "gru-onnx", *options)
    return Exported(
        "gru-onnx", WORDS, _alone(lambda ids: module(ids, torch.tensor([ids.shape[1]])))
    )


def _last_step_gru(work: Path, repository: Path) -> tuple[Exported, LastStepGru]:
    torch.manual_seed(2)
    module = LastStepGru().eval()
    dynamic = [{0: "batch", 1: "steps"}]
    path = export_fresh(module, [{"zeros": [2, 5]}], work / "last.onnx", ["tokens"], dynamic)
    _import(repository, path, "last-step-onnx", "--alphabet", ALPHABET, "--labels", "x,y,z")
    return Exported("last-step-onnx", WORDS, _alone(module)), module


def _alone(forward: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """The framework's answer to each word run on its own: a batch of one, no padding."""
    rows = []
    with torch.inference_mode():
        for word in WORDS:
            output = forward(torch.tensor([tokens_of(word)]))
            rows.append(_softmax(output)[0])
    return np.array(rows)


def _keras(work: Path, repository: Path) -> Exported:
    inputs = np.random.default_rng(3).random((6, 20), dtype=np.float32)
    predicted = export_keras(work / "keras.onnx", inputs)
    _import(repository, work / "keras.onnx", "keras-onnx", "--outputs-are", "probabilities")
    return Exported("keras-onnx", inputs.tolist(), predicted.astype(np.float64))


@dataclass
class Served:
    url: str
    grpc: str
    models: dict[str, Exported]
    last_step: LastStepGru
    repository: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("onnx")
    repository = work / "repository"
    last, last_module = _last_step_gru(work, repository)
    exported = [_mlp(work, repository), _cnn(work, repository), _gru(work, repository), last]
    exported.append(_keras(work, repository))
    settings = settings_for(repository, grpc_port=0, max_batch_delay_ms=50, batch_idle_turns=0)
    with live_app(settings) as (url, app):
        models = {e.name: e for e in exported}
        yield Served(url, f"127.0.0.1:{app.grpc_port}", models, last_module, repository)


MODELS = ["mlp-onnx", "cnn-onnx", "gru-onnx", "keras-onnx"]


def _close(found: np.ndarray, expected: np.ndarray) -> None:
    assert found.shape == expected.shape
    worst = float(np.abs(found - expected).max())
    assert worst <= PROBABILITY_TOLERANCE, f"off by {worst:.3g} from the framework's forward pass"


def _v2_input(served: Served, name: str) -> dict[str, Any]:
    meta = httpx.get(f"{served.url}/v2/models/{name}").json()
    (spec,) = meta["inputs"]
    inputs = served.models[name].inputs
    shape = [len(inputs), *spec["shape"][1:]]
    return {"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "data": inputs}


@pytest.mark.parametrize("name", MODELS)
def test_v1_answers_as_the_framework_does(served: Served, name: str) -> None:
    model = served.models[name]
    _close(v1_probabilities(served.url, name, model.inputs), model.expected)


@pytest.mark.parametrize("name", MODELS)
def test_v2_http_answers_as_the_framework_does(served: Served, name: str) -> None:
    body = {"inputs": [_v2_input(served, name)], "outputs": [{"name": "probabilities"}]}
    answer = httpx.post(f"{served.url}/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    found = np.array(output["data"], dtype=np.float64).reshape(output["shape"])
    _close(found, served.models[name].expected)


@pytest.mark.parametrize("name", MODELS)
def test_grpc_answers_as_the_framework_does(served: Served, name: str) -> None:
    spec = _v2_input(served, name)
    tensor = triton_grpc.InferInput(spec["name"], spec["shape"], spec["datatype"])
    if spec["datatype"] == "BYTES":
        tensor.set_data_from_numpy(np.array(spec["data"], dtype=object))
    else:
        tensor.set_data_from_numpy(np.array(spec["data"], dtype=np.float32).reshape(spec["shape"]))
    with triton_grpc.InferenceServerClient(served.grpc) as client:
        result = client.infer(
            name, [tensor], outputs=[triton_grpc.InferRequestedOutput("probabilities")]
        )
    found = result.as_numpy("probabilities")
    assert found is not None
    _close(found.astype(np.float64), served.models[name].expected)


@pytest.mark.parametrize("name", MODELS)
def test_kserve_v1_answers_as_the_framework_does(served: Served, name: str) -> None:
    body = {"instances": served.models[name].inputs}
    answer = httpx.post(f"{served.url}/v1/models/{name}:predict", json=body)
    assert answer.status_code == 200, answer.text
    found = np.array([p["probabilities"] for p in answer.json()["predictions"]])
    _close(found, served.models[name].expected)


def _batches(url: str, name: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    found = []
    for metric in ("batchserve_batch_size_count", "batchserve_batch_size_sum"):
        pattern = rf'^{metric}\{{model="{re.escape(name)}",version="1"\}} (\S+)$'
        found.append(sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M)))
    return found[0], found[1]


async def _one_by_one(url: str, name: str, inputs: list[Any]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        path = f"/v1/models/{name}/predict"
        return await asyncio.gather(*(client.post(path, json={"inputs": [i]}) for i in inputs))


@pytest.mark.parametrize("name", [*MODELS, "last-step-onnx"])
def test_concurrent_requests_are_batched(served: Served, name: str) -> None:
    batches_before, items_before = _batches(served.url, name)
    inputs = served.models[name].inputs * 4
    responses = asyncio.run(_one_by_one(served.url, name, inputs))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    batches, items = _batches(served.url, name)
    assert items - items_before == len(inputs)
    assert (items - items_before) / (batches - batches_before) > 1, "no batch held two requests"


@pytest.mark.parametrize("name", ["gru-onnx", "last-step-onnx"])
def test_padding_never_changes_an_answer(served: Served, name: str) -> None:
    # One request of ten words of lengths 1 to 8: one batch, padded (gru-onnx, with its lengths
    # input) or grouped by length (last-step-onnx); each answer is the word's answer alone.
    _close(v1_probabilities(served.url, name, WORDS), served.models[name].expected)


def test_a_graph_without_lengths_would_read_the_padding(served: Served) -> None:
    # Why last-step-onnx is grouped by length: fed padded, its words' answers change.
    padded = torch.zeros(len(WORDS), max(map(len, WORDS)), dtype=torch.long)
    for i, word in enumerate(WORDS):
        padded[i, : len(word)] = torch.tensor(tokens_of(word))
    with torch.inference_mode():
        read_padding = _softmax(served.last_step(padded))
    assert np.abs(read_padding - served.models["last-step-onnx"].expected).max() > 1e-3


def test_metadata_and_model_config_come_from_the_graph(served: Served) -> None:
    meta = httpx.get(f"{served.url}/v2/models/cnn-onnx").json()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    config = httpx.get(f"{served.url}/v2/models/cnn-onnx/config").json()
    assert config["backend"] == "onnxruntime"
    assert config["input"][0]["name"] == "images"
    assert [int(d) for d in config["input"][0]["dims"]] == [1, 28, 28]
    with triton_grpc.InferenceServerClient(served.grpc) as client:
        grpc_meta = client.get_model_metadata("cnn-onnx", as_json=True)
    assert grpc_meta["platform"] == "onnxruntime_onnx"
    assert grpc_meta["inputs"][0]["shape"] == ["-1", "1", "28", "28"]


def test_a_nested_image_is_read_as_the_graph_s_layout(served: Served) -> None:
    image = np.array(served.models["cnn-onnx"].inputs[0], dtype=np.float32)
    nested = v1_probabilities(served.url, "cnn-onnx", [image.reshape(28, 28).tolist()])
    _close(nested, served.models["cnn-onnx"].expected[:1])


def test_the_imported_config_names_the_graph_s_tensors(served: Served) -> None:
    info = httpx.get(f"{served.url}/v1/models/gru-onnx").json()
    assert info["architecture"]["type"] == "onnx"
    assert info["architecture"]["input"] == "tokens"
    assert info["architecture"]["lengths_input"] == "lengths"
    assert info["architecture"]["output_kind"] == "log_probabilities"


def test_check_runs_a_warm_up_through_onnx_runtime(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code = main(["check", str(served.repository)])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in [*MODELS, "last-step-onnx"]:
        assert re.search(rf"^{name} +1 +ok +onnx opset \d+ on cpu", out, re.M), out
