"""The OpenAI-compatible completions API on the shipped character language model, driven by the
clients that use such APIs for a living: lm-evaluation-harness's own `local-completions` model and
command line, and the official `openai` client (streaming included). Its log-probabilities are
the numbers /v1/models/names-lm/score gives."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHIPPED, live_server, settings_for
from tests.numbers import LOG_PROB_TOLERANCE

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("Smi", "th"), ("Kowal", "ski"), ("", "Li"), ("Nakam", "ura"), ("Jo", "hnson")]
NAMES = ["Johnson", "Nakamura", "O'Brien", "Li", "Xqjzvbk"]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    # Batches wait a little, so that concurrent requests share forward passes and steps.
    with live_server(settings_for(SHIPPED, max_batch_delay_ms=20)) as base:
        yield base


def _score(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(f"{url}/v1/models/names-lm/score", json={**body, "per_token": True})
    assert response.status_code == 200, response.text
    scores: list[dict[str, Any]] = response.json()["scores"]
    return scores


def _complete(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"model": "names-lm", **body}, timeout=60)


# -- lm-evaluation-harness ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(url: str) -> Any:
    from lm_eval.api.registry import get_model

    return get_model("local-completions")(
        model="names-lm",
        base_url=f"{url}/v1/completions",
        tokenizer_backend="remote",
        max_length=34,
        max_gen_toks=8,
        batch_size=4,
        max_retries=1,
    )


def _instances(kind: str, arguments: list[tuple[Any, ...]]) -> list[Any]:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


def test_lm_eval_loglikelihood_equals_the_score_of_pairs(lm: Any, url: str) -> None:
    results = lm.loglikelihood(_instances("loglikelihood", PAIRS))
    pairs = [{"context": c, "continuation": x} for c, x in PAIRS]
    scores = _score(url, {"pairs": pairs})
    for (log_prob, greedy), score in zip(results, scores, strict=True):
        assert log_prob == pytest.approx(score["log_prob"], abs=1e-5)
        assert greedy == score["is_greedy"]


def test_lm_eval_rolling_loglikelihood_equals_the_whole_string_score(lm: Any, url: str) -> None:
    results = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(n,) for n in NAMES]))
    for result, score in zip(results, _score(url, {"inputs": NAMES}), strict=True):
        # lm-eval's rolling sum stops at the last character; /score also counts </s>.
        without_end = score["log_prob"] - score["tokens"][-1]["log_prob"]
        assert result == pytest.approx(without_end, abs=1e-5)


def test_lm_eval_generate_until_stops_on_until(lm: Any) -> None:
    requests = [("Smi", {"until": ["h"], "max_gen_toks": 8}), ("Kowal", {"until": ["k"]})]
    generated = lm.generate_until(_instances("generate_until", requests))
    assert generated[0] == "t"  # greedy "Smith", cut before "h"
    assert "k" not in generated[1] and generated[1] == "s"  # "Kowalski"


@pytest.mark.slow
def test_the_lm_eval_command_runs_the_surname_task_against_batchserve(
    url: str, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "local-completions",
        "--model_args", f"model=names-lm,base_url={url}/v1/completions,"
        "tokenizer_backend=remote,max_length=34",
        "--batch_size", "16", "--include_path", "bench/lm_eval_task",
        "--tasks", "surname_endings", "--output_path", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (results_file,) = (tmp_path / "names-lm").glob("results_*.json")
    results = json.loads(results_file.read_text())["results"]["surname_endings"]
    # Four same-length endings, one real: chance is 0.25; the README quotes this run's figure.
    assert results["acc,none"] > 0.6 and results["acc,none"] == results["acc_norm,none"]


# -- the openai client ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_the_openai_client_completes_and_scores(client: Any, url: str) -> None:
    echoed = client.completions.create(
        model="names-lm", prompt="Johnson", max_tokens=0, echo=True, logprobs=1
    )
    (choice,) = echoed.choices
    assert choice.text == "Johnson" and choice.finish_reason == "length"
    (score,) = _score(url, {"inputs": ["Johnson"]})
    per_token = [t["log_prob"] for t in score["tokens"][:-1]]  # the echo has no </s>
    assert choice.logprobs.tokens == list("Johnson")
    assert choice.logprobs.token_logprobs == pytest.approx(per_token, abs=LOG_PROB_TOLERANCE)
    assert choice.logprobs.text_offset == list(range(7))
    greedy = client.completions.create(model="names-lm", prompt="Smi", max_tokens=8, temperature=0)
    assert greedy.choices[0].text == "th" and greedy.choices[0].finish_reason == "stop"
    assert greedy.usage.prompt_tokens == 3 and greedy.usage.completion_tokens == 3


def test_the_openai_client_streams_what_a_whole_answer_holds(client: Any) -> None:
    arguments = {"model": "names-lm", "prompt": ["Ko", "Ma"], "max_tokens": 12, "n": 2,
                 "temperature": 0.9, "seed": 11}  # fmt: skip
    whole = client.completions.create(**arguments)
    chunks = list(
        client.completions.create(**arguments, stream=True, stream_options={"include_usage": True})
    )
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for chunk in chunks[:-1]:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert texts == {c.index: c.text for c in whole.choices}
    assert finished == {c.index: c.finish_reason for c in whole.choices}
    assert len(set(texts.values())) > 1  # seeded, yet each choice its own stream


def test_the_openai_client_shows_the_servers_message_for_a_bad_request(client: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="names-lm", prompt="Sm!th", max_tokens=2)
    assert "outside the alphabet" in str(refused.value) and refused.value.code == "invalid_input"


# -- generation ------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_sample_alone_or_among_others(url: str) -> None:
    body = {"prompt": "Be", "max_tokens": 12, "temperature": 1.0, "seed": 2024, "n": 2}

    async def crowded() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            others = [
                http.post("/v1/completions", json={"model": "names-lm", "prompt": p,
                                                   "max_tokens": 20, "temperature": 1.0})
                for p in ("A", "Bo", "Ca", "Da", "Ed", "Fa")
            ]  # fmt: skip
            mine = http.post("/v1/completions", json={"model": "names-lm", **body})
            return await asyncio.gather(mine, *others)

    alone = _complete(url, **body).json()["choices"]
    among = asyncio.run(crowded())[0].json()["choices"]
    assert [c["text"] for c in among] == [c["text"] for c in alone]
    other_seed = _complete(url, **{**body, "seed": 2025}).json()["choices"]
    assert [c["text"] for c in other_seed] != [c["text"] for c in alone]


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and 'model="names-lm"' in line
    )


def test_requests_that_arrive_together_share_generation_steps(url: str) -> None:
    steps_before = _metric(url, "batchserve_generation_step_sequences_count")
    sequences_before = _metric(url, "batchserve_generation_step_sequences_sum")

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await asyncio.gather(
                *(
                    http.post("/v1/completions", json={"model": "names-lm", "prompt": p,
                                                       "max_tokens": 16, "temperature": 0})
                    for p in ("A", "B", "C", "D", "E", "F", "G", "H")
                )
            )  # fmt: skip

    responses = asyncio.run(together())
    assert all(r.status_code == 200 for r in responses)
    steps = _metric(url, "batchserve_generation_step_sequences_count") - steps_before
    sequences = _metric(url, "batchserve_generation_step_sequences_sum") - sequences_before
    tokens = sum(r.json()["usage"]["completion_tokens"] for r in responses)
    assert sequences == tokens  # every generated token came from a step
    assert steps < tokens  # and steps advanced several sequences at once


def test_a_client_that_leaves_a_stream_frees_its_sequence(url: str) -> None:
    body = {"model": "names-lm", "prompt": "", "max_tokens": 33, "temperature": 1.0,
            "stream": True, "stop": ["zzzz"]}  # fmt: skip
    with (
        httpx.Client(base_url=url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body) as stream,
    ):
        first = next(stream.iter_lines())
        assert first.startswith("data: {")
    deadline_checks = 0
    while _metric(url, "batchserve_queue_depth") > 0 and deadline_checks < 200:
        asyncio.run(asyncio.sleep(0.05))
        deadline_checks += 1
    assert _metric(url, "batchserve_queue_depth") == 0


# -- tokens ----------------------------------------------------------------------------------------


def test_the_tokenizer_endpoints_round_trip_the_special_tokens(url: str) -> None:
    info = httpx.get(f"{url}/tokenizer_info").json()
    assert (info["bos_token"], info["eos_token"], info["model"]) == ("<s>", "</s>", "names-lm")
    tokens = httpx.post(f"{url}/tokenize", json={"prompt": "<s>Smith</s>"}).json()["tokens"]
    eos = httpx.post(f"{url}/tokenize", json={"prompt": "</s>"}).json()["tokens"]
    assert len(tokens) == 7 and eos == [tokens[-1]]
    text = httpx.post(f"{url}/detokenize", json={"tokens": tokens}).json()["prompt"]
    assert text == "<s>Smith</s>"
    folded = httpx.post(f"{url}/tokenize", json={"prompt": "Müller"}).json()["tokens"]
    assert folded == httpx.post(f"{url}/tokenize", json={"prompt": "Muller"}).json()["tokens"]


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        ({"model": "no-such-model", "prompt": "Sm"}, 404, None, "no-such-model"),
        ({"model": "names-rnn", "prompt": "Sm"}, 400, None, "not a language model"),
        ({"prompt": "Sm!th"}, 400, "prompt", "outside the alphabet"),
        ({"prompt": [["S"]]}, 400, "prompt", ""),
        ({"prompt": [999]}, 400, "prompt", "outside 0..56"),
        ({"prompt": "Sm", "max_tokens": 40}, 400, "max_tokens", "at most 32 characters"),
        ({"prompt": "Sm", "max_tokens": -1}, 400, "max_tokens", ""),
        ({"prompt": "Sm", "logprobs": 6}, 400, "logprobs", "the limit is 5"),
        ({"prompt": "Sm", "n": 17}, 400, "n", "the limit is 16"),
        ({"prompt": "Sm", "stop": 7}, 400, "stop", ""),
        ({"prompt": "Sm", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "the limit is 4"),
        ({"prompt": "Sm", "temperature": "hot"}, 400, "temperature", ""),
        ({"prompt": "Sm", "max_tokens": "8"}, 400, "max_tokens", ""),
        ({"prompt": "Sm", "best_of": 3}, 400, "best_of", ""),
        ({"prompt": "Sm", "colour": "blue"}, 400, "colour", ""),
        ({"prompt": "S</s>m"}, 400, "prompt", "end token"),
    ],
)
def test_bad_completion_requests_are_4xx_naming_the_field(
    url: str, body: dict[str, Any], status: int, param: str | None, fragment: str
) -> None:
    response = httpx.post(f"{url}/v1/completions", json={"model": "names-lm", **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    if param is not None:
        assert error["param"] == param, error


def test_echo_log_probs_are_the_scores_position_by_position(url: str) -> None:
    answer = _complete(url, prompt=NAMES, max_tokens=0, echo=True, logprobs=0).json()
    for choice, score in zip(answer["choices"], _score(url, {"inputs": NAMES}), strict=True):
        echoed = choice["logprobs"]["token_logprobs"]
        assert echoed == pytest.approx([t["log_prob"] for t in score["tokens"][:-1]], abs=1e-5)
        assert all(math.isfinite(x) for x in echoed)
