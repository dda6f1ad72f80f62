"""An ONNX character language model (task score): /v1 score equal to PyTorch's log-probabilities,
completions echoing the same numbers and generating greedily what PyTorch would, batched."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import httpx
import pytest
import torch

from app.cli import main
from tests.conftest import live_server, settings_for
from tests.onnx_exports import ALPHABET, TinyLM, export_fresh, tokens_of

pytestmark = pytest.mark.slow  # an export through torch.onnx

BOS, EOS = len(ALPHABET), len(ALPHABET) + 1
WORDS = ["a", "cab", "dove", "eagle", "kestrel"]
TOLERANCE = 1e-5  # summed float32 log-probabilities of a few steps


@pytest.fixture(scope="module")
def lm() -> TinyLM:
    torch.manual_seed(4)
    return TinyLM().eval()


@pytest.fixture(scope="module")
def url(lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("onnx-lm")
    dynamic = [{0: "batch", 1: "steps"}]
    path = export_fresh(lm, [{"zeros": [2, 5]}], work / "lm.onnx", ["tokens"], dynamic)
    repository = work / "repository"
    options = ["--name", "lm-onnx", "--repository", str(repository), "--alphabet", ALPHABET]
    assert main(["import", "onnx", str(path), *options, "--max-length", "12"]) == 0
    settings = settings_for(repository, max_batch_delay_ms=50, batch_idle_turns=0)
    with live_server(settings) as base:
        yield base


def _per_token(lm: TinyLM, word: str) -> list[float]:
    """PyTorch's ln P of each character of `word` and of EOS after it."""
    targets = [*tokens_of(word), EOS]
    with torch.inference_mode():
        log_probs = torch.log_softmax(lm(torch.tensor([[BOS, *targets[:-1]]])), dim=-1)[0]
    return [float(log_probs[t, token]) for t, token in enumerate(targets)]


def test_score_equals_pytorch(url: str, lm: TinyLM) -> None:
    body = {"inputs": WORDS, "per_token": True}
    scores = httpx.post(f"{url}/v1/models/lm-onnx/score", json=body).json()["scores"]
    for word, score in zip(WORDS, scores, strict=True):
        expected = _per_token(lm, word)
        assert math.isclose(score["log_prob"], math.fsum(expected), abs_tol=TOLERANCE), word
        found = [t["log_prob"] for t in score["tokens"]]
        assert max(abs(a - b) for a, b in zip(found, expected, strict=True)) <= TOLERANCE


def test_completions_echo_the_scores(url: str, lm: TinyLM) -> None:
    body = {"model": "lm-onnx", "prompt": "dove", "max_tokens": 0, "echo": True, "logprobs": 0}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    echoed = answer.json()["choices"][0]["logprobs"]["token_logprobs"]
    expected = _per_token(lm, "dove")[:-1]  # the prompt's characters, not EOS
    assert max(abs(a - b) for a, b in zip(echoed, expected, strict=True)) <= TOLERANCE


def test_greedy_completion_is_what_pytorch_would_generate(url: str, lm: TinyLM) -> None:
    tokens = [BOS, *tokens_of("ca")]
    generated = ""
    with torch.inference_mode():
        for _ in range(6):
            logits = lm(torch.tensor([tokens]))[0, -1]
            logits[BOS] = -math.inf  # never chosen, as the server forbids it
            token = int(logits.argmax())
            if token == EOS:
                break
            generated += ALPHABET[token]
            tokens.append(token)
    body = {"model": "lm-onnx", "prompt": "ca", "max_tokens": 6, "temperature": 0}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"] == generated


def test_concurrent_scores_are_batched(url: str) -> None:
    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            path = "/v1/models/lm-onnx/score"
            return await asyncio.gather(*(http.post(path, json={"inputs": [w]}) for w in WORDS * 4))

    def counts() -> tuple[float, float]:
        text = httpx.get(f"{url}/metrics").text
        found: dict[str, float] = {}
        for line in text.splitlines():
            for metric in ("batchserve_batch_size_count", "batchserve_batch_size_sum"):
                if line.startswith(metric + '{model="lm-onnx"'):
                    found[metric] = found.get(metric, 0.0) + float(line.rsplit(" ", 1)[1])
        return found["batchserve_batch_size_count"], found["batchserve_batch_size_sum"]

    passes_before, items_before = counts()
    assert all(r.status_code == 200 for r in asyncio.run(together()))
    passes, items = counts()
    assert items - items_before == len(WORDS) * 4
    assert (items - items_before) / (passes - passes_before) > 1


def test_imported_config_is_a_scoring_model(url: str) -> None:
    info = httpx.get(f"{url}/v1/models/lm-onnx").json()
    assert info["task"] == "score" and info["architecture"]["output_kind"] == "logits"
