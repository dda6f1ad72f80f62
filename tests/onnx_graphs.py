"""Small ONNX graphs built with onnx.helper, exactly as good or as bad as a test needs, and a
version directory to put one in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LABELS = ["a", "b", "c"]


def weights(name: str = "W") -> TensorProto:
    return numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), name)


def graph(
    nodes: list[Any],
    initializers: list[TensorProto] | None = None,
    batch: int | str = "batch",
    outputs: int = 3,
    opset: int = 20,
    domains: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """x [batch, 4] floats -> the nodes -> y [batch, outputs]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, outputs])
    graph = helper.make_graph(nodes, "g", [x], [y], initializers or [])
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    return helper.make_model(graph, opset_imports=imports, ir_version=9)


def linear() -> onnx.ModelProto:
    return graph([helper.make_node("MatMul", ["x", "W"], ["y"])], [weights()])


def write_version(repository: Path, name: str, model: onnx.ModelProto, **config: Any) -> Path:
    directory = repository / name / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(model.SerializeToString())
    body = {
        "format": "onnx",
        "name": name,
        "task": "classify",
        "architecture": {"type": "onnx", "input": "x", "output": "y"},
        "input": {"kind": "vector", "shape": [4]},
        "labels": LABELS,
        "weights_file": "model.onnx",
        **config,
    }
    (directory / "config.json").write_text(json.dumps(body))
    return directory


def external(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """The model with W's data moved to the external file `location`."""
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "48")):
        tensor.external_data.add(key=key, value=value)
    return model
