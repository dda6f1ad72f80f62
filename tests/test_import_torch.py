"""`batchserve import torch`: state_dicts of models written the usual PyTorch ways (an
`nn.Sequential` MLP, the tutorial's character RNNs, a GRU language model) are mapped onto
batchserve's keys, served over HTTP, and answer what the original modules compute."""

from __future__ import annotations

import json
import math
import pickle
import string
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.clitools import cli, files_in, v2_outputs
from tests.conftest import live_server, settings_for
from tests.numbers import LOG_PROB_TOLERANCE, assert_same_numbers

TUTORIAL_LETTERS = string.ascii_letters + " .,;'"  # the tutorial's all_letters, 57 of them
LANGUAGES = ["Italian", "Japanese", "Polish"]
NAMES = ["Rossi", "Nakamura", "Kowalski", "O'Neal", "Li"]


def _one_hot(name: str) -> torch.Tensor:
    """[len, 1, 57], as the tutorial's lineToTensor."""
    tensor = torch.zeros(len(name), 1, len(TUTORIAL_LETTERS))
    for i, letter in enumerate(name):
        tensor[i, 0, TUTORIAL_LETTERS.index(letter)] = 1
    return tensor


class TutorialRNN(nn.Module):
    """The tutorial's first RNN: i2h and i2o over concat(input, hidden), no tanh."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size + hidden_size, hidden_size)
        self.i2o = nn.Linear(input_size + hidden_size, output_size)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, letter: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        combined = torch.cat((letter, hidden), 1)
        return self.softmax(self.i2o(combined)), self.i2h(combined)

    def classify(self, name: str) -> torch.Tensor:
        hidden = torch.zeros(1, self.hidden_size)
        for letter in _one_hot(name):
            output, hidden = self(letter, hidden)
        return output[0]


class TutorialRNNSplit(nn.Module):
    """The tutorial's later RNN: hidden = tanh(i2h(x) + h2h(hidden)); output = h2o(hidden)."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size, hidden_size)
        self.h2h = nn.Linear(hidden_size, hidden_size)
        self.h2o = nn.Linear(hidden_size, output_size)

    def classify(self, name: str) -> torch.Tensor:
        hidden = torch.zeros(1, self.hidden_size)
        for letter in _one_hot(name):
            hidden = torch.tanh(self.i2h(letter) + self.h2h(hidden))
        return torch.log_softmax(self.h2o(hidden), dim=1)[0]


class CharRNN(nn.Module):
    """The tutorial's current version: nn.RNN, then h2o on the last hidden state."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size)
        self.h2o = nn.Linear(hidden_size, output_size)

    def classify(self, name: str) -> torch.Tensor:
        _, hidden = self.rnn(_one_hot(name))
        return torch.log_softmax(self.h2o(hidden[0]), dim=1)[0]


def _saved(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _served_probabilities(repository: Path, name: str, inputs: list) -> list[list[float]]:
    with live_server(settings_for(repository)) as url:
        return v2_outputs(url, name, inputs)["probabilities"]


RNN_ARGS = ("--arch", "char_rnn_classifier", "--alphabet", TUTORIAL_LETTERS,
            "--labels", ",".join(LANGUAGES))  # fmt: skip


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        (TutorialRNN, ("--hidden-activation", "identity")),
        (TutorialRNNSplit, ()),
        (CharRNN, ()),
    ],
    ids=["i2h-i2o", "i2h-h2h-h2o", "nn.RNN-h2o"],
)
def test_the_tutorial_rnns_serve_what_they_compute_step_by_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], module: type, extra: tuple[str, ...]
) -> None:
    torch.manual_seed(0)
    model = module(len(TUTORIAL_LETTERS), 16, len(LANGUAGES)).eval()
    weights = _saved(model, tmp_path / "rnn.pt")
    run = cli(capsys, "import", "torch", weights, *RNN_ARGS, *extra, "--repository", tmp_path)
    assert run.code == 0, run.err
    with torch.no_grad():
        expected = [model.classify(name).exp().tolist() for name in NAMES]
    assert_same_numbers(_served_probabilities(tmp_path, "rnn", NAMES), expected, tolerance=1e-5)


def test_an_nn_sequential_mlp_with_dropout_serves_its_softmax(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)
    ).eval()  # keys 0.*, 3.* and 5.*
    weights = _saved(model, tmp_path / "mlp.pt")
    run = cli(capsys, "import", "torch", weights, "--arch", "mlp", "--activation", "tanh",
              "--labels", "a,b,c", "--input-shape", "4x5", "--repository", tmp_path)  # fmt: skip
    assert run.code == 0, run.err
    inputs = torch.rand(6, 20)
    with torch.no_grad():
        expected = torch.softmax(model(inputs), dim=-1).tolist()
    served = _served_probabilities(tmp_path, "mlp", inputs.view(6, 4, 5).tolist())
    assert_same_numbers(served, expected, tolerance=1e-5)


def test_a_safetensors_mlp_keeps_its_layer_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Twelve layers: safetensors sorts "10.weight" before "2.weight"; the order must still hold.
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for width_in, width_out in zip([5, *[7] * 11], [*[7] * 11, 2], strict=True):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).eval()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "deep.safetensors"
    )
    run = cli(capsys, "import", "torch", tmp_path / "deep.safetensors", "--arch", "mlp",
              "--activation", "relu", "--repository", tmp_path / "repo")  # fmt: skip
    assert run.code == 0, run.err
    inputs = torch.rand(3, 5)
    with torch.no_grad():
        expected = torch.softmax(model(inputs), dim=-1).tolist()
    served = _served_probabilities(tmp_path / "repo", "deep", inputs.tolist())
    assert_same_numbers(served, expected, tolerance=1e-5)


class WordLanguageModel(nn.Module):
    """Named as PyTorch's word_language_model example: encoder, rnn, decoder."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, 6)
        self.rnn = nn.GRU(6, 10, num_layers=2, batch_first=True)
        self.decoder = nn.Linear(10, vocab)

    def log_prob(self, text: str, alphabet: str) -> float:
        bos, eos = len(alphabet), len(alphabet) + 1
        tokens = [bos, *(alphabet.index(c) for c in text)]
        targets = [*tokens[1:], eos]
        output, _ = self.rnn(self.encoder(torch.tensor([tokens])))
        log_probs = torch.log_softmax(self.decoder(output[0]), dim=-1)
        return sum(log_probs[i, t].item() for i, t in enumerate(targets))


def test_a_gru_language_model_scores_what_it_computes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alphabet = string.ascii_lowercase
    torch.manual_seed(0)
    model = WordLanguageModel(len(alphabet) + 2).eval()
    weights = _saved(model, tmp_path / "lm.pt")
    run = cli(capsys, "import", "torch", weights, "--arch", "char_lm", "--alphabet", alphabet,
              "--normalize", "ascii", "--repository", tmp_path)  # fmt: skip
    assert run.code == 0, run.err
    words = ["rossi", "zzz", "nakamura"]
    with torch.no_grad():
        expected = [[model.log_prob(word, alphabet)] for word in words]
    with live_server(settings_for(tmp_path)) as url:
        served = v2_outputs(url, "lm", words)["log_prob"]
    assert_same_numbers(served, expected, tolerance=LOG_PROB_TOLERANCE)
    assert all(math.isfinite(v[0]) for v in served)


# --------------------------------------------------------------------------- refusals


def _refused(run: object, fragment: str, repository: Path) -> None:
    assert run.code == 2, run.err  # type: ignore[attr-defined]
    err = run.err  # type: ignore[attr-defined]
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert files_in(repository) == []


def test_an_alphabet_of_the_wrong_size_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _saved(TutorialRNN(len(TUTORIAL_LETTERS), 8, 3), tmp_path / "rnn.pt")
    run = cli(capsys, "import", "torch", weights, "--arch", "char_rnn_classifier", "--alphabet",
              string.ascii_letters, "--hidden-activation", "identity", "--repository",
              tmp_path / "repo")  # fmt: skip
    _refused(run, "one-hot of 57 characters; the alphabet has 52", tmp_path / "repo")


def test_weights_of_the_wrong_shapes_are_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = TutorialRNN(len(TUTORIAL_LETTERS), 8, 3).state_dict()
    state["i2o.weight"] = torch.zeros(3, len(TUTORIAL_LETTERS) + 9)  # one hidden unit too many
    torch.save(state, tmp_path / "rnn.pt")
    run = cli(capsys, "import", "torch", tmp_path / "rnn.pt", *RNN_ARGS, "--hidden-activation",
              "identity", "--repository", tmp_path / "repo")  # fmt: skip
    _refused(run, "i2o.weight (3, 66) != (3, 65)", tmp_path / "repo")


def test_mlp_layers_that_do_not_chain_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {"0.weight": torch.zeros(16, 20), "0.bias": torch.zeros(16),
             "2.weight": torch.zeros(3, 15), "2.bias": torch.zeros(3)}  # fmt: skip
    torch.save(state, tmp_path / "mlp.pt")
    run = cli(capsys, "import", "torch", tmp_path / "mlp.pt", "--arch", "mlp", "--activation",
              "relu", "--repository", tmp_path / "repo")  # fmt: skip
    _refused(run, "2.weight has shape [3, 15]", tmp_path / "repo")


def test_keys_that_cannot_be_mapped_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # BatchNorm1d and LayerNorm map (tests/test_families.py); a convolution does not.
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Unflatten(1, (3, 1)),
                          nn.Conv1d(3, 2, 1))  # fmt: skip
    weights = _saved(model, tmp_path / "conv.pt")
    run = cli(capsys, "import", "torch", weights, "--arch", "mlp", "--activation", "relu",
              "--repository", tmp_path / "repo")  # fmt: skip
    _refused(run, "3.weight", tmp_path / "repo")
    assert "3.bias" in run.err and "1.running_mean" not in run.err


def test_an_lstm_state_dict_is_not_a_tutorial_rnn_without_a_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _saved(nn.LSTM(5, 4), tmp_path / "lstm.pt")
    run = cli(capsys, "import", "torch", weights, *RNN_ARGS, "--repository", tmp_path / "repo")
    _refused(run, "weight_ih_l0", tmp_path / "repo")


@pytest.mark.parametrize(
    ("arch", "missing"),
    [("mlp", "--activation"), ("char_rnn_classifier", "--hidden-activation")],
)
def test_what_a_state_dict_cannot_say_must_be_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arch: str, missing: str
) -> None:
    model = nn.Sequential(nn.Linear(4, 2)) if arch == "mlp" else TutorialRNN(57, 4, 3)
    weights = _saved(model, tmp_path / "m.pt")
    extra = ("--alphabet", TUTORIAL_LETTERS) if arch != "mlp" else ()
    run = cli(capsys, "import", "torch", weights, "--arch", arch, *extra, "--repository",
              tmp_path / "repo")  # fmt: skip
    _refused(run, missing, tmp_path / "repo")


class _TouchesAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (self.path.touch, ())


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code-ran"
    with (tmp_path / "bomb.pt").open("wb") as f:
        pickle.dump({"0.weight": _TouchesAFile(marker)}, f, protocol=2)
    run = cli(capsys, "import", "torch", tmp_path / "bomb.pt", "--arch", "mlp", "--activation",
              "relu", "--repository", tmp_path / "repo")  # fmt: skip
    _refused(run, "bomb.pt", tmp_path / "repo")
    assert not marker.exists()


def test_a_torchscript_file_is_refused_saying_what_to_save_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    torch.jit.save(torch.jit.script(model), tmp_path / "scripted.pt")
    run = cli(capsys, "import", "torch", tmp_path / "scripted.pt", "--arch", "mlp",
              "--activation", "relu", "--repository", tmp_path / "repo")  # fmt: skip
    _refused(run, "scripted.pt", tmp_path / "repo")
    assert "TorchScript" in run.err and "torch.save(model.state_dict()" in run.err
    assert "weights_only" not in run.err  # not PyTorch's advice to load it unrestricted
    # Its weights, saved as the message says, import.
    scripted = torch.jit.load(tmp_path / "scripted.pt")
    torch.save(scripted.state_dict(), tmp_path / "weights.pt")
    run = cli(capsys, "import", "torch", tmp_path / "weights.pt", "--arch", "mlp",
              "--activation", "relu", "--repository", tmp_path / "repo")  # fmt: skip
    assert run.code == 0, run.err


def test_a_training_checkpoint_dict_holding_the_state_dict_is_unwrapped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    checkpoint = {"epoch": 7, "model_state_dict": model.state_dict(), "loss": 0.5}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    run = cli(capsys, "import", "torch", tmp_path / "ckpt.pt", "--arch", "mlp", "--activation",
              "relu", "--repository", tmp_path / "repo")  # fmt: skip
    assert run.code == 0, run.err
    assert (tmp_path / "repo" / "ckpt" / "1" / "model.safetensors").is_file()


def test_a_partial_config_json_fills_the_other_fields_and_cannot_change_the_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _saved(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), tmp_path / "m.pt")
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"description": "from --config", "batching": {"max_batch_size": 8},
                                 "labels": ["no", "yes"]}))  # fmt: skip
    args = ("import", "torch", weights, "--arch", "mlp", "--activation", "relu", "--repository")
    run = cli(capsys, *args, tmp_path / "repo", "--config", extra, "--labels", "off,on")
    assert run.code == 0, run.err
    config = json.loads((tmp_path / "repo" / "m" / "1" / "config.json").read_text())
    assert config["description"] == "from --config" and config["batching"]["max_batch_size"] == 8
    assert config["labels"] == ["off", "on"]  # an option wins over --config
    extra.write_text(json.dumps({"architecture": {"type": "mlp", "layer_sizes": [4, 2]}}))
    _refused(cli(capsys, *args, tmp_path / "other", "--config", extra), "architecture",
             tmp_path / "other")  # fmt: skip
