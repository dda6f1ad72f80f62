"""The registry: versions, default version, devices, and models that fail to load."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import httpx
import torch

from app.serving.loader import resolve_device
from app.serving.registry import ModelRegistry
from models.checkpoint import build_model, read_config, save_checkpoint
from tests.conftest import live_server, settings_for, write_tiny_repository
from tests.numbers import LOG_PROB_TOLERANCE, assert_same_numbers, same_numbers


def _break_weights(version_dir: Path) -> None:
    weights = version_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def test_a_model_that_fails_to_load_is_listed_as_failed_while_the_others_serve(
    tmp_path: Path,
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    _break_weights(repository / "names-rnn" / "1")
    with live_server(settings_for(repository)) as url:
        listing = httpx.get(f"{url}/v1/models").json()["models"]
        metadata = httpx.get(f"{url}/v1/models/names-rnn").json()
        refused = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": ["Kim"]})
        served = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": ["Kim"]})
    states = {m["name"]: m["state"] for m in listing}
    assert states == {"mnist-mlp": "ready", "names-lm": "ready", "names-rnn": "failed"}
    assert metadata["state"] == "failed"
    # The weights were cut short after the checkpoint was written: their hash no longer matches.
    assert "model.safetensors does not match weights_sha256" in metadata["reason"]
    assert refused.status_code == 503 and "failed" in refused.json()["error"]
    assert served.status_code == 200


def _add_version(repository: Path, name: str, version: str, seed: int) -> None:
    source = repository / name / "1"
    target = repository / name / version
    shutil.copytree(source, target)
    torch.manual_seed(seed)
    config = read_config(source)
    save_checkpoint(target, build_model(config), config)


def test_newest_version_is_the_default_and_older_ones_stay_addressable(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    _add_version(repository, "names-lm", "2", seed=7)
    with live_server(settings_for(repository)) as url:
        summary = next(
            m for m in httpx.get(f"{url}/v1/models").json()["models"] if m["name"] == "names-lm"
        )
        default = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": ["Kim"]}).json()
        v1 = httpx.post(
            f"{url}/v1/models/names-lm/versions/1/score", json={"inputs": ["Kim"]}
        ).json()
        v2 = httpx.post(
            f"{url}/v1/models/names-lm/versions/2/score", json={"inputs": ["Kim"]}
        ).json()
    assert summary["versions"] == ["1", "2"] and summary["default_version"] == "2"
    assert default["version"] == "2" and v1["version"] == "1"
    assert_same_numbers(default["scores"], v2["scores"], LOG_PROB_TOLERANCE)
    assert not same_numbers(v1["scores"], v2["scores"], tolerance=1e-2)


def test_metadata_reports_checkpoint_hash_labels_and_batching(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    config = json.loads((repository / "names-rnn" / "1" / "config.json").read_text())
    with live_server(settings_for(repository, max_batch_size=16)) as url:
        meta = httpx.get(f"{url}/v1/models/names-rnn/versions/1").json()
    assert meta["checkpoint_sha256"] == config["weights_sha256"]
    assert meta["labels"] == ["JP", "PL", "IT"]
    assert meta["architecture"]["type"] == "char_rnn_classifier"
    assert meta["input"]["max_length"] == 24
    assert meta["batching"]["max_batch_size"] == 16
    # Device "auto": CUDA where there is one (as on a GPU machine), the CPU elsewhere.
    assert meta["device"] == str(resolve_device("auto")) and meta["state"] == "ready"


def test_a_model_asking_for_an_absent_gpu_fails_with_the_reason(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    config_path = repository / "mnist-mlp" / "1" / "config.json"
    config = json.loads(config_path.read_text())
    config["device"] = "cuda:7"
    config_path.write_text(json.dumps(config))
    with live_server(settings_for(repository)) as url:
        meta = httpx.get(f"{url}/v1/models/mnist-mlp").json()
        other = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": ["Kim"]})
    if torch.cuda.device_count() > 7:
        assert meta["state"] == "ready"
    else:
        assert meta["state"] == "failed" and "cuda:7" in meta["reason"]
    assert other.status_code == 200


async def test_registry_scans_numeric_version_directories_only(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    (repository / "names-lm" / "notes").mkdir()
    (repository / "empty-model").mkdir()
    registry = ModelRegistry(settings_for(repository))
    assert registry.scan() == {"mnist-mlp": ["1"], "names-lm": ["1"], "names-rnn": ["1"]}


def test_tf32_is_off_unless_the_operator_allows_it(tmp_path: Path) -> None:
    """TF32 would move CUDA scores by up to 1e-2 against the CPU's; the flags are process-wide,
    so the server sets them at start-up whatever a previous user of torch left."""
    repository = write_tiny_repository(tmp_path / "repository")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    with live_server(settings_for(repository)):
        off = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with live_server(settings_for(repository, allow_tf32=True)):
        on = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    assert off == (False, False) and on == (True, True)


def test_the_collector_threshold_is_the_settings_while_serving(tmp_path: Path) -> None:
    """Python's young-generation threshold (700) made the collector a third of the CPU under
    1,024 connections; the server raises it for as long as it serves, then puts it back."""
    repository = write_tiny_repository(tmp_path / "repository")
    before = gc.get_threshold()
    with live_server(settings_for(repository)):
        default = gc.get_threshold()
    with live_server(settings_for(repository, gc_threshold=54321)):
        chosen = gc.get_threshold()
    assert default == (10_000, *before[1:])
    assert chosen == (54321, *before[1:])
    assert gc.get_threshold() == before
