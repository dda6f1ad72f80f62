"""The ONNX Runtime session of a version: its threads from the settings, its execution provider
from the device, and a clear refusal for a device this onnxruntime cannot run on."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest

from app.serving.onnx_servable import OnnxModule, load_onnx_servable
from models.checkpoint import CheckpointError
from models.onnx_file import load_onnx, providers_for
from tests.conftest import settings_for
from tests.onnx_graphs import linear, write_version


def test_the_session_takes_its_threads_from_the_settings(tmp_path: Path) -> None:
    directory = write_version(tmp_path / "repository", "linear", linear())
    settings = settings_for(tmp_path / "repository", torch_threads=3)
    servable, _, device = load_onnx_servable(directory, settings)
    assert isinstance(servable.model, OnnxModule) and device == "cpu"
    options = servable.model.graph.session.get_session_options()
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1


def test_cpu_runs_on_the_cpu_provider(tmp_path: Path) -> None:
    directory = write_version(tmp_path / "repository", "linear", linear())
    model, _ = load_onnx(directory, "cpu")
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    assert model.device == "cpu"


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
    reason="this onnxruntime has CUDA: the refusal is for one without it",
)
def test_cuda_without_onnxruntime_gpu_is_refused_saying_what_to_install(tmp_path: Path) -> None:
    directory = write_version(tmp_path / "repository", "linear", linear(), device="cuda")
    with pytest.raises(CheckpointError, match="pip install onnxruntime-gpu"):
        load_onnx_servable(directory, settings_for(tmp_path / "repository"))
    assert providers_for("auto") == (["CPUExecutionProvider"], "cpu")


def test_a_device_that_is_no_device_is_refused() -> None:
    with pytest.raises(CheckpointError, match="expected cpu, cuda, cuda:N or auto"):
        providers_for("tpu")
