"""The checkpoint format: a directory with `config.json` and `model.safetensors` (or a plain
`state_dict` file loaded with `weights_only=True`). Checkpoints are untrusted input: nothing is
unpickled as code, sizes are bounded, and the weights must match the configured architecture."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from models.families import Architecture, family_of
from models.families.base import (
    MAX_WIDTH,
    InputSpec,
    SequenceInput,
    SubwordsInput,
    TextInput,
    VectorInput,
    WordsInput,
    _Strict,
)
from models.families.char_lm import CharLMArchitecture
from models.families.char_rnn import CharRNNArchitecture
from models.families.mlp import MLPArchitecture
from models.families.rnn import RNNArchitecture
from models.onnx_schema import OnnxArchitecture
from models.subwords import SubwordTokenizer, TokenizerFileError, read_tokenizer

__all__ = [  # the config's parts, importable from here as before the families had modules
    "CharLMArchitecture",
    "CharRNNArchitecture",
    "MLPArchitecture",
    "RNNArchitecture",
    "SequenceInput",
    "SubwordsInput",
    "TextInput",
    "VectorInput",
    "WordsInput",
]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
STATE_DICT_FILES = ("model.pt", "model.pth", "pytorch_model.bin")
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


class TargetScaling(_Strict):
    """How a regression's targets were scaled for training: the model learnt
    (y - mean) / std, so the server answers output * std + mean, per output."""

    mean: list[float] = Field(min_length=1, max_length=MAX_WIDTH)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, max_length=MAX_WIDTH)


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
    # The head: classify (softmax over labels), multilabel (a sigmoid per label), regress (the
    # outputs named by labels, target_scaling undone) or score (a language model).
    task: Literal["classify", "multilabel", "regress", "score"]
    description: str = ""
    architecture: Architecture
    input: Annotated[InputSpec, Field(discriminator="kind")]
    # classify and multilabel: the class names in output order; regress: the outputs' names.
    labels: list[str] = Field(default_factory=list, max_length=100_000)
    # multilabel: the labels whose probability is at least this are the item's labels.
    threshold: float | None = Field(default=None, gt=0, lt=1)
    # regress: the scaling of the targets in training, undone when serving.
    target_scaling: TargetScaling | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    weights_file: str = SAFETENSORS_FILE
    weights_sha256: str | None = None
    device: str | None = None
    batching: BatchingConfig = Field(default_factory=BatchingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if (self.format == "onnx") != isinstance(self.architecture, OnnxArchitecture):
            raise ValueError('format: "onnx" goes with an architecture of type "onnx"')
        family = family_of(self.architecture)
        family.check(self.architecture, self)
        _check_head(self)
        outputs = family.num_outputs(self.architecture, self)
        if outputs is not None and self.task != "score" and len(self.labels) != outputs:
            raise ValueError(f"labels: {len(self.labels)} labels for {outputs} outputs")
        if Path(self.weights_file).name != self.weights_file:
            raise ValueError("weights_file must be a file name inside the checkpoint directory")
        return self


def _check_head(config: ModelConfig) -> None:
    task, labels = config.task, config.labels
    if len(set(labels)) != len(labels):
        raise ValueError("labels: a label is repeated")
    if task == "classify" and len(labels) < 2:
        raise ValueError(
            f"labels: a classifier needs at least 2 labels, not {len(labels)} (softmax over one "
            "output is always 1.0); one output is task 'regress' or 'multilabel'"
        )
    if task in ("multilabel", "regress") and not labels:
        raise ValueError(f"labels: a {task} head names each of its outputs")
    if task != "multilabel" and config.threshold is not None:
        raise ValueError("threshold: only a multilabel head has one")
    scaling = config.target_scaling
    if scaling is not None:
        if task != "regress":
            raise ValueError("target_scaling: only a regress head has one")
        if not len(scaling.mean) == len(scaling.std) == len(labels):
            raise ValueError(
                f"target_scaling: {len(scaling.mean)} means and {len(scaling.std)} stds for "
                f"{len(labels)} outputs"
            )


def build_model(config: ModelConfig) -> nn.Module:
    """An untrained module of the configured architecture."""
    if isinstance(config.architecture, OnnxArchitecture):
        raise CheckpointError("an onnx version has no PyTorch module: ONNX Runtime runs its graph")
    return family_of(config.architecture).build(config.architecture, config)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config(directory: Path, load_files: bool = True) -> ModelConfig:
    """The version's config.json, with the files it names beside the weights loaded and checked
    (a subword tokenizer); `load_files=False` reads the config alone."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        config = ModelConfig.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise CheckpointError(f"{path} is invalid: {problems}") from None
    if load_files:
        load_input_files(config, directory)
    return config


def load_input_files(config: ModelConfig, directory: Path) -> None:
    """Read the input's own file from `directory` (its name is a plain file name, so it is an
    entry of the version directory, and the repository's symbolic-link rules apply to it as to
    every entry there) and attach it to the config."""
    spec = config.input
    if isinstance(spec, SubwordsInput):
        spec.attach(load_tokenizer(directory / spec.tokenizer_file, spec))


def load_tokenizer(path: Path, spec: SubwordsInput) -> SubwordTokenizer:
    """The subword tokenizer in `path`, checked against the input spec; CheckpointError if not."""
    try:
        return read_tokenizer(
            path, spec.vocab_size, spec.bos_token, spec.eos_token, spec.tokenizer_sha256
        )
    except TokenizerFileError as exc:
        raise CheckpointError(str(exc)) from None


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
    config = _save_input_files(directory, config)
    write_config(directory, config)
    return config


def _save_input_files(directory: Path, config: ModelConfig) -> ModelConfig:
    """Copy a subword tokenizer into the version, as the file that was checked (its sha256,
    recorded in the config, is checked at every load)."""
    spec = config.input
    if not isinstance(spec, SubwordsInput):
        return config
    tokenizer = spec.tokenizer
    target = directory / spec.tokenizer_file
    if tokenizer.source is None or tokenizer.sha256 is None:
        raise CheckpointError(f"{spec.tokenizer_file}: the tokenizer was not read from a file")
    if tokenizer.source.resolve() != target.resolve():
        shutil.copyfile(tokenizer.source, target)
    if sha256_file(target) != tokenizer.sha256:
        raise CheckpointError(f"{tokenizer.source} changed while it was imported")
    target.chmod(FILE_MODE)
    saved = spec.model_copy(update={"tokenizer_sha256": tokenizer.sha256})
    saved.attach(tokenizer)
    return config.model_copy(update={"input": saved})


def write_config(directory: Path, config: ModelConfig) -> None:
    # A native checkpoint's config.json stays as it was before ONNX versions: no "format" key.
    exclude = {"format"} if config.format == "native" else None
    text = json.dumps(config.model_dump(mode="json", exclude=exclude), indent=2, ensure_ascii=False)
    path = directory / CONFIG_FILE
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(FILE_MODE)
