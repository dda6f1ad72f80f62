"""The three architectures and the checkpoint format, on tiny models saved to tmp_path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models.architectures import MLP, CharLM, CharRNNClassifier
from models.checkpoint import (
    CharLMArchitecture,
    CharRNNArchitecture,
    CheckpointError,
    MLPArchitecture,
    ModelConfig,
    TextInput,
    VectorInput,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from models.text import CharVocab

ALPHABET = "abcdefghij"


def mlp_config(layer_sizes: list[int] | None = None) -> ModelConfig:
    sizes = layer_sizes or [6, 5, 3]
    return ModelConfig(
        name="tiny-mlp",
        task="classify",
        architecture=MLPArchitecture(layer_sizes=sizes),
        input=VectorInput(shape=[sizes[0]]),
        labels=[str(i) for i in range(sizes[-1])],
    )


def rnn_config(cell: str = "elman") -> ModelConfig:
    return ModelConfig(
        name="tiny-rnn",
        task="classify",
        architecture=CharRNNArchitecture(cell=cell, hidden_size=7),  # type: ignore[arg-type]
        input=TextInput(alphabet=ALPHABET, max_length=12),
        labels=["x", "y", "z"],
    )


def lm_config() -> ModelConfig:
    return ModelConfig(
        name="tiny-lm",
        task="score",
        architecture=CharLMArchitecture(embedding_dim=4, hidden_size=6, num_layers=2),
        input=TextInput(alphabet=ALPHABET, max_length=12),
    )


def padded(strings: list[str], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = CharVocab(ALPHABET)
    lengths = torch.tensor([len(s) for s in strings])
    chars = torch.full((len(strings), int(lengths.max()) + 2), pad, dtype=torch.long)
    for row, s in enumerate(strings):
        chars[row, : len(s)] = torch.tensor(vocab.encode(s))
    return chars, lengths


def lm_inputs(strings: list[str], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    chars, lengths = padded(strings, pad)
    bos = torch.full((len(strings), 1), CharVocab(ALPHABET).bos)
    return torch.cat([bos, chars], dim=1), lengths + 1


def saved(tmp_path: Path, config: ModelConfig, seed: int = 0) -> tuple[nn.Module, Path]:
    torch.manual_seed(seed)
    model = build_model(config).eval()
    directory = tmp_path / config.name / "1"
    save_checkpoint(directory, model, config)
    return model, directory


def outputs(model: nn.Module, config: ModelConfig) -> torch.Tensor:
    with torch.inference_mode():
        if isinstance(config.architecture, MLPArchitecture):
            return model(torch.linspace(0, 1, 2 * 6).reshape(2, 6))
        if isinstance(config.architecture, CharRNNArchitecture):
            return model(*padded(["abc", "j", "hgfedcba"]))
        return model(*lm_inputs(["abc", "j", "hgfedcba"], pad=0))


ALL_CONFIGS = [
    mlp_config,
    lambda: rnn_config("elman"),
    lambda: rnn_config("rnn"),
    lambda: rnn_config("gru"),
    lm_config,
]


# --------------------------------------------------------------------------- shapes


def test_mlp_maps_a_batch_of_vectors_to_one_logit_per_class() -> None:
    assert MLP([6, 5, 3])(torch.zeros(4, 6)).shape == (4, 3)


@pytest.mark.parametrize("cell", ["elman", "rnn", "gru", "lstm"])
def test_char_rnn_returns_log_probabilities_per_string(cell: str) -> None:
    out = CharRNNClassifier(len(ALPHABET), 7, 3, cell)(*padded(["abc", "j"]))
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2))


def test_char_lm_returns_next_token_log_probabilities_per_position() -> None:
    vocab = CharVocab(ALPHABET)
    tokens, lengths = lm_inputs(["abc", "j"], pad=vocab.eos)
    out = CharLM(vocab.lm_vocab_size, 4, 6)(tokens, lengths)
    assert out.shape == (2, tokens.shape[1], vocab.lm_vocab_size)
    torch.testing.assert_close(out[0, :4].exp().sum(-1), torch.ones(4))


def test_mlp_default_is_the_keras_example_784_64_64_10_relu() -> None:
    model = build_model(
        ModelConfig(
            name="mnist-mlp",
            task="classify",
            architecture=MLPArchitecture(layer_sizes=[784, 64, 64, 10]),
            input=VectorInput(shape=[784]),
            labels=[str(d) for d in range(10)],
        )
    )
    assert isinstance(model, MLP)
    layers = list(model.layers)
    kinds = [type(layer) for layer in layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    shapes = [(layer.in_features, layer.out_features) for layer in layers[::2]]
    assert shapes == [(784, 64), (64, 64), (64, 10)]


def _tutorial_steps(model: CharRNNClassifier, text: str, tanh: bool) -> torch.Tensor:
    """The PyTorch tutorial's loop, one character at a time: combined = cat(one-hot, hidden);
    output = i2o(combined); hidden = i2h(combined), with or without tanh."""
    hidden = torch.zeros(1, model.hidden_size)
    output = torch.empty(0)
    for index in CharVocab(ALPHABET).encode(text):
        one_hot = nn.functional.one_hot(torch.tensor([index]), len(ALPHABET)).float()
        combined = torch.cat((one_hot, hidden), 1)
        output = torch.log_softmax(model.i2o(combined), dim=1)
        hidden = torch.tanh(model.i2h(combined)) if tanh else model.i2h(combined)
    return output


@pytest.mark.parametrize("activation", ["tanh", "identity"])
def test_elman_cell_computes_the_tutorials_step_by_step_loop(activation: str) -> None:
    torch.manual_seed(0)
    model = CharRNNClassifier(len(ALPHABET), 7, 3, "elman", activation).eval()
    strings = ["abc", "j", "hgfedcba"]
    with torch.inference_mode():
        batched = model(*padded(strings))
        looped = torch.cat([_tutorial_steps(model, s, activation == "tanh") for s in strings])
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=0)


def test_hidden_activation_other_than_tanh_is_refused_for_gated_cells() -> None:
    with pytest.raises(ValueError, match="elman"):
        CharRNNArchitecture(cell="gru", hidden_size=4, hidden_activation="identity")


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("cell", ["elman", "rnn", "gru", "lstm"])
def test_batched_rnn_equals_one_string_at_a_time_in_any_order_and_padding(cell: str) -> None:
    torch.manual_seed(0)
    model = CharRNNClassifier(len(ALPHABET), 7, 3, cell).eval()
    strings = ["abc", "j", "hgfedcba", "aa", "abcdefghij"]
    with torch.inference_mode():
        alone = torch.cat([model(*padded([s])) for s in strings])
        batched = model(*padded(strings, pad=9))
        reversed_ = model(*padded(strings[::-1], pad=3)).flip(0)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(reversed_, alone, atol=1e-5, rtol=0)


def test_batched_lm_equals_one_string_at_a_time_in_any_order_and_padding() -> None:
    torch.manual_seed(0)
    vocab = CharVocab(ALPHABET)
    model = CharLM(vocab.lm_vocab_size, 4, 6, num_layers=2).eval()
    strings = ["abc", "j", "hgfedcba", "aa"]
    with torch.inference_mode():
        alone = [model(*lm_inputs([s], pad=vocab.eos))[0, : len(s) + 1] for s in strings]
        batched = model(*lm_inputs(strings, pad=0))
        shuffled = model(*lm_inputs(strings[::-1], pad=vocab.eos)).flip(0)
    for row, s in enumerate(strings):
        torch.testing.assert_close(batched[row, : len(s) + 1], alone[row], atol=1e-5, rtol=0)
        torch.testing.assert_close(shuffled[row, : len(s) + 1], alone[row], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- checkpoint round trip


@pytest.mark.parametrize("make_config", ALL_CONFIGS, ids=["mlp", "elman", "rnn", "gru", "lm"])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, make_config) -> None:
    config = make_config()
    model, directory = saved(tmp_path, config)
    loaded, loaded_config = load_checkpoint(directory)
    assert not loaded.training
    assert loaded_config.weights_sha256 is not None
    torch.testing.assert_close(outputs(loaded, config), outputs(model, config), atol=0, rtol=0)


def test_saved_files_are_readable_by_everyone_whatever_the_umask(tmp_path: Path) -> None:
    # safetensors creates its file 0600; a container's non-root user must still read it.
    _, directory = saved(tmp_path, mlp_config())
    for name in ("model.safetensors", "config.json"):
        assert (directory / name).stat().st_mode & 0o777 == 0o644, name


def test_state_dict_file_is_loaded_with_weights_only(tmp_path: Path) -> None:
    config = mlp_config()
    model, directory = saved(tmp_path, config)
    (directory / "model.safetensors").unlink()
    torch.save(model.state_dict(), directory / "model.pt")
    _rewrite_config(directory, weights_file="model.pt", weights_sha256=None)
    loaded, _ = load_checkpoint(directory)
    torch.testing.assert_close(outputs(loaded, config), outputs(model, config), atol=0, rtol=0)


# --------------------------------------------------------------------------- refusals


def _rewrite_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_load_refuses_config_naming_layers_the_weights_lack(tmp_path: Path) -> None:
    _, directory = saved(tmp_path, mlp_config([6, 5, 3]))
    _rewrite_config(
        directory, architecture={"type": "mlp", "layer_sizes": [6, 5, 5, 3]}, weights_sha256=None
    )
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(directory)


def test_load_refuses_weights_of_the_wrong_shape(tmp_path: Path) -> None:
    _, directory = saved(tmp_path, mlp_config([6, 5, 3]))
    _rewrite_config(
        directory, architecture={"type": "mlp", "layer_sizes": [6, 4, 3]}, weights_sha256=None
    )
    with pytest.raises(CheckpointError, match="shapes"):
        load_checkpoint(directory)


def test_load_refuses_a_truncated_safetensors_file(tmp_path: Path) -> None:
    _, directory = saved(tmp_path, mlp_config())
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    _rewrite_config(directory, weights_sha256=None)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(directory)


def test_load_refuses_weights_whose_sha256_differs_from_the_config(tmp_path: Path) -> None:
    _, directory = saved(tmp_path, mlp_config())
    other = build_model(mlp_config())
    state = {k: v.contiguous() for k, v in other.state_dict().items()}
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_checkpoint(directory)


class _WritesAFile:
    """Unpickling this calls pathlib.Path.touch: what a malicious checkpoint would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path(self.target).touch, ())  # type: ignore[return-value]


def test_load_refuses_a_pickle_bomb_and_runs_none_of_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _, directory = saved(tmp_path, mlp_config())
    (directory / "model.safetensors").unlink()
    with (directory / "model.pt").open("wb") as f:
        pickle.dump({"layers.0.weight": _WritesAFile(marker)}, f, protocol=2)
    _rewrite_config(directory, weights_file="model.pt", weights_sha256=None)
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        load_checkpoint(directory)
    assert not marker.exists()


def test_torch_load_with_weights_only_refuses_the_same_pickle(tmp_path: Path) -> None:
    marker, bomb = tmp_path / "pwned", tmp_path / "bomb.pt"
    torch.save({"w": _WritesAFile(marker)}, bomb)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bomb, weights_only=True)
    assert not marker.exists()


def test_load_refuses_absurd_sizes_by_parameter_count_before_allocating(tmp_path: Path) -> None:
    _, directory = saved(tmp_path, mlp_config())
    # 60000 x 60000 x 8 layers is ~29 billion parameters (~115 GB of float32) if ever allocated.
    _rewrite_config(
        directory,
        architecture={"type": "mlp", "layer_sizes": [6, *[60_000] * 8, 3]},
        weights_sha256=None,
    )
    with pytest.raises(CheckpointError, match="parameters"):
        load_checkpoint(directory)


def test_vector_input_refuses_alternative_layouts_of_another_size() -> None:
    with pytest.raises(ValueError, match="also_shapes"):
        VectorInput(shape=[784], also_shapes=[[28, 27]])
    assert VectorInput(shape=[784], also_shapes=[[28, 28]]).also_shapes == [[28, 28]]
