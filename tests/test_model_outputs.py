"""Numbers a model produces that JSON cannot carry: checkpoints whose weights are finite (so every
load check passes) but whose outputs overflow, for some inputs or for all, and scores whose
perplexity overflows. No answer is a 500 or a non-finite JSON number."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
from torch import nn

from models.architectures import MLP, CharLM
from models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import live_server, settings_for, write_tiny_repository

ADMIN_KEY = "outputs-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ZEROS = [0.0] * 784
HOT = [1.0] + [0.0] * 783  # pixel 0 lit


def _rewrite(version: Path, change: Callable[[nn.Module], None]) -> None:
    """Load the version's module, let `change` edit its weights, save it back (new sha256)."""
    model, config = load_checkpoint(version)
    with torch.no_grad():
        change(model)
    save_checkpoint(version, model, config)


def _head(model: nn.Module) -> nn.Linear:
    assert isinstance(model, CharLM)
    return model.head


def _overflow_on_pixel_zero(model: nn.Module) -> None:
    assert isinstance(model, MLP)
    first, last = model.layers[0], model.layers[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    first.weight.zero_()
    first.weight[:, 0] = 3e38  # finite in float32; times 1.0 and summed four times, it is not
    first.weight[:, 1] = -3e38  # so that all-zero and all-one images (the load probe's) stay finite
    last.weight.fill_(1.0)


def _overflow_always(model: nn.Module) -> None:
    head = _head(model)
    head.bias[:] = 3e38
    head.bias[0] = -3e38


def _letters_cost_a_thousand_nats(model: nn.Module) -> None:
    """Every token but the alphabet's first ('a') gets log-probability about -1000: finite, but
    a string of them has a perplexity near e^1000."""
    head = _head(model)
    head.weight.zero_()
    head.bias.zero_()
    head.bias[0] = 1000.0


def test_an_item_whose_outputs_overflow_gets_its_own_422_and_its_neighbours_are_answered(
    tmp_path: Path,
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    _rewrite(repository / "mnist-mlp" / "1", _overflow_on_pixel_zero)
    settings = settings_for(repository, max_batch_delay_ms=100, batch_idle_turns=0)

    async def concurrently(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url) as client:
            bodies = [{"inputs": [ZEROS]}, {"inputs": [HOT]}, {"inputs": [ZEROS]}]
            return await asyncio.gather(
                *(client.post("/v1/models/mnist-mlp/predict", json=b) for b in bodies)
            )

    with live_server(settings) as url:
        good, bad, also_good = asyncio.run(concurrently(url))
        mixed = httpx.post(f"{url}/v1/models/mnist-mlp/predict", json={"inputs": [ZEROS, HOT]})
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, 784], "data": HOT}
        v2 = httpx.post(f"{url}/v2/models/mnist-mlp/infer", json={"inputs": [tensor]})
    assert good.status_code == also_good.status_code == 200
    assert bad.status_code == 422 and bad.json()["code"] == "result_not_finite"
    assert "not finite" in bad.json()["error"]
    assert mixed.status_code == 422 and mixed.json()["error"].startswith("inputs[1]: ")
    assert v2.status_code == 422 and v2.json()["code"] == "result_not_finite"


def test_a_model_whose_warm_up_outputs_overflow_fails_to_load_and_the_serving_one_stays(
    tmp_path: Path,
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    with live_server(settings_for(repository, admin_api_key=ADMIN_KEY)) as url:
        before = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": ["Kim"]})
        new = repository / "names-lm" / "2"
        new.mkdir()
        for name in ("config.json", "model.safetensors"):
            (new / name).write_bytes((repository / "names-lm" / "1" / name).read_bytes())
        _rewrite(new, _overflow_always)
        load = httpx.post(f"{url}/v2/repository/models/names-lm/load", headers=ADMIN)
        after = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": ["Kim"]})
        version_2 = httpx.get(f"{url}/v1/models/names-lm/versions/2").json()
    assert before.status_code == after.status_code == 200 and after.json()["version"] == "1"
    assert load.status_code == 400 and "non-finite outputs" in load.json()["error"]
    assert version_2["state"] == "failed" and "warm-up" in version_2["reason"]


def test_a_model_whose_outputs_always_overflow_fails_at_start_up_and_the_others_serve(
    tmp_path: Path,
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    _rewrite(repository / "names-lm" / "1", _overflow_always)
    with live_server(settings_for(repository)) as url:
        metadata = httpx.get(f"{url}/v1/models/names-lm").json()
        others = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": ["Kim"]})
    assert metadata["state"] == "failed" and "non-finite outputs" in metadata["reason"]
    assert others.status_code == 200


def test_a_perplexity_that_overflows_is_reported_not_raised(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    _rewrite(repository / "names-lm" / "1", _letters_cost_a_thousand_nats)
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Kim"]}
    with live_server(settings_for(repository)) as url:
        whole = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": ["Kim"]})
        pair = {"context": "K", "continuation": "im"}
        pairs = httpx.post(f"{url}/v1/models/names-lm/score", json={"pairs": [pair]})
        cheap = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": ["aaaa"]})
        v2 = httpx.post(f"{url}/v2/models/names-lm/infer", json={"inputs": [tensor]})
    assert whole.status_code == 422 and whole.json()["code"] == "result_not_finite"
    assert "perplexity overflows" in whole.json()["error"]
    # The pair has no perplexity: its log-probability is finite and answered.
    assert pairs.status_code == 200
    log_prob = pairs.json()["scores"][0]["log_prob"]
    assert math.isfinite(log_prob) and log_prob < -1500
    # "aaaa</s>" costs one expensive token of five: its perplexity fits a float.
    assert cheap.status_code == 200 and math.isfinite(cheap.json()["scores"][0]["perplexity"])
    assert v2.status_code == 422 and "perplexity" in v2.json()["error"]
    for response in (whole, pairs, cheap, v2):
        json.loads(response.text)  # strict JSON: no NaN or Infinity literals
