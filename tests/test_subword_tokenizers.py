"""Subword models: a byte-level BPE trained here with the Hugging Face `tokenizers` library, a
GRU language model and an LSTM classifier trained over it in PyTorch, both imported with
`batchserve import torch --tokenizer tokenizer.json` and served by a real server. /score equals
the module's own log-probabilities, completions echo /score's, /tokenize is the tokenizer's own
encode, the classifier answers its module's forward over /v1 and /v2; hostile tokenizer files
are refused at load naming the reason."""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import nn

from app.cli import main
from tests.conftest import live_server, settings_for

tokenizers = pytest.importorskip("tokenizers")

TOLERANCE = 1e-5
ADMIN_KEY = "subwords-admin-key"
SUBJECTS = ["the film", "the story", "the music", "a book", "this show", "the acting", "our trip"]
GOOD = ["good", "great", "lovely", "wonderful", "fun"]
BAD = ["bad", "boring", "awful", "dull", "poor"]
CORPUS = [
    f"{s} was {'very ' * (i % 2)}{w}"
    for i, (s, w) in enumerate((s, w) for s in SUBJECTS for w in GOOD + BAD)
]  # 70 reviews, each "good" or "bad" by its last word
TEXTS = ["the film was very good", "a book was dull", "our show was wonderful and fun"]
PAIRS = [("the film was", " good"), ("a book", " was very boring")]


def train_tokenizer(corpus: list[str], vocab_size: int) -> Any:
    """A GPT-2-style byte-level BPE with <s> and </s> (and a post-processor adding them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus * 4, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    return tokenizer


class SubwordLM(nn.Module):
    """Embedding -> GRU -> Linear over the tokenizer's vocabulary; <s> and </s> are its tokens."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, 8)
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, size)

    def forward(self, ids: list[int]) -> torch.Tensor:
        """ln P of each token and then </s>, given <s> and the tokens before it."""
        output, _ = self.rnn(self.embedding(torch.tensor([[BOS, *ids]])))
        table = torch.log_softmax(self.head(output[0]), dim=-1)
        return table.gather(1, torch.tensor([*ids, EOS])[:, None])[:, 0]


class SubwordLSTM(nn.Module):
    """nn.Embedding -> nn.LSTM -> nn.Linear on the last hidden state (names of its own)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(size, 8)
        self.lstm = nn.LSTM(8, 12, batch_first=True)
        self.fc = nn.Linear(12, 2)

    def forward(self, ids: list[int]) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.embed(torch.tensor([ids])))
        logits: torch.Tensor = self.fc(hidden[-1])[0]
        return logits


BOS, EOS = 0, 1  # the trainer puts the special tokens first


@dataclass
class Served:
    url: str
    tokenizer: Any
    lm: SubwordLM
    classifier: SubwordLSTM
    repository: Path
    tokenizer_file: Path


def _import(argv: list[Any]) -> int:
    threads = torch.get_num_threads()
    try:
        return main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("subwords")
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    assert tokenizer.token_to_id("<s>") == BOS and tokenizer.token_to_id("</s>") == EOS
    tokenizer.save(str(tmp / "reviews-tokenizer.json"))
    size = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    lm, classifier = SubwordLM(size), SubwordLSTM(size)
    rows = [tokenizer.encode(line, add_special_tokens=False).ids for line in CORPUS]
    labels = [0 if line.split()[-1] in BAD else 1 for line in CORPUS]
    lm_optimizer = torch.optim.Adam(lm.parameters(), lr=0.03)
    cls_optimizer = torch.optim.Adam(classifier.parameters(), lr=0.03)
    for _ in range(8):
        lm_optimizer.zero_grad()
        (-torch.stack([lm(ids).sum() for ids in rows]).sum()).backward()
        lm_optimizer.step()
        cls_optimizer.zero_grad()
        logits = torch.stack([classifier(tokenizer.encode(line).ids) for line in CORPUS])
        nn.functional.cross_entropy(logits, torch.tensor(labels)).backward()
        cls_optimizer.step()
    lm.eval()
    classifier.eval()
    torch.save(lm.state_dict(), tmp / "reviews.pt")
    torch.save(classifier.state_dict(), tmp / "sentiment.pt")
    repository = tmp / "repository"
    assert _import(["import", "torch", tmp / "reviews.pt", "--arch", "char_lm",
                    "--tokenizer", tmp / "reviews-tokenizer.json", "--bos-token", "<s>",
                    "--eos-token", "</s>", "--max-length", "48",
                    "--repository", repository]) == 0  # fmt: skip
    assert _import(["import", "torch", tmp / "sentiment.pt", "--arch", "rnn",
                    "--tokenizer", tmp / "reviews-tokenizer.json", "--labels", "negative,positive",
                    "--max-length", "24", "--repository", repository]) == 0  # fmt: skip
    settings = settings_for(repository, max_batch_delay_ms=20, admin_api_key=ADMIN_KEY)
    with live_server(settings) as url:
        yield Served(url, tokenizer, lm, classifier, repository, tmp / "reviews-tokenizer.json")


def _score(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(f"{url}/v1/models/reviews/score", json={**body, "per_token": True})
    assert response.status_code == 200, response.text
    scores: list[dict[str, Any]] = response.json()["scores"]
    return scores


def test_the_import_copies_the_tokenizer_into_the_version(served: Served) -> None:
    for name in ("reviews", "sentiment"):
        version = served.repository / name / "1"
        assert (version / "tokenizer.json").read_bytes() == served.tokenizer_file.read_bytes()
        spec = json.loads((version / "config.json").read_text())["input"]
        assert spec["kind"] == "subwords" and spec["tokenizer_file"] == "tokenizer.json"
        assert spec["vocab_size"] == served.tokenizer.get_vocab_size()
        assert len(spec["tokenizer_sha256"]) == 64


def test_score_is_the_modules_own_log_probability(served: Served) -> None:
    scores = _score(served.url, {"inputs": TEXTS})
    for text, score in zip(TEXTS, scores, strict=True):
        ids = served.tokenizer.encode(text, add_special_tokens=False).ids
        with torch.no_grad():
            expected = served.lm(ids).tolist()
        got = [t["log_prob"] for t in score["tokens"]]
        assert len(got) == len(expected) == score["num_tokens"] == len(ids) + 1
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= TOLERANCE
        assert abs(score["log_prob"] - math.fsum(expected)) <= TOLERANCE
        # Token texts are what each token adds: their concatenation is the text, then </s>.
        assert "".join(t["token"] for t in score["tokens"]) == text + "</s>"


def test_pairs_score_the_continuation_given_the_context(served: Served) -> None:
    pairs = [{"context": c, "continuation": x} for c, x in PAIRS]
    scores = _score(served.url, {"pairs": pairs})
    for (context, continuation), score in zip(PAIRS, scores, strict=True):
        before = served.tokenizer.encode(context, add_special_tokens=False).ids
        after = served.tokenizer.encode(continuation, add_special_tokens=False).ids
        with torch.no_grad():
            table = served.lm([*before, *after]).tolist()
        expected = table[len(before) : len(before) + len(after)]
        assert abs(score["log_prob"] - math.fsum(expected)) <= TOLERANCE


def test_completions_echo_the_log_probs_of_score(served: Served) -> None:
    for text, score in zip(TEXTS, _score(served.url, {"inputs": TEXTS}), strict=True):
        body = {"model": "reviews", "prompt": text + "</s>", "max_tokens": 0, "echo": True,
                "logprobs": 1}  # fmt: skip
        response = httpx.post(f"{served.url}/v1/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        echoed = [lp for lp in choice["logprobs"]["token_logprobs"] if lp is not None]
        expected = [t["log_prob"] for t in score["tokens"]]
        assert len(echoed) == len(expected)
        assert max(abs(a - b) for a, b in zip(echoed, expected, strict=True)) <= TOLERANCE
        assert choice["text"] == text + "</s>"


def test_generated_text_is_the_tokenizers_decoding(served: Served) -> None:
    body = {"model": "reviews", "prompt": "the film was", "max_tokens": 6, "temperature": 0,
            "logprobs": 0}  # fmt: skip
    response = httpx.post(f"{served.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    ids = served.tokenizer.encode("the film was", add_special_tokens=False).ids
    with torch.no_grad():  # greedy decoding with the module itself
        for _ in range(6):
            output, _ = served.lm.rnn(served.lm.embedding(torch.tensor([[BOS, *ids]])))
            token = int(served.lm.head(output[0, -1]).argmax())
            if token == EOS:
                break
            ids.append(token)
    generated = ids[len(served.tokenizer.encode("the film was", add_special_tokens=False).ids) :]
    assert choice["text"] == served.tokenizer.decode(generated)


def test_tokenize_is_the_tokenizers_own_encode(served: Served) -> None:
    url, tokenizer = served.url, served.tokenizer
    for text in [*TEXTS, "Ünïcode, émoji 🎬 and <s> inside", "</s>"]:
        own = tokenizer.encode(text, add_special_tokens=False).ids
        plain = httpx.post(f"{url}/tokenize", json={"model": "reviews", "prompt": text,
                                                    "add_special_tokens": False})  # fmt: skip
        assert plain.status_code == 200, plain.text
        assert plain.json()["tokens"] == own
        started = httpx.post(f"{url}/tokenize", json={"model": "reviews", "prompt": text,
                                                      "add_special_tokens": True})  # fmt: skip
        assert started.json()["tokens"] == [BOS, *own] if own[:1] != [BOS] else own
        back = httpx.post(f"{url}/detokenize", json={"model": "reviews", "tokens": own})
        assert back.status_code == 200, back.text
        assert back.json()["prompt"] == tokenizer.decode(own, skip_special_tokens=False)
    info = httpx.get(f"{url}/tokenizer_info", params={"model": "reviews"}).json()
    assert info["bos_token"] == "<s>" and info["eos_token"] == "</s>"
    assert info["vocab_size"] == tokenizer.get_vocab_size()
    wrong = httpx.post(f"{url}/detokenize", json={"model": "reviews", "tokens": [5, 100_000]})
    assert wrong.status_code == 400 and "100000" in wrong.text


def test_the_classifier_answers_its_modules_forward_over_v1_and_v2(served: Served) -> None:
    texts = [*TEXTS, "the acting was awful", "this show was very lovely"]
    with torch.no_grad():
        expected = [
            torch.softmax(served.classifier(served.tokenizer.encode(t).ids), -1).tolist()
            for t in texts
        ]
    body = {"inputs": texts, "top_k": 2}
    v1 = httpx.post(f"{served.url}/v1/models/sentiment/predict", json=body, timeout=30)
    assert v1.status_code == 200, v1.text
    for prediction, want in zip(v1.json()["predictions"], expected, strict=True):
        got = [0.0, 0.0]
        for ranked in prediction["top_k"]:
            got[ranked["index"]] = ranked["probability"]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= TOLERANCE
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    v2 = httpx.post(f"{served.url}/v2/models/sentiment/infer", json={"inputs": [tensor]})
    assert v2.status_code == 200, v2.text
    output = {o["name"]: o for o in v2.json()["outputs"]}["probabilities"]
    assert output["shape"] == [len(texts), 2]
    flat = [p for row in expected for p in row]
    assert max(abs(a - b) for a, b in zip(output["data"], flat, strict=True)) <= TOLERANCE
    metadata = httpx.get(f"{served.url}/v1/models/sentiment").json()["head"]["item"]
    assert metadata["vocab_size"] == served.tokenizer.get_vocab_size()
    example = httpx.post(
        f"{served.url}/v1/models/sentiment/predict", json={"inputs": [metadata["example"]]}
    )
    assert example.status_code == 200, example.text


def test_too_many_tokens_are_refused_naming_the_item(served: Served) -> None:
    long = " ".join(["wonderful"] * 30)
    body = {"inputs": ["fun", long]}
    response = httpx.post(f"{served.url}/v1/models/sentiment/predict", json=body)
    assert response.status_code == 422
    assert "inputs[1]" in response.text and "tokens; the limit is 24" in response.text


# -- hostile files ---------------------------------------------------------------------------


def _hostile_versions(served: Served, root: Path) -> dict[str, str]:
    """Copies of the served LM, each with one thing wrong; version -> what must be refused."""
    repository = root / "repository"
    source = served.repository / "reviews" / "1"
    versions = {}

    def version(number: int, reason: str) -> Path:
        target = repository / "reviews" / str(number)
        shutil.copytree(source, target)
        versions[str(number)] = reason
        return target

    config = json.loads((source / "config.json").read_text())
    text = (source / "tokenizer.json").read_text()

    def unpinned(target: Path, **changes: Any) -> None:
        edited = {**config, "input": {**config["input"], "tokenizer_sha256": None, **changes}}
        (target / "config.json").write_text(json.dumps(edited))

    version(1, "")  # the good one, served
    target = version(2, "tokenizer.json is not a valid tokenizer file")
    (target / "tokenizer.json").write_text(text[: len(text) // 2])
    unpinned(target)
    target = version(3, "does not match input.tokenizer_sha256")
    (target / "tokenizer.json").write_text(text + "\n")  # one byte more, still valid
    smaller = train_tokenizer(CORPUS, vocab_size=290)
    target = version(4, "input.vocab_size is 300 but tokenizer.json has 290 tokens")
    smaller.save(str(target / "tokenizer.json"))
    unpinned(target)
    target = version(5, "token ids are not 0..299")
    gapped = json.loads(text)
    last = max(gapped["model"]["vocab"], key=gapped["model"]["vocab"].__getitem__)
    gapped["model"]["vocab"][last] = 5000
    (target / "tokenizer.json").write_text(json.dumps(gapped))
    unpinned(target)
    unpinned(version(6, "is not a file name inside the version directory"),
             tokenizer_file="../1/tokenizer.json")  # fmt: skip
    target = version(7, "symbolic link leading out of the model repository")
    (target / "tokenizer.json").unlink()
    (target / "tokenizer.json").symlink_to(served.tokenizer_file)
    unpinned(target)
    unpinned(version(8, "'<bos>' is not a token of tokenizer.json"), bos_token="<bos>")
    target = version(9, "weight shapes do not match the config")  # the file agrees, not the weights
    unpinned(target, vocab_size=290)
    smaller.save(str(target / "tokenizer.json"))
    target = version(10, "tokenizer.json is missing")
    (target / "tokenizer.json").unlink()
    return versions


def test_hostile_tokenizer_files_are_refused_at_load_naming_the_reason(
    served: Served, tmp_path: Path
) -> None:
    versions = _hostile_versions(served, tmp_path)
    settings = settings_for(tmp_path / "repository", admin_api_key=ADMIN_KEY)
    with live_server(settings) as url:
        rows = httpx.post(
            f"{url}/v2/repository/index", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ).json()
        good = httpx.post(f"{url}/v1/models/reviews/versions/1/score", json={"inputs": ["fun"]})
    assert good.status_code == 200, good.text
    reasons = {row["version"]: row.get("reason", "") for row in rows if row["name"] == "reviews"}
    for number, reason in versions.items():
        if number == "1":
            assert reasons.get(number, "") == "", reasons
            continue
        assert reason in reasons[number], (number, reasons[number])


def test_without_the_library_a_subword_version_fails_naming_the_extra(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.checkpoint import CheckpointError, read_config

    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers: ImportError
    with pytest.raises(CheckpointError, match=r"needs the tokenizers library: .*\[tokenizers\]"):
        read_config(served.repository / "reviews" / "1")


def test_the_import_refuses_a_tokenizer_that_disagrees_with_the_weights(
    served: Served, tmp_path: Path
) -> None:
    smaller = train_tokenizer(CORPUS, vocab_size=290)
    smaller.save(str(tmp_path / "small.json"))
    torch.save(served.lm.state_dict(), tmp_path / "lm.pt")
    argv = ["import", "torch", tmp_path / "lm.pt", "--arch", "char_lm", "--tokenizer",
            tmp_path / "small.json", "--bos-token", "<s>", "--eos-token", "</s>",
            "--repository", tmp_path / "repository"]  # fmt: skip
    assert _import(argv) != 0
    assert not (tmp_path / "repository" / "lm").exists()
    (tmp_path / "broken.json").write_text('{"model": {"type": "BPE"')
    argv[6] = tmp_path / "broken.json"
    assert _import(argv) != 0
