"""Checkpoints are untrusted files: hostile or broken ones beside the shipped models are refused
with a reason, run no code, and leave the shipped models serving."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import httpx

from tests.conftest import SHIPPED, live_server, settings_for


class _WritesAFile:
    """Unpickling this would create `path`: the proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def _copy_of(repository: Path, source: str, target: str) -> Path:
    directory = repository / target / "1"
    shutil.copytree(SHIPPED / source / "1", directory)
    config = json.loads((directory / "config.json").read_text())
    config["name"] = target
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _edit_config(directory: Path, **changes: object) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_hostile_checkpoints_are_refused_and_the_shipped_models_serve(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(SHIPPED, repository)
    marker = tmp_path / "code-ran"

    bomb = _copy_of(repository, "mnist-mlp", "pickle-bomb")
    (bomb / "model.safetensors").unlink()
    with (bomb / "model.pt").open("wb") as f:
        pickle.dump({"layers.0.weight": _WritesAFile(marker)}, f, protocol=2)
    _edit_config(bomb, weights_file="model.pt", weights_sha256=None)

    truncated = _copy_of(repository, "names-rnn", "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _edit_config(truncated, weights_sha256=None)

    mismatched = _copy_of(repository, "mnist-mlp", "mismatched")
    _edit_config(mismatched, architecture={"type": "mlp", "layer_sizes": [784, 32, 10]})

    absurd = _copy_of(repository, "mnist-mlp", "absurd")
    _edit_config(absurd, architecture={"type": "mlp", "layer_sizes": [784, 65536, 65536, 10]})

    with live_server(settings_for(repository)) as url:
        states = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
        reasons = {
            name: httpx.get(f"{url}/v1/models/{name}").json()["reason"]
            for name in ("pickle-bomb", "truncated", "mismatched", "absurd")
        }
        served = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": ["Nakamura"]})

    assert not marker.exists(), "unpickling the checkpoint ran code"
    for name in ("pickle-bomb", "truncated", "mismatched", "absurd"):
        assert states[name]["state"] == "failed", (name, reasons[name])
    assert "model.pt" in reasons["pickle-bomb"]
    assert "model.safetensors" in reasons["truncated"]
    assert "do not match" in reasons["mismatched"]
    assert "parameters" in reasons["absurd"]
    for name in ("mnist-mlp", "names-rnn", "names-lm"):
        assert states[name]["state"] == "ready"
    assert served.json()["predictions"][0]["label"] == "JP"
