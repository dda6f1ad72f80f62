"""`batchserve import keras|torch|onnx FILE`: a Keras file, a PyTorch state_dict or an ONNX graph
as a new version."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.cli import import_onnx
from app.cli.common import SUMMARIES, UsageError, fail


def add(commands: Any) -> None:
    from models.importing import ARCHITECTURES
    from models.versions import DEFAULT_OUTPUT, REPOSITORY_ENV

    parent = commands.add_parser(
        "import",
        help=SUMMARIES["import"],
        description="Write a Keras model or a PyTorch state_dict as a new version of a model in "
        "a repository, after loading it and running a warm-up forward pass.",
    )
    kinds = parent.add_subparsers(dest="kind", required=True, metavar="KIND")
    keras = kinds.add_parser(
        "keras",
        help="a Keras 3 .keras archive or legacy .h5 file of Dense layers",
        description="A keras.Sequential of Dense layers (with InputLayer, Flatten, Dropout, "
        "Activation) becomes an mlp; read with h5py, no TensorFlow.",
    )
    torch_ = kinds.add_parser(
        "torch",
        help="a PyTorch state_dict (torch.save or safetensors)",
        description="A state_dict of an nn.Sequential MLP, the PyTorch tutorial's character RNN "
        "or a character GRU/LSTM language model, mapped onto batchserve's keys (loaded with "
        "weights_only=True: nothing in the file runs).",
    )
    torch_.add_argument("--arch", required=True, choices=ARCHITECTURES, help="what the file is")
    torch_.add_argument(
        "--activation",
        choices=["relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "softplus"],
        help="mlp: the activation after each hidden Linear layer (a state_dict does not say)",
    )
    torch_.add_argument(
        "--layers",
        metavar="L1,L2,...",
        help="mlp from an nn.Sequential: every layer in order, e.g. "
        "linear,batch_norm,relu,dropout:0.2,linear,layer_norm,leaky_relu:0.1,linear (a "
        "final softmax or sigmoid is the head's and may be named)",
    )
    for sub in (keras, torch_):  # the head, and the input of a sequence model
        sub.add_argument(
            "--task",
            choices=["classify", "multilabel", "regress"],
            help="the head (default classify): softmax over --labels, a sigmoid per label, or "
            "real outputs named by --labels",
        )
        sub.add_argument("--threshold", type=float, help="multilabel: the labels at or above it")
        sub.add_argument(
            "--target-mean", metavar="M1,...", help="regress: the targets' training mean(s)"
        )
        sub.add_argument(
            "--target-std", metavar="S1,...", help="regress: the targets' training std(s)"
        )
        sub.add_argument(
            "--vocabulary",
            type=Path,
            metavar="FILE",
            help="rnn over words: one word per line, id order",
        )
        sub.add_argument(
            "--lowercase", action=argparse.BooleanOptionalAction, help="words: lowercase first"
        )
        sub.add_argument(
            "--split", choices=["whitespace", "words"], help="words: how a string is split"
        )
        sub.add_argument(
            "--unknown", help="words: the vocabulary's unknown token ('' refuses unknown words)"
        )
        sub.add_argument(
            "--tokenizer",
            type=Path,
            metavar="FILE",
            help="rnn or char_lm over subwords: a Hugging Face tokenizers tokenizer.json "
            "(copied into the version; needs the tokenizers extra)",
        )
        sub.add_argument("--bos-token", help="char_lm over subwords: the start token (e.g. <s>)")
        sub.add_argument("--eos-token", help="char_lm over subwords: the end token (e.g. </s>)")
        sub.add_argument("--features", type=int, help="rnn over numeric steps: values per step")
        sub.add_argument("--max-steps", type=int, help="numeric steps: longest sequence")
        sub.add_argument(
            "--readout", choices=["last", "mean", "max"], help="rnn: the head reads (default last)"
        )
        sub.add_argument(
            "--nonlinearity",
            choices=["tanh", "relu"],
            help="rnn with a plain nn.RNN: its nonlinearity",
        )
    torch_.add_argument(
        "--hidden-activation",
        choices=["identity", "tanh"],
        help="i2h/i2o RNN: identity (the tutorial as written) or tanh on the hidden state",
    )
    onnx = import_onnx.add(kinds)
    for sub in (keras, torch_, onnx):
        sub.add_argument("file", type=Path, metavar="FILE")
        sub.add_argument("--name", help="model name (default: the file's stem)")
        sub.add_argument(
            "--repository",
            type=Path,
            metavar="DIR",
            help=f"write into DIR (default: ${REPOSITORY_ENV} if set, else ./{DEFAULT_OUTPUT})",
        )
        sub.add_argument("--version", type=int, help="default: one above the highest")
        sub.add_argument("--force", action="store_true", help="replace --version if it exists")
        sub.add_argument("--labels", help="comma-separated class names, in output order")
        sub.add_argument("--labels-file", type=Path, help="class names, one per line")
        sub.add_argument("--description", help="shown in GET /v1/models/{name}")
        sub.add_argument(
            "--config",
            type=Path,
            metavar="JSON",
            help="a partial config.json for any other field (input, labels, batching, metrics, "
            "data); options given here win",
        )
        sub.set_defaults(handler=import_onnx.run if sub is onnx else _import)
    keras.add_argument("--input-range", metavar="LOW,HIGH", help="refuse inputs outside it")
    keras.add_argument("--input-shape", metavar="AxB", help="also accept this nested layout")
    torch_.add_argument("--input-range", metavar="LOW,HIGH", help="mlp: refuse inputs outside it")
    torch_.add_argument("--input-shape", metavar="AxB", help="mlp: also accept this nested layout")
    for sub in (keras, torch_):
        sub.add_argument("--alphabet", help="text models: the characters in one-hot order")
        sub.add_argument(
            "--max-length", type=int, help="text models: longest string (default 32 characters)"
        )
        sub.add_argument(
            "--normalize", choices=["none", "ascii"], help="text models: fold accents away (ascii)"
        )


def _import(args: argparse.Namespace) -> int:
    from models.checkpoint import CheckpointError
    from models.data import DataError
    from models.importing import import_keras, import_state_dict
    from models.versions import VersionError, default_repository, plan_version, write_version

    try:
        facts = user_facts(args)
        repository = (args.repository or default_repository()).expanduser().resolve()
        version = plan_version(repository, facts.name, args.version, args.force)
        if args.kind == "keras":
            model, config = import_keras(args.file, facts)
        else:
            model, config = import_state_dict(args.file, args.arch, facts)
        directory, config = write_version(repository, model, config, version, args.force)
    except (CheckpointError, DataError, VersionError, UsageError) as exc:
        return fail(f"import {args.kind}", exc)
    arch = config.architecture
    print(f"wrote {directory} ({arch.type}, {len(config.labels)} labels)")
    print(f"check it: batchserve check {repository}")
    return 0


def user_facts(args: argparse.Namespace) -> Any:
    from models.importing import UserFacts, read_base_config
    from models.train_cli import name_from_file

    labels = None
    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(",")]
    if args.labels_file is not None:
        try:
            text = args.labels_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--labels-file {args.labels_file}: {exc}") from None
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    return UserFacts(
        name=args.name or name_from_file(args.file),
        labels=labels,
        description=args.description,
        input_range=_pair(args.input_range),
        input_shape=_shape(args.input_shape),
        alphabet=getattr(args, "alphabet", None),
        max_length=getattr(args, "max_length", None),
        normalize=getattr(args, "normalize", None),
        activation=getattr(args, "activation", None),
        hidden_activation=getattr(args, "hidden_activation", None),
        task=getattr(args, "task", None),
        threshold=getattr(args, "threshold", None),
        target_mean=_floats(getattr(args, "target_mean", None), "--target-mean"),
        target_std=_floats(getattr(args, "target_std", None), "--target-std"),
        layers=_names(getattr(args, "layers", None)),
        vocabulary=_vocabulary(getattr(args, "vocabulary", None)),
        lowercase=getattr(args, "lowercase", None),
        split=getattr(args, "split", None),
        unknown=getattr(args, "unknown", None),
        features=getattr(args, "features", None),
        max_steps=getattr(args, "max_steps", None),
        readout=getattr(args, "readout", None),
        nonlinearity=getattr(args, "nonlinearity", None),
        tokenizer=getattr(args, "tokenizer", None),
        bos_token=getattr(args, "bos_token", None),
        eos_token=getattr(args, "eos_token", None),
        base=read_base_config(args.config) if args.config else {},
    )


def _pair(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--input-range: expected LOW,HIGH, got {text!r}") from None
    if not low < high:
        raise UsageError(f"--input-range: LOW must be below HIGH, got {text!r}")
    return low, high


def _shape(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.lower().split("x")]
    except ValueError:
        raise UsageError(f"--input-shape: expected sizes like 28x28, got {text!r}") from None


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",")]


def _vocabulary(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--vocabulary {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
