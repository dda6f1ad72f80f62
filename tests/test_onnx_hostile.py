"""Hostile and broken ONNX files beside good models: each refused at load with its reason (or, for
a model that emits NaN on some inputs, those items failed alone), while the server goes on
serving the others. The graphs are built with onnx.helper: small, and exactly as bad as meant."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.cli import main
from models.checkpoint import CheckpointError
from models.onnx_file import EXTRA, load_onnx
from tests.conftest import SHIPPED, live_server, settings_for
from tests.onnx_graphs import external, graph, linear, weights, write_version


def _absurd() -> onnx.ModelProto:
    huge = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.zeros(12, np.float32))
    huge.dims[:] = [4, 3, 1_000_000_000, 1_000]  # declared, not held
    return graph([helper.make_node("MatMul", ["x", "W"], ["y"])], [huge])


def _hostile_repository(root: Path) -> Path:
    repository = root / "repository"
    shutil.copytree(SHIPPED / "mnist-mlp", repository / "mnist-mlp")
    write_version(repository, "linear", linear())
    (root / "outside.bin").write_bytes(np.eye(4, 3, dtype=np.float32).tobytes())
    write_version(repository, "escapes", external(linear(), "../../../outside.bin"))
    linked = write_version(repository, "linked-out", external(linear(), "weights.bin"))
    (linked / "weights.bin").symlink_to(root / "outside.bin")
    inside = write_version(repository, "inside", external(linear(), "weights.bin"))
    (inside / "weights.bin").write_bytes(np.eye(4, 3, dtype=np.float32).tobytes())
    write_version(repository, "absurd", _absurd())
    unknown = helper.make_node("NoSuchOp", ["x"], ["y"])
    write_version(repository, "unknown-op", graph([unknown]))
    custom = helper.make_node("Fancy", ["x"], ["y"], domain="com.example")
    write_version(repository, "custom-op", graph([custom], domains={"com.example": 1}))
    # Gelu is standard since opset 20; a graph that says opset 13 and uses it: ORT refuses.
    gelu = helper.make_node("Gelu", ["x"], ["h"])
    newer = graph([gelu, helper.make_node("MatMul", ["h", "W"], ["y"])], [weights()], opset=13)
    write_version(repository, "newer-op", newer)
    write_version(repository, "wrong-labels", linear(), labels=["a", "b", "c", "d", "e"])
    write_version(
        repository,
        "wrong-output",
        linear(),
        architecture={"type": "onnx", "input": "x", "output": "probs"},
    )
    write_version(
        repository,
        "fixed-batch",
        graph([helper.make_node("MatMul", ["x", "W"], ["y"])], [weights()], batch=1),
    )
    # sqrt(x - 1): NaN for the all-zero warm-up input.
    always = [
        helper.make_node("Sub", ["x", "one"], ["d"]),
        helper.make_node("Sqrt", ["d"], ["s"]),
        helper.make_node("MatMul", ["s", "W"], ["y"]),
    ]
    one = numpy_helper.from_array(np.ones(4, np.float32), "one")
    write_version(repository, "always-nan", graph(always, [weights(), one]))
    # sqrt(x): finite for the warm-up, NaN for any item with a negative element.
    some = [helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("MatMul", ["s", "W"], ["y"])]
    write_version(repository, "sometimes-nan", graph(some, [weights()]))
    return repository


REFUSED = {
    "escapes": "outside the version directory",
    "linked-out": "weights.bin is a symbolic link leading out of the model repository",
    "absurd": "declares dims [4, 3, 1000000000, 1000]",
    "unknown-op": "operator NoSuchOp, which is not a standard ONNX operator",
    "custom-op": "operator Fancy of domain 'com.example'",
    "newer-op": "ONNX Runtime refused model.onnx",
    "wrong-labels": "does not match the config's 5 labels",
    "wrong-output": "the config names output 'probs'; the graph's outputs: ['y']",
    "fixed-batch": "not a dynamic batch dimension first; export it with a dynamic batch",
    "always-nan": "non-finite outputs",
}


async def _concurrently(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        path = "/v1/models/sometimes-nan/predict"
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def test_hostile_onnx_files_are_refused_and_the_others_serve(tmp_path: Path) -> None:
    repository = _hostile_repository(tmp_path)
    settings = settings_for(repository, max_batch_delay_ms=100, batch_idle_turns=0)
    with live_server(settings) as url:
        states = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
        reasons = {name: httpx.get(f"{url}/v1/models/{name}").json()["reason"] for name in REFUSED}
        mnist = httpx.post(f"{url}/v1/models/mnist-mlp/predict", json={"inputs": [[0.0] * 784]})
        linear = httpx.post(f"{url}/v1/models/linear/predict", json={"inputs": [[1, 0, 0, 0]]})
        inside = httpx.post(f"{url}/v1/models/inside/predict", json={"inputs": [[0, 0, 5, 0]]})
        bodies = [
            {"inputs": [[4, 1, 0, 0]]},
            {"inputs": [[-1, 0, 0, 0]]},
            {"inputs": [[0, 9, 0, 0]]},
        ]
        nan_answers = asyncio.run(_concurrently(url, bodies))
        after = httpx.post(
            f"{url}/v1/models/sometimes-nan/predict", json={"inputs": [[1, 4, 9, 0]]}
        )
    for name, reason in REFUSED.items():
        assert states[name]["state"] == "failed", (name, reasons[name])
        assert reason in reasons[name], (name, reasons[name])
    assert mnist.status_code == 200 and linear.status_code == 200, (mnist.text, linear.text)
    assert linear.json()["predictions"][0]["label"] == "a"
    assert inside.json()["predictions"][0]["label"] == "c", "external data inside the directory"
    good, bad, other = nan_answers
    assert good.status_code == 200 and good.json()["predictions"][0]["label"] == "a"
    assert other.status_code == 200 and other.json()["predictions"][0]["label"] == "b"
    assert bad.status_code == 422 and "not finite" in bad.text, bad.text
    assert after.status_code == 200 and after.json()["predictions"][0]["label"] == "c"


def test_import_refuses_a_fixed_batch_dimension_saying_how_to_export_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fixed.onnx"
    onnx.save(graph([helper.make_node("MatMul", ["x", "W"], ["y"])], [weights()], batch=1), path)
    repository = tmp_path / "repository"
    code = main(["import", "onnx", str(path), "--repository", str(repository), "--labels", "a,b,c"])
    err = capsys.readouterr().err
    assert code == 2
    assert "dynamic batch dimension" in err and 'torch.export.Dim("batch")' in err, err
    assert not (repository / "fixed").exists()


def test_import_refuses_external_data_saying_how_to_inline_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "split.onnx"
    (tmp_path / "weights.bin").write_bytes(np.eye(4, 3, dtype=np.float32).tobytes())
    path.write_bytes(external(linear(), "weights.bin").SerializeToString())
    code = main(
        ["import", "onnx", str(path), "--repository", str(tmp_path / "r"), "--labels", "a,b,c"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "save_as_external_data=False" in err, err


def test_import_refuses_an_old_opset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.onnx"
    onnx.save(graph([helper.make_node("MatMul", ["x", "W"], ["y"])], [weights()], opset=7), path)
    code = main(
        ["import", "onnx", str(path), "--repository", str(tmp_path / "r"), "--labels", "a,b,c"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "opset 7" in err, err


def test_import_writes_a_version_that_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "linear.onnx"
    onnx.save(linear(), path)
    repository = tmp_path / "repository"
    code = main(["import", "onnx", str(path), "--repository", str(repository), "--labels", "a,b,c"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((repository / "linear" / "1" / "config.json").read_text())
    assert config["format"] == "onnx" and config["architecture"]["opset"] == 20
    model, _ = load_onnx(repository / "linear" / "1")
    assert model.probabilities(model.vectors(np.eye(4, dtype=np.float32)[:1])).argmax() == 0


def test_a_missing_onnxruntime_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_version(tmp_path / "repository", "linear", linear())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    with pytest.raises(CheckpointError) as refused:
        load_onnx(directory)
    assert EXTRA in str(refused.value) and "\n" not in str(refused.value)


def test_external_data_linked_out_of_the_version_directory_is_refused_by_the_loader(
    tmp_path: Path,
) -> None:
    # Without the repository's own symlink check (batchserve check, or a server that follows
    # external links): the loader resolves the link and refuses the file it leads to.
    (tmp_path / "outside.bin").write_bytes(np.eye(4, 3, dtype=np.float32).tobytes())
    directory = write_version(tmp_path / "repository", "linked", external(linear(), "weights.bin"))
    (directory / "weights.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(CheckpointError, match="outside the version directory"):
        load_onnx(directory)


def test_check_fails_on_each_hostile_version_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = _hostile_repository(tmp_path)
    capsys.readouterr()
    code = main(["check", str(repository)])
    out = capsys.readouterr().out
    assert code == 1
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    for name, reason in REFUSED.items():
        # The server's repository refuses the link itself; check reaches the loader's refusal.
        wanted = "outside the version directory" if name == "linked-out" else reason
        assert " FAILED " in rows[name] and wanted in rows[name], rows[name]
    for name in ("linear", "inside", "sometimes-nan", "mnist-mlp"):
        assert " ok " in rows[name], rows[name]
