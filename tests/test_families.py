"""The model families a user trains every day, end to end: each is trained here for a few steps in
PyTorch, imported with `batchserve import torch`, served by the real app (HTTP and gRPC), and its
/v1, /v2 HTTP and gRPC answers equal the trained module's own forward pass on each item alone:
(a) a regression MLP 8 -> 1 with target scaling (BatchNorm1d, Dropout, LayerNorm, GELU),
(b) a multi-label MLP 20 -> 5 (LeakyReLU, a final Sigmoid), (c) a word-level LSTM sentiment
classifier with its vocabulary, (d) a GRU over numeric sequences [T, 3] of varying T -> 4 classes
(mean over the real steps), (e) a 2-layer bidirectional GRU character classifier. Then, under
concurrency, every family is batched and items of different lengths in one batch get the
answers they get alone."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable, Iterator
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
from app.serving.loader import batch_limits
from app.settings import Settings
from models.checkpoint import BatchingConfig, ModelConfig
from models.families.base import (
    SequenceInput,
    SubwordsInput,
    TextInput,
    VectorInput,
    WordsInput,
)
from tests.conftest import live_app, settings_for
from tests.numbers import PROBABILITY_TOLERANCE, assert_same_numbers
from tests.test_batching import _metric, _post_all

TOLERANCE = 1e-5  # the bound between the served answer and the framework's forward
ALPHABET = string.ascii_letters + " '-"
SENTIMENT = [
    ("a great and lovely film", 1), ("what a wonderful story", 1), ("i loved it", 1),
    ("great acting , lovely music", 1), ("a boring and awful film", 0), ("i hated it", 0),
    ("what an awful boring story", 0), ("terrible acting", 0),
]  # fmt: skip
NAMES = {"JP": ["Nakamura", "Tanaka", "Sato"], "PL": ["Kowalski", "Nowak"], "IT": ["Rossi", "Li"]}


@dataclass
class Served:
    """One model of the repository: what /v1 and /v2 are sent, and the framework's answer."""

    name: str
    task: str
    labels: list[str]
    inputs: list[Any]  # /v1 items
    expected: np.ndarray  # the framework's rows: probabilities or values, one row per item
    numeric_sequence: bool = False


def _train(model: nn.Module, step: Callable[[], torch.Tensor], steps: int = 40) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        step().backward()
        optimizer.step()
    return model.eval()


def _import(repository: Path, weights: Path, *args: str | Path) -> None:
    argv = ["import", "torch", weights, "--repository", repository, *args]
    code = main([str(a) for a in argv])
    assert code == 0, f"batchserve import torch {weights.name} failed"


# -- (a) regression -------------------------------------------------------------------------


def _regression(tmp: Path, repository: Path) -> Served:
    torch.manual_seed(1)
    x = torch.randn(64, 8)
    price = 3.0 + 2.0 * (x[:, :1] * 0.5 - x[:, 1:2] ** 2 * 0.3)
    mean, std = 3.0, 2.0
    model = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(16, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 1),
    )  # fmt: skip
    _train(model, lambda: nn.functional.mse_loss(model(x), (price - mean) / std))
    torch.save(model.state_dict(), tmp / "price.pt")
    layers = "linear,batch_norm,relu,dropout:0.1,linear,layer_norm,gelu,linear"
    scaling = ("--target-mean", "3", "--target-std", "2")
    _import(repository, tmp / "price.pt", "--arch", "mlp", "--layers", layers,
            "--task", "regress", "--labels", "price", *scaling)  # fmt: skip
    items = torch.randn(5, 8)
    with torch.no_grad():
        expected = torch.cat([model(row[None]) * std + mean for row in items]).numpy()
    return Served("price", "regress", ["price"], items.tolist(), expected)


# -- (b) multi-label ------------------------------------------------------------------------


def _multilabel(tmp: Path, repository: Path) -> Served:
    torch.manual_seed(2)
    x = torch.randn(64, 20)
    y = (x[:, :5] + x[:, 5:10] > 0).float()
    model = nn.Sequential(nn.Linear(20, 24), nn.LeakyReLU(0.2), nn.Linear(24, 5), nn.Sigmoid())
    _train(model, lambda: nn.functional.binary_cross_entropy(model(x), y))
    torch.save(model.state_dict(), tmp / "tags.pt")
    _import(repository, tmp / "tags.pt", "--arch", "mlp",
            "--layers", "linear,leaky_relu:0.2,linear,sigmoid", "--task", "multilabel",
            "--threshold", "0.4", "--labels", "a,b,c,d,e")  # fmt: skip
    items = torch.randn(6, 20)
    with torch.no_grad():
        expected = torch.cat([model(row[None]) for row in items]).numpy()
    return Served("tags", "multilabel", list("abcde"), items.tolist(), expected)


# -- (c) word-level LSTM --------------------------------------------------------------------


class WordLSTM(nn.Module):
    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 8)
        self.lstm = nn.LSTM(8, 12, batch_first=True)
        self.fc = nn.Linear(12, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.embed(ids))
        logits: torch.Tensor = self.fc(hidden[-1])
        return logits


def _words(tmp: Path, repository: Path) -> Served:
    torch.manual_seed(3)
    vocabulary = ["<unk>", *sorted({w for text, _ in SENTIMENT for w in text.split()})]
    index = {w: i for i, w in enumerate(vocabulary)}

    def ids(text: str) -> torch.Tensor:
        return torch.tensor([[index.get(w, 0) for w in text.lower().split()]])

    model = WordLSTM(len(vocabulary))
    targets = torch.tensor([label for _, label in SENTIMENT])

    def loss() -> torch.Tensor:
        logits = torch.cat([model(ids(text)) for text, _ in SENTIMENT])
        return nn.functional.cross_entropy(logits, targets)

    _train(model, loss, steps=30)
    torch.save(model.state_dict(), tmp / "sentiment.pt")
    (tmp / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    _import(repository, tmp / "sentiment.pt", "--arch", "rnn", "--vocabulary", tmp / "vocab.txt",
            "--labels", "negative,positive")  # fmt: skip
    texts = ["What a GREAT film", "awful", "i loved the unseen music , truly", "boring story"]
    with torch.no_grad():
        expected = torch.cat([torch.softmax(model(ids(t)), -1) for t in texts]).numpy()
    return Served("sentiment", "classify", ["negative", "positive"], texts, expected)


# -- (d) GRU over numeric sequences ---------------------------------------------------------


class SeriesGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 10, batch_first=True)
        self.out = nn.Linear(10, 4)

    def forward(self, steps: torch.Tensor) -> torch.Tensor:  # one sequence, [1, T, 3]
        output, _ = self.gru(steps)
        logits: torch.Tensor = self.out(output.mean(dim=1))
        return logits


def _series(tmp: Path, repository: Path) -> Served:
    torch.manual_seed(4)
    model = SeriesGRU()
    sequences = [torch.randn(1, int(t), 3) for t in torch.randint(2, 9, (16,))]
    targets = torch.tensor([int(s.sum() > 0) + 2 * int(s[0, -1, 0] > 0) for s in sequences])

    def loss() -> torch.Tensor:
        logits = torch.cat([model(s) for s in sequences])
        return nn.functional.cross_entropy(logits, targets)

    _train(model, loss, steps=20)
    torch.save(model.state_dict(), tmp / "series.pt")
    _import(repository, tmp / "series.pt", "--arch", "rnn", "--features", "3",
            "--readout", "mean", "--labels", "w,x,y,z")  # fmt: skip
    items = [torch.randn(1, t, 3) for t in (1, 4, 7, 2, 12)]
    with torch.no_grad():
        expected = torch.cat([torch.softmax(model(s), -1) for s in items]).numpy()
    inputs = [s[0].tolist() for s in items]
    return Served("series", "classify", list("wxyz"), inputs, expected, numeric_sequence=True)


# -- (e) 2-layer bidirectional GRU over characters ------------------------------------------


class CharBiGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(len(ALPHABET), 8, num_layers=2, bidirectional=True, batch_first=True)
        self.classifier = nn.Linear(16, 3)

    def forward(self, name: str) -> torch.Tensor:
        one_hot = torch.zeros(1, len(name), len(ALPHABET))
        for i, c in enumerate(name):
            one_hot[0, i, ALPHABET.index(c)] = 1
        _, hidden = self.rnn(one_hot)
        logits: torch.Tensor = self.classifier(torch.cat((hidden[-2], hidden[-1]), dim=1))
        return logits


def _chars(tmp: Path, repository: Path) -> Served:
    torch.manual_seed(5)
    model = CharBiGRU()
    labels = list(NAMES)
    pairs = [(n, labels.index(label)) for label, names in NAMES.items() for n in names]
    targets = torch.tensor([y for _, y in pairs])

    def loss() -> torch.Tensor:
        logits = torch.cat([model(n) for n, _ in pairs])
        return nn.functional.cross_entropy(logits, targets)

    _train(model, loss, steps=20)
    torch.save(model.state_dict(), tmp / "names-bigru.pt")
    _import(repository, tmp / "names-bigru.pt", "--arch", "rnn", "--alphabet", ALPHABET,
            "--labels", ",".join(labels), "--max-length", "20")  # fmt: skip
    names = ["Yamamoto", "Li", "Kowalczyk", "Bianchi-Rossi", "O'Neil"]
    with torch.no_grad():
        expected = torch.cat([torch.softmax(model(n), -1) for n in names]).numpy()
    return Served("names-bigru", "classify", labels, names, expected)


BUILDERS = {
    "price": _regression,
    "tags": _multilabel,
    "sentiment": _words,
    "series": _series,
    "names-bigru": _chars,
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Served]]:
    tmp = tmp_path_factory.mktemp("families")
    root = tmp / "repository"
    threads = torch.get_num_threads()
    try:
        served = {name: build(tmp, root) for name, build in BUILDERS.items()}
    finally:
        torch.set_num_threads(threads)
    return root, served


@pytest.fixture(scope="module")
def server(repository: tuple[Path, dict[str, Served]]) -> Iterator[tuple[str, str]]:
    """(HTTP base URL, gRPC host:port) of one server over the five imported models; batches
    wait up to 100 ms so that concurrent requests share forward passes."""
    settings = settings_for(repository[0], grpc_port=0, max_batch_delay_ms=100, batch_idle_turns=0)
    with live_app(settings) as (url, app):
        yield url, f"127.0.0.1:{app.grpc_port}"


# -- the three protocols' answers, as rows --------------------------------------------------


def _v1_rows(url: str, model: Served, inputs: list[Any]) -> np.ndarray:
    body: dict[str, Any] = {"inputs": inputs}
    if model.task == "classify":
        body["top_k"] = len(model.labels)
    response = httpx.post(f"{url}/v1/models/{model.name}/predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    rows = []
    for prediction in response.json()["predictions"]:
        if model.task == "regress":
            rows.append([prediction["values"][label] for label in model.labels])
        elif model.task == "multilabel":
            rows.append([prediction["probabilities"][label] for label in model.labels])
        else:
            row = [0.0] * len(model.labels)
            for ranked in prediction["top_k"]:
                row[ranked["index"]] = ranked["probability"]
            rows.append(row)
    return np.array(rows)


def _output_name(model: Served) -> str:
    return "values" if model.task == "regress" else "probabilities"


def _v2_tensor(model: Served, items: list[Any]) -> dict[str, Any]:
    if isinstance(items[0], str):
        return {"name": "text", "datatype": "BYTES", "shape": [len(items)], "data": items}
    array = np.asarray(items, dtype=np.float32)
    return {"name": "input", "datatype": "FP32", "shape": list(array.shape),
            "data": array.ravel().tolist()}  # fmt: skip


def _batches(model: Served) -> list[list[Any]]:
    """How the items travel over /v2: all in one tensor, or (sequences of varying length) one
    [1, T, F] tensor per request."""
    return [[item] for item in model.inputs] if model.numeric_sequence else [model.inputs]


def _v2_rows(url: str, model: Served) -> np.ndarray:
    rows = []
    for items in _batches(model):
        body = {"inputs": [_v2_tensor(model, items)]}
        response = httpx.post(f"{url}/v2/models/{model.name}/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        output = {o["name"]: o for o in response.json()["outputs"]}[_output_name(model)]
        assert output["datatype"] == "FP32" and output["shape"] == [len(items), len(model.labels)]
        rows += np.asarray(output["data"]).reshape(output["shape"]).tolist()
    return np.array(rows)


def _grpc_rows(target: str, model: Served) -> np.ndarray:
    rows = []
    with triton_grpc.InferenceServerClient(target) as client:
        for items in _batches(model):
            if isinstance(items[0], str):
                tensor = triton_grpc.InferInput("text", [len(items)], "BYTES")
                tensor.set_data_from_numpy(np.array(items, dtype=object))
            else:
                array = np.asarray(items, dtype=np.float32)
                tensor = triton_grpc.InferInput("input", list(array.shape), "FP32")
                tensor.set_data_from_numpy(array)
            result = client.infer(model.name, [tensor])
            rows += result.as_numpy(_output_name(model)).tolist()
    return np.array(rows)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_protocol_answers_what_the_trained_module_computes(
    repository: tuple[Path, dict[str, Served]], server: tuple[str, str], name: str
) -> None:
    model = repository[1][name]
    url, target = server
    for protocol, rows in (
        ("/v1", _v1_rows(url, model, model.inputs)),
        ("/v2", _v2_rows(url, model)),
        ("gRPC", _grpc_rows(target, model)),
    ):
        assert rows.shape == model.expected.shape, protocol
        assert np.abs(rows - model.expected).max() <= TOLERANCE, (protocol, rows, model.expected)


def test_the_multilabel_answer_names_the_labels_over_its_threshold(
    repository: tuple[Path, dict[str, Served]], server: tuple[str, str]
) -> None:
    model = repository[1]["tags"]
    url = server[0]
    response = httpx.post(f"{url}/v1/models/tags/predict", json={"inputs": model.inputs})
    for prediction, row in zip(response.json()["predictions"], model.expected, strict=True):
        over = {label for label, p in zip(model.labels, row, strict=True) if p >= 0.4}
        assert set(prediction["labels"]) == over and prediction["threshold"] == 0.4
    body = {"inputs": [_v2_tensor(model, model.inputs)], "outputs": [{"name": "predicted"}]}
    (output,) = httpx.post(f"{url}/v2/models/tags/infer", json=body).json()["outputs"]
    assert output["datatype"] == "INT32"
    assert output["data"] == (model.expected >= 0.4).astype(int).ravel().tolist()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_metadata_says_enough_to_build_a_request(
    repository: tuple[Path, dict[str, Served]], server: tuple[str, str], name: str
) -> None:
    """The example item in /v1's metadata is a valid request; /v2's metadata has the tensors."""
    model = repository[1][name]
    url = server[0]
    head = httpx.get(f"{url}/v1/models/{name}").json()["head"]
    assert head["task"] == model.task
    example = head["item"]["example"]
    assert _v1_rows(url, model, [example]).shape == (1, len(model.labels))
    meta = httpx.get(f"{url}/v2/models/{name}").json()
    (tensor,) = meta["inputs"]
    if model.numeric_sequence:
        assert tensor == {"name": "input", "datatype": "FP32", "shape": [-1, -1, 3]}
    assert _output_name(model) in [o["name"] for o in meta["outputs"]]


def test_concurrent_items_of_different_lengths_are_batched_and_answered_as_alone(
    repository: tuple[Path, dict[str, Served]], server: tuple[str, str]
) -> None:
    url = server[0]
    for name, model in repository[1].items():
        alone = [_v1_rows(url, model, [item])[0] for item in model.inputs]
        before = httpx.get(f"{url}/metrics").text
        bodies: list[dict[str, Any]] = [{"inputs": [item]} for item in model.inputs * 4]
        if model.task == "classify":
            bodies = [{**b, "top_k": len(model.labels)} for b in bodies]
        responses = asyncio.run(_post_all(url, f"/v1/models/{name}/predict", bodies))
        after = httpx.get(f"{url}/metrics").text
        assert all(r.status_code == 200 for r in responses), name
        batches = _metric(after, "batchserve_batch_size_count", name) - _metric(
            before, "batchserve_batch_size_count", name
        )
        items = _metric(after, "batchserve_batch_size_sum", name) - _metric(
            before, "batchserve_batch_size_sum", name
        )
        assert items == len(bodies) and items / batches > 1, (name, items, batches)
        together = [_rows_of(model, r.json()["predictions"][0]) for r in responses]
        assert_same_numbers(together, [list(a) for a in alone] * 4, PROBABILITY_TOLERANCE)


def _rows_of(model: Served, prediction: dict[str, Any]) -> list[float]:
    if model.task == "regress":
        return [prediction["values"][label] for label in model.labels]
    if model.task == "multilabel":
        return [prediction["probabilities"][label] for label in model.labels]
    row = [0.0] * len(model.labels)
    for ranked in prediction["top_k"]:
        row[ranked["index"]] = ranked["probability"]
    return row


def test_one_bad_item_in_a_batch_fails_alone(
    repository: tuple[Path, dict[str, Served]], server: tuple[str, str]
) -> None:
    url = server[0]
    model = repository[1]["series"]
    bad = [[1.0, 2.0]]  # two features per step, not three
    bodies = [{"inputs": [item]} for item in model.inputs] + [{"inputs": [bad]}]
    responses = asyncio.run(_post_all(url, "/v1/models/series/predict", bodies))
    assert [r.status_code for r in responses] == [200] * len(model.inputs) + [422]
    assert "inputs[0]" in responses[-1].json()["error"]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_kserve_v1_answers_each_head_in_its_shape(
    repository: tuple[Path, dict[str, Served]], server: tuple[str, str], name: str
) -> None:
    model = repository[1][name]
    url = server[0]
    body = {"instances": model.inputs}
    response = httpx.post(f"{url}/v1/models/{name}:predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    if model.task == "classify":
        rows = [p["probabilities"] for p in predictions]
        best = [model.labels[int(np.argmax(row))] for row in model.expected]
        assert [p["label"] for p in predictions] == best
    else:
        rows = [_rows_of(model, p) for p in predictions]
    assert np.abs(np.asarray(rows) - model.expected).max() <= TOLERANCE


@pytest.mark.parametrize(
    ("tensor", "words"),
    [
        ({"shape": [1, 0, 3], "data": []}, "at least one step"),
        ({"shape": [1, 2, 2], "data": [0.0] * 4}, "does not match the model's [-1, -1, 3]"),
        ({"shape": [1, 2, 3], "data": [0.0] * 5}, "needs 6"),
        ({"shape": [1, 1025, 3], "data": [0.0] * 3075}, "the limit is 1024"),
        ({"shape": [1, 2, 3], "data": [0.0] * 5 + [1e39]}, "not a finite number"),
    ],
    ids=["no-steps", "wrong-features", "short-data", "too-many-steps", "beyond-fp32"],
)
def test_bad_numeric_sequences_over_v2_are_refused_naming_the_problem(
    server: tuple[str, str], tensor: dict[str, Any], words: str
) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", **tensor}]}
    response = httpx.post(f"{server[0]}/v2/models/series/infer", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert words in response.text, response.text


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ([], "expected an array of 1 to"),
        ([[1.0, 2.0, "x"]], "found a string"),
        ([[[1.0, 2.0, 3.0]]], "expected a number, found an array"),
        ([[1.0, 2.0, 3.0], [1.0]], "unequal lengths"),
        ([[True, 2.0, 3.0]], "found a boolean"),
        ("a string", "got a string"),
    ],
    ids=["empty", "string", "too-deep", "ragged", "boolean", "not-an-array"],
)
def test_bad_numeric_sequences_over_v1_are_refused_naming_the_item(
    server: tuple[str, str], item: Any, words: str
) -> None:
    response = httpx.post(f"{server[0]}/v1/models/series/predict", json={"inputs": [item]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "inputs[0]" in error and words in error, error


@pytest.mark.parametrize(
    "spec",
    [
        TextInput(alphabet="ab", max_length=8),
        WordsInput(vocabulary=["<unk>", "a"]),
        SubwordsInput(vocab_size=10),
        SequenceInput(features=3),
    ],
    ids=lambda spec: spec.kind,
)
def test_every_sequence_input_counts_its_steps_against_max_batch_tokens(spec: Any) -> None:
    settings = Settings(max_batch_tokens=77)
    # Only the fields batch_limits reads: the limits follow from the input kind alone.
    config = ModelConfig.model_construct(input=spec, batching=BatchingConfig())  # type: ignore[call-arg]
    assert batch_limits(config, settings).max_batch_tokens == 77
    vector = ModelConfig.model_construct(  # type: ignore[call-arg]
        input=VectorInput(shape=[4]), batching=BatchingConfig()
    )
    assert batch_limits(vector, settings).max_batch_tokens is None
