"""ONNX versions with the multilabel and regress heads: small MLPs exported inside the test with
torch.onnx.export(dynamo=True) (per-label logits, the same graph ending in a Sigmoid, a regression
with target scaling in its config), imported with `batchserve import onnx`, answering over /v1,
/v2 HTTP and gRPC within 1e-5 of the PyTorch module's own forward pass with the head applied; and
a config whose output kind does not fit its task refused, naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
from torch import nn

from app.cli import main
from tests.conftest import live_app, settings_for
from tests.numbers import PROBABILITY_TOLERANCE
from tests.onnx_exports import batch_dim, export

pytestmark = pytest.mark.slow  # three exports through torch.onnx

LABELS = ["red", "green", "blue", "round", "small"]
THRESHOLD = 0.4
MEAN, STD = 3.5, 2.0


@dataclass
class Head:
    """A served model, the items it is asked about, its head's output tensor and the module's
    own answers (probabilities per label, or values in the targets' units)."""

    name: str
    inputs: list[list[float]]
    output: str
    expected: np.ndarray


@dataclass
class Served:
    url: str
    grpc: str
    heads: dict[str, Head]


def _import(repository: Path, path: Path, name: str, *options: str) -> None:
    code = main(
        ["import", "onnx", str(path), "--name", name, "--repository", str(repository), *options]
    )
    assert code == 0, f"import onnx {name} failed"


def _rows(count: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, width)).astype(np.float32)


def _multilabel(work: Path, repository: Path) -> list[Head]:
    torch.manual_seed(4)
    logits = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    probabilities = nn.Sequential(logits, nn.Sigmoid()).eval()
    inputs = _rows(6, 20, seed=5) * 3  # wide logits: probabilities near 0 and 1 too
    with torch.inference_mode():
        expected = torch.sigmoid(logits(torch.from_numpy(inputs)).double()).numpy()
        from_sigmoid = probabilities(torch.from_numpy(inputs)).double().numpy()
    assert np.abs(expected - from_sigmoid).max() < 1e-6  # the two graphs answer alike
    options = ["--task", "multilabel", "--labels", ",".join(LABELS)]
    heads = []
    for name, module, kind in [
        ("multilabel-logits", logits, "logits"),
        ("multilabel-probabilities", probabilities, "probabilities"),
    ]:
        path = export(
            module, (torch.zeros(2, 20),), work / f"{name}.onnx", ["x"], ({0: batch_dim()},)
        )
        _import(
            repository, path, name, *options, "--outputs-are", kind, "--threshold", str(THRESHOLD)
        )
        heads.append(Head(name, inputs.tolist(), "probabilities", expected))
    return heads


def _regress(work: Path, repository: Path) -> Head:
    torch.manual_seed(6)
    module = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 1)).eval()
    path = export(module, (torch.zeros(2, 8),), work / "regress.onnx", ["x"], ({0: batch_dim()},))
    base = work / "regress.json"
    base.write_text(json.dumps({"target_scaling": {"mean": [MEAN], "std": [STD]}}))
    _import(
        repository,
        path,
        "regress-onnx",
        "--task",
        "regress",
        "--labels",
        "price",
        "--config",
        str(base),
    )
    inputs = _rows(6, 8, seed=7)
    with torch.inference_mode():
        expected = module(torch.from_numpy(inputs)).double().numpy() * STD + MEAN
    return Head("regress-onnx", inputs.tolist(), "values", expected)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("onnx-heads")
    repository = work / "repository"
    heads = [*_multilabel(work, repository), _regress(work, repository)]
    settings = settings_for(repository, grpc_port=0)
    with live_app(settings) as (url, app):
        yield Served(url, f"127.0.0.1:{app.grpc_port}", {h.name: h for h in heads})


NAMES = ["multilabel-logits", "multilabel-probabilities", "regress-onnx"]


def _close(found: np.ndarray, expected: np.ndarray) -> None:
    assert found.shape == expected.shape
    worst = float(np.abs(found - expected).max())
    assert worst <= PROBABILITY_TOLERANCE, f"off by {worst:.3g} from the module's forward pass"


def _v1(served: Served, name: str) -> list[dict[str, Any]]:
    head = served.heads[name]
    answer = httpx.post(f"{served.url}/v1/models/{name}/predict", json={"inputs": head.inputs})
    assert answer.status_code == 200, answer.text
    predictions: list[dict[str, Any]] = answer.json()["predictions"]
    return predictions


@pytest.mark.parametrize("name", NAMES)
def test_v1_answers_as_the_module_does(served: Served, name: str) -> None:
    head = served.heads[name]
    key = "values" if name == "regress-onnx" else "probabilities"
    names = ["price"] if name == "regress-onnx" else LABELS
    found = np.array([[p[key][label] for label in names] for p in _v1(served, name)])
    _close(found, head.expected)


@pytest.mark.parametrize("name", ["multilabel-logits", "multilabel-probabilities"])
def test_v1_labels_are_those_at_or_over_the_threshold(served: Served, name: str) -> None:
    expected = served.heads[name].expected
    for prediction, row in zip(_v1(served, name), expected, strict=True):
        assert prediction["threshold"] == pytest.approx(THRESHOLD)
        wanted = {LABELS[i] for i in np.flatnonzero(row >= THRESHOLD)}
        assert set(prediction["labels"]) == wanted
    assert 0 < (expected >= THRESHOLD).sum() < expected.size  # the threshold decides something


@pytest.mark.parametrize("name", NAMES)
def test_v2_http_answers_as_the_module_does(served: Served, name: str) -> None:
    head = served.heads[name]
    tensor = {"name": "x", "datatype": "FP32", "shape": [len(head.inputs), len(head.inputs[0])]}
    body = {"inputs": [{**tensor, "data": head.inputs}], "outputs": [{"name": head.output}]}
    answer = httpx.post(f"{served.url}/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["name"] == head.output
    _close(np.array(output["data"], dtype=np.float64).reshape(output["shape"]), head.expected)


@pytest.mark.parametrize("name", NAMES)
def test_grpc_answers_as_the_module_does(served: Served, name: str) -> None:
    head = served.heads[name]
    data = np.array(head.inputs, dtype=np.float32)
    tensor = triton_grpc.InferInput("x", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    with triton_grpc.InferenceServerClient(served.grpc) as client:
        result = client.infer(
            name, [tensor], outputs=[triton_grpc.InferRequestedOutput(head.output)]
        )
    found = result.as_numpy(head.output)
    assert found is not None
    _close(found.astype(np.float64), head.expected)


def test_the_imported_configs_say_what_the_outputs_hold(served: Served) -> None:
    kinds = {}
    for name in NAMES:
        info = httpx.get(f"{served.url}/v1/models/{name}").json()
        kinds[name] = info["architecture"]["output_kind"]
    assert kinds == {
        "multilabel-logits": "logits",
        "multilabel-probabilities": "probabilities",
        "regress-onnx": "values",  # regress's default
    }


@pytest.mark.parametrize(
    ("task", "kind", "labels"),
    [
        ("regress", "probabilities", "price"),
        ("regress", "log_probabilities", "price"),
        ("classify", "values", "a,b"),
        ("multilabel", "values", "a,b"),
    ],
)
def test_an_output_kind_the_task_cannot_hold_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str, kind: str, labels: str
) -> None:
    width = len(labels.split(","))
    module = nn.Sequential(nn.Linear(3, width))
    path = export(module, (torch.zeros(2, 3),), tmp_path / "m.onnx", ["x"], ({0: batch_dim()},))
    repository = tmp_path / "repository"
    options = ["--task", task, "--outputs-are", kind, "--labels", labels]
    code = main(["import", "onnx", str(path), "--repository", str(repository), *options])
    error = capsys.readouterr().err
    assert code == 2
    assert "architecture.output_kind" in error and f"not {kind}" in error, error
    assert not (repository / "m").exists()  # nothing written


def test_multilabel_probabilities_outside_0_and_1_fail_the_warm_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A graph of logits imported as probabilities: its outputs (here always 5) cannot be.
    module = nn.Linear(3, 2)
    with torch.no_grad():
        module.weight.zero_()
        module.bias.fill_(5.0)
    path = export(module, (torch.zeros(2, 3),), tmp_path / "m.onnx", ["x"], ({0: batch_dim()},))
    repository = tmp_path / "repository"
    options = ["--task", "multilabel", "--outputs-are", "probabilities", "--labels", "a,b"]
    code = main(["import", "onnx", str(path), "--repository", str(repository), *options])
    error = capsys.readouterr().err
    assert code == 2
    assert "outside [0, 1]" in error and "architecture.output_kind" in error, error
    assert not (repository / "m" / "1").exists()  # the version is not renamed into place
