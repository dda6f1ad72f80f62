"""The checkpoint format: a directory with `config.json` and `model.safetensors` (or a plain
`state_dict` file loaded with `weights_only=True`). Checkpoints are untrusted input: nothing is
unpickled as code, sizes are bounded, and the weights must match the configured architecture."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from models.architectures import MLP, CharLM, CharRNNClassifier
from models.onnx_schema import ONNX_FILE, OnnxArchitecture

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
STATE_DICT_FILES = ("model.pt", "model.pth", "pytorch_model.bin")
MAX_WIDTH = 65_536
MAX_PARAMETERS = 200_000_000


# The repository's naming rules, shared by the server and the train, import and check commands.
# A model directory's name (and config.json's `name`): ASCII, which also keeps '..' out of paths.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
# A version directory's name: a positive integer in canonical ASCII form (no sign, no leading
# zero; str.isdigit() would also take superscripts and other scripts' digits), small enough
# for an int64.
VERSION = re.compile(r"[1-9][0-9]{0,17}", re.ASCII)


def is_version(name: str) -> bool:
    return VERSION.fullmatch(name) is not None


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MLPArchitecture(_Strict):
    type: Literal["mlp"] = "mlp"
    layer_sizes: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        min_length=2, max_length=64
    )
    activation: Literal["relu", "tanh", "sigmoid", "gelu"] = "relu"
    output: Literal["softmax"] = "softmax"


class CharRNNArchitecture(_Strict):
    type: Literal["char_rnn_classifier"] = "char_rnn_classifier"
    cell: Literal["elman", "rnn", "gru", "lstm"] = "elman"
    hidden_size: int = Field(ge=1, le=MAX_WIDTH)
    # elman only: "identity" is the PyTorch tutorial's i2h/i2o RNN as written (no tanh).
    hidden_activation: Literal["tanh", "identity"] = "tanh"
    output: Literal["log_softmax"] = "log_softmax"

    @model_validator(mode="after")
    def _activation_of_elman_only(self) -> CharRNNArchitecture:
        if self.hidden_activation != "tanh" and self.cell != "elman":
            raise ValueError("hidden_activation applies to the elman cell only")
        return self


class CharLMArchitecture(_Strict):
    type: Literal["char_lm"] = "char_lm"
    cell: Literal["gru", "lstm"] = "gru"
    embedding_dim: int = Field(ge=1, le=MAX_WIDTH)
    hidden_size: int = Field(ge=1, le=MAX_WIDTH)
    num_layers: int = Field(default=1, ge=1, le=16)


Architecture = Annotated[
    MLPArchitecture | CharRNNArchitecture | CharLMArchitecture | OnnxArchitecture,
    Field(discriminator="type"),
]


Shape = list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]]


class VectorInput(_Strict):
    kind: Literal["vector"] = "vector"
    shape: Shape = Field(min_length=1, max_length=4)
    # Other row-major layouts of the same values that clients may send, e.g. [[28, 28]] for an
    # image the model reads as 784 floats.
    also_shapes: list[Shape] = Field(default_factory=list, max_length=8)
    minimum: float | None = None
    maximum: float | None = None

    @model_validator(mode="after")
    def _same_sizes(self) -> VectorInput:
        width = math.prod(self.shape)
        wrong = [s for s in self.also_shapes if math.prod(s) != width]
        if wrong:
            raise ValueError(f"also_shapes {wrong} do not hold {width} values like shape")
        return self


class TextInput(_Strict):
    kind: Literal["text"] = "text"
    alphabet: str = Field(min_length=1, max_length=4096)
    max_length: int = Field(ge=1, le=100_000)
    normalize: Literal["none", "ascii"] = "none"


class BatchingConfig(_Strict):
    """Per-model overrides of the service-wide batching defaults."""

    max_batch_size: int | None = Field(default=None, ge=1, le=65_536)
    max_batch_delay_ms: float | None = Field(default=None, ge=0, le=10_000)
    max_batch_tokens: int | None = Field(default=None, ge=1)


class ModelConfig(_Strict):
    """Everything in `config.json`."""

    format_version: Literal[1] = 1
    # "onnx": the version is a graph, `model.onnx`, run by ONNX Runtime (models/onnx_file.py).
    format: Literal["native", "onnx"] = "native"
    name: str = Field(pattern=f"^{MODEL_NAME.pattern}$")
    task: Literal["classify", "score"]
    description: str = ""
    architecture: Architecture
    input: Annotated[VectorInput | TextInput, Field(discriminator="kind")]
    labels: list[str] = Field(default_factory=list, max_length=100_000)
    data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    weights_file: str = SAFETENSORS_FILE
    weights_sha256: str | None = None
    device: str | None = None
    batching: BatchingConfig = Field(default_factory=BatchingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        arch, task = self.architecture, self.task
        if (self.format == "onnx") != isinstance(arch, OnnxArchitecture):
            raise ValueError('"format": "onnx" goes with an architecture of type "onnx"')
        if isinstance(arch, OnnxArchitecture):
            _check_onnx_config(self, arch)
        elif isinstance(arch, MLPArchitecture):
            if task != "classify" or not isinstance(self.input, VectorInput):
                raise ValueError("an mlp is a classifier over a vector input")
            width = 1
            for n in self.input.shape:
                width *= n
            if width != arch.layer_sizes[0]:
                raise ValueError(f"input shape {self.input.shape} does not match layer_sizes[0]")
            if len(self.labels) != arch.layer_sizes[-1]:
                raise ValueError(f"{len(self.labels)} labels for {arch.layer_sizes[-1]} outputs")
        elif not isinstance(self.input, TextInput):
            raise ValueError(f"a {arch.type} needs a text input")
        elif isinstance(arch, CharRNNArchitecture) and (task != "classify" or not self.labels):
            raise ValueError("a char_rnn_classifier is a classifier and needs labels")
        elif isinstance(arch, CharLMArchitecture) and task != "score":
            raise ValueError("a char_lm is a scoring model (task 'score')")
        if Path(self.weights_file).name != self.weights_file:
            raise ValueError("weights_file must be a file name inside the checkpoint directory")
        return self


def _check_onnx_config(config: ModelConfig, arch: OnnxArchitecture) -> None:
    if config.task == "classify" and len(config.labels) < 2:
        raise ValueError("an onnx classifier needs its labels (two or more), in output order")
    if config.task == "score" and not isinstance(config.input, TextInput):
        raise ValueError("an onnx scoring model needs a text input")
    if arch.lengths_input is not None and not isinstance(config.input, TextInput):
        raise ValueError("lengths_input applies to a text input only")
    if arch.lengths_input == arch.input:
        raise ValueError("lengths_input must be another graph input than input")
    if config.weights_file != ONNX_FILE:
        raise ValueError(f"an onnx version's weights_file is {ONNX_FILE}")


def build_model(config: ModelConfig) -> nn.Module:
    """An untrained module of the configured architecture."""
    arch = config.architecture
    if isinstance(arch, OnnxArchitecture):
        raise CheckpointError("an onnx version has no PyTorch module: ONNX Runtime runs its graph")
    if isinstance(arch, MLPArchitecture):
        return MLP(arch.layer_sizes, arch.activation)
    assert isinstance(config.input, TextInput)
    alphabet_size = len(config.input.alphabet)
    if isinstance(arch, CharRNNArchitecture):
        return CharRNNClassifier(
            alphabet_size, arch.hidden_size, len(config.labels), arch.cell, arch.hidden_activation
        )
    return CharLM(
        alphabet_size + 2, arch.embedding_dim, arch.hidden_size, arch.num_layers, arch.cell
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return ModelConfig.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise CheckpointError(f"{path} is invalid: {problems}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        # weights_only=True: the restricted unpickler admits tensors and plain containers only.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot read {path.name}: {exc}".splitlines()[0]) from None
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many types on hostile files
        raise CheckpointError(f"refused {path.name}: {refusal_reason(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path.name} is not a state_dict of tensors")
    return state


def refusal_reason(exc: Exception) -> str:
    """One line on why torch.load(weights_only=True) refused a file: the unpickler's own message
    spans paragraphs (and suggests weights_only=False, which would run the file's code)."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it needs {found.group(1)} to load; only tensors and plain containers are read"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def check_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`state` must have exactly the model's keys and shapes, and finite values."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    wrong = [f"{k} {found[k]} != {expected[k]}" for k in expected if found[k] != expected[k]]
    if wrong:
        raise CheckpointError(f"weight shapes do not match the config: {'; '.join(wrong[:5])}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"weights contain NaN or infinity: {bad[:5]}")


def weights_path(directory: Path, config: ModelConfig) -> Path:
    candidates = [config.weights_file, SAFETENSORS_FILE, *STATE_DICT_FILES]
    for name in dict.fromkeys(candidates):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"no weights file in {directory} (looked for {', '.join(candidates)})")


def load_checkpoint(
    directory: Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Read, verify and build a checkpoint; the module is in eval() on `device`."""
    config = read_config(directory)
    _check_parameter_count(config)
    path = weights_path(directory, config)
    if config.weights_sha256 and sha256_file(path) != config.weights_sha256:
        raise CheckpointError(f"{path.name} does not match weights_sha256 in {CONFIG_FILE}")
    model = build_model(config)
    state = _read_weights(path)
    check_weights(model, state)
    model.load_state_dict(state)
    return model.to(device).eval(), config


def _check_parameter_count(config: ModelConfig) -> None:
    # Built on the meta device: an absurd config costs no memory before it is refused.
    with torch.device("meta"):
        count = sum(p.numel() for p in build_model(config).parameters())
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"the config asks for {count:,} parameters (limit {MAX_PARAMETERS:,})"
        )


FILE_MODE = 0o644  # checkpoint files: written by the trainer, read by any (non-root) server user


def save_checkpoint(directory: Path, model: nn.Module, config: ModelConfig) -> ModelConfig:
    """Write weights and config, both mode 0644; returns the config with the weights' sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / SAFETENSORS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, weights)
    # safetensors creates the file 0600 whatever the umask; a container's non-root user reads it.
    weights.chmod(FILE_MODE)
    config = config.model_copy(
        update={"weights_file": SAFETENSORS_FILE, "weights_sha256": sha256_file(weights)}
    )
    write_config(directory, config)
    return config


def write_config(directory: Path, config: ModelConfig) -> None:
    # A native checkpoint's config.json stays as it was before ONNX versions: no "format" key.
    exclude = {"format"} if config.format == "native" else None
    text = json.dumps(config.model_dump(mode="json", exclude=exclude), indent=2, ensure_ascii=False)
    path = directory / CONFIG_FILE
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(FILE_MODE)
