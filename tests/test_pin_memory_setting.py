"""BATCHSERVE_PIN_MEMORY: on CUDA, batches go to the GPU from pinned host memory unless it is off.
On the CPU it changes nothing; the CUDA test runs where a GPU is present (bench/gpu_check.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from app.settings import Settings
from tests.conftest import live_app, settings_for, write_tiny_repository
from tests.numbers import assert_same_numbers

MODELS = ("mnist-mlp", "names-rnn", "names-lm")
REQUESTS = {
    "mnist-mlp": ("predict", {"inputs": [[0.25] * 784, [0.0] * 783 + [1.0]], "top_k": 3}),
    "names-rnn": ("predict", {"inputs": ["Rossi", "Kim", "Nakamura"], "top_k": 3}),
    "names-lm": ("score", {"inputs": ["Smith", "Ng", "Kowalczyk"], "per_token": True}),
}


def test_pin_memory_is_on_by_default_and_read_from_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BATCHSERVE_PIN_MEMORY", raising=False)
    assert Settings().pin_memory is True
    monkeypatch.setenv("BATCHSERVE_PIN_MEMORY", "false")
    assert Settings().pin_memory is False


def test_a_nonsense_pin_memory_stops_the_server_naming_the_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"],
        env={**os.environ, "BATCHSERVE_PIN_MEMORY": "sometimes"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "BATCHSERVE_PIN_MEMORY" in done.stderr


def _answers(
    repository: Path, device: str, pin_memory: bool
) -> tuple[dict[str, object], set[bool]]:
    """Each model's answers to REQUESTS, and the pin_memory its loaded servables were given."""
    settings = settings_for(repository, device=device, pin_memory=pin_memory)
    with live_app(settings) as (url, app):
        flags = {app.plane.registry.get(m).servable.pin_memory for m in MODELS}
        answers = {}
        for model, (endpoint, body) in REQUESTS.items():
            response = httpx.post(f"{url}/v1/models/{model}/{endpoint}", json=body)
            assert response.status_code == 200, response.text
            answers[model] = response.json()
    return answers, flags


def test_the_setting_reaches_every_servable_and_changes_no_answer_on_the_cpu(
    tmp_path: Path,
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    pinned, pinned_flags = _answers(repository, "cpu", True)
    plain, plain_flags = _answers(repository, "cpu", False)
    assert pinned_flags == {True} and plain_flags == {False}
    assert_same_numbers(pinned, plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_and_plain_copies_give_the_same_answers_on_cuda(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    pinned, _ = _answers(repository, "cuda", True)
    plain, _ = _answers(repository, "cuda", False)
    on_cpu, _ = _answers(repository, "cpu", True)
    assert_same_numbers(pinned, plain)
    assert_same_numbers(pinned, on_cpu, tolerance=1e-4)
