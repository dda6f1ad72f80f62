"""A word-level language model (the char_lm family over a words input): trained here in PyTorch,
imported with `batchserve import torch --arch char_lm --vocabulary`, served; /score equals the
module's own log-probabilities, /v1/completions' echoed log-probs equal /score's per token, and
lm-evaluation-harness' loglikelihood (over /tokenize and /v1/completions) agrees with both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from torch import nn

from app.cli import main
from tests.conftest import live_server, settings_for

TOLERANCE = 1e-5
CORPUS = [
    "the film was good", "the film was bad", "a good story", "the story was very good",
    "a bad film", "the music was good", "the acting was very bad",
]  # fmt: skip
VOCABULARY = sorted({w for line in CORPUS for w in line.split()})
BOS, EOS = len(VOCABULARY), len(VOCABULARY) + 1
TEXTS = ["the film was very good", "a story", "The MUSIC was bad"]
PAIRS = [("the film was", " good"), ("a", " bad film"), ("the story", " was very good")]


class WordLM(nn.Module):
    """Embedding -> GRU -> Linear over the words, BOS and EOS (as batchserve's char_lm)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY) + 2, 8)
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, len(VOCABULARY) + 2)

    def forward(self, words: list[str]) -> torch.Tensor:
        """ln P of each word and then EOS, given BOS and the words before it."""
        ids = [VOCABULARY.index(w) for w in words]
        output, _ = self.rnn(self.embedding(torch.tensor([[BOS, *ids]])))
        table = torch.log_softmax(self.head(output[0]), dim=-1)
        return table.gather(1, torch.tensor([*ids, EOS])[:, None])[:, 0]

    def log_probs(self, words: list[str]) -> list[float]:
        picked: list[float] = self(words).tolist()
        return picked


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, WordLM]]:
    tmp = tmp_path_factory.mktemp("word-lm")
    torch.manual_seed(0)
    model = WordLM()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(30):
        optimizer.zero_grad()
        loss = -torch.stack([model(line.split()).sum() for line in CORPUS]).sum()
        loss.backward()
        optimizer.step()
    model.eval()
    torch.save(model.state_dict(), tmp / "reviews.pt")
    (tmp / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n")
    argv = ["import", "torch", tmp / "reviews.pt", "--arch", "char_lm", "--vocabulary",
            tmp / "vocab.txt", "--unknown", "", "--max-length", "16",
            "--repository", tmp / "repository"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert main([str(a) for a in argv]) == 0
    finally:
        torch.set_num_threads(threads)
    with live_server(settings_for(tmp / "repository", max_batch_delay_ms=20)) as url:
        yield url, model


def _score(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(f"{url}/v1/models/reviews/score", json={**body, "per_token": True})
    assert response.status_code == 200, response.text
    scores: list[dict[str, Any]] = response.json()["scores"]
    return scores


def test_score_is_the_modules_own_log_probability(served: tuple[str, WordLM]) -> None:
    url, model = served
    scores = _score(url, {"inputs": TEXTS})
    for text, score in zip(TEXTS, scores, strict=True):
        with torch.no_grad():
            expected = model.log_probs(text.lower().split())
        got = [t["log_prob"] for t in score["tokens"]]
        assert len(got) == len(expected) == score["num_tokens"]
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= TOLERANCE
        assert [t["token"] for t in score["tokens"]] == [
            *(f" {w}" for w in text.lower().split()),
            "</s>",
        ]


def test_completions_echo_the_log_probs_of_score(served: tuple[str, WordLM]) -> None:
    url, _ = served
    for text, score in zip(TEXTS, _score(url, {"inputs": TEXTS}), strict=True):
        body = {"model": "reviews", "prompt": text + "</s>", "max_tokens": 0, "echo": True,
                "logprobs": 1}  # fmt: skip
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
        logprobs = response.json()["choices"][0]["logprobs"]
        echoed = [lp for lp in logprobs["token_logprobs"] if lp is not None]
        expected = [t["log_prob"] for t in score["tokens"]]
        assert len(echoed) == len(expected)
        assert max(abs(a - b) for a, b in zip(echoed, expected, strict=True)) <= TOLERANCE


def test_words_outside_the_vocabulary_are_refused_naming_them(served: tuple[str, WordLM]) -> None:
    url, _ = served
    response = httpx.post(f"{url}/v1/models/reviews/score", json={"inputs": ["the zebra film"]})
    assert response.status_code == 422
    assert "inputs[0]" in response.json()["error"] and "'zebra'" in response.json()["error"]


def test_lm_eval_loglikelihood_agrees_with_score(served: tuple[str, WordLM]) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    url, _ = served
    lm = get_model("local-completions")(
        model="reviews", base_url=f"{url}/v1/completions", tokenizer_backend="remote",
        max_length=18, batch_size=2, max_retries=1,
    )  # fmt: skip
    instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]
    results = lm.loglikelihood(instances)
    pairs = [{"context": c, "continuation": x} for c, x in PAIRS]
    for (log_prob, greedy), score in zip(results, _score(url, {"pairs": pairs}), strict=True):
        assert log_prob == pytest.approx(score["log_prob"], abs=TOLERANCE)
        assert greedy == score["is_greedy"]
