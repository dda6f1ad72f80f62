"""`batchserve train RECIPE [--data FILE]` (also `python -m models.train`): a recipe on its bundled
data set or on the user's own file, written as a new version of the model in a repository."""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import (
    CharLMArchitecture,
    CharRNNArchitecture,
    CheckpointError,
    MLPArchitecture,
    ModelConfig,
    TextInput,
    VectorInput,
)
from models.data import DataError, load_surnames
from models.text import normalize
from models.train import (
    RECIPES,
    TrainOptions,
    train_char_classifier,
    train_char_lm,
    train_mlp,
    train_mnist_mlp,
    train_names_lm,
    train_names_rnn,
)
from models.train_sequence import train_sequence
from models.train_tabular import TABULAR_RECIPES, train_tabular
from models.userdata import (
    check_labels,
    label_names,
    read_labelled_text,
    read_lines,
    read_vectors,
    split_rows,
    text_alphabet,
)
from models.versions import (
    BUNDLED_REPOSITORY,
    DEFAULT_OUTPUT,
    REPOSITORY_ENV,
    VersionError,
    default_repository,
    plan_version,
    write_version,
)

# Each recipe by the name of its bundled model and by its architecture.
ALIASES = {"mlp": "mnist-mlp", "char_rnn_classifier": "names-rnn", "char_lm": "names-lm"}
USER_ERRORS = (DataError, CheckpointError, VersionError)
SPLIT_SEED = 0  # the held-out rows do not move when --seed changes, so runs stay comparable
MIN_MAX_LENGTH = 32


@dataclass(frozen=True)
class OwnData:
    """How to read and split a user's file."""

    path: Path
    fractions: tuple[float, float]
    normalize: str
    max_length: int | None
    input_range: tuple[float, float] | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    recipes = [*RECIPES, *ALIASES, *TABULAR_RECIPES, "sequence"]
    parser.add_argument(
        "recipe",
        choices=[*recipes, "all"],
        metavar="RECIPE",
        help=f"one of {', '.join(recipes)} (architecture names are aliases of the bundled "
        "recipes), or all (the three bundled models)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="your own data instead of the bundled data set: for mlp a .npz (arrays x [N, ...] "
        "and y [N]) or a CSV of label then features; for char_rnn_classifier a CSV of text,label; "
        "for char_lm a text file with one string per line; for regress and multilabel a CSV "
        "with a header (see --targets); for sequence a CSV of text,label (words) or a .jsonl "
        'of {"steps": [[...], ...], "label": ...} (numeric steps)',
    )
    parser.add_argument(
        "--name", help="model name (default: the recipe's, or the data file's stem)"
    )
    parser.add_argument(
        "--targets",
        metavar="COL1,COL2",
        help="regress and multilabel (a CSV with a header row): the columns to predict; the "
        "other columns are the features",
    )
    parser.add_argument(
        "--repository",
        "--out",
        type=Path,
        metavar="DIR",
        help=f"model repository to write into (default: ${REPOSITORY_ENV} if set, else "
        f"./{DEFAULT_OUTPUT}; the bundled repository only when named here)",
    )
    parser.add_argument(
        "--version", type=int, help="version number to write (default: one above the highest)"
    )
    parser.add_argument("--force", action="store_true", help="replace --version if it exists")
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same machine: same bits")
    parser.add_argument("--limit", type=int, help="use the first N items of each split (tests)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="share of --data held out to pick the best epoch (default 0.1)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="share of --data held out for the reported test metrics (default 0.1)",
    )
    parser.add_argument(
        "--normalize",
        choices=["none", "ascii"],
        default="none",
        help="text models: fold accents away (ascii) at training and serving time",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        help=f"text models: longest string served (default: the longest in --data, at least "
        f"{MIN_MAX_LENGTH})",
    )
    parser.add_argument(
        "--input-range",
        type=_number_pair,
        metavar="LOW,HIGH",
        help="mlp: refuse inputs outside [LOW, HIGH] when serving (default: no check)",
    )
    parser.add_argument(
        "--cache-dir", "--data-dir", type=Path, help="download cache of the bundled data sets"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _number_pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    if not low < high:
        raise argparse.ArgumentTypeError(f"LOW must be below HIGH, got {text!r}")
    return low, high


def run(args: argparse.Namespace) -> list[tuple[Path, ModelConfig]]:
    """Train what `args` asks for; returns (directory, config) of each written version. Raises
    one of USER_ERRORS, before anything is written, for input that cannot be used."""
    _check_arguments(args)
    torch.set_num_threads(args.threads)
    repository = (args.repository or default_repository()).expanduser().resolve()
    options = TrainOptions(
        out=repository,
        version=args.version,
        epochs=args.epochs,
        seed=args.seed,
        limit=args.limit,
        progress=not args.no_progress,
        cache_dir=args.cache_dir,
        force=args.force,
    )
    if args.recipe == "sequence":
        if args.data is None:
            raise DataError("train sequence has no bundled data set: give --data FILE")
        name = args.name or name_from_file(args.data)
        version = plan_version(repository, name, args.version, args.force)
        fractions = (args.valid_fraction, args.test_fraction)
        model, config = train_sequence(name, args.data, fractions, options, SPLIT_SEED)
        return [write_version(repository, model, config, version, args.force)]
    if args.recipe in TABULAR_RECIPES:
        if args.data is None:
            raise DataError(f"train {args.recipe} has no bundled data set: give --data FILE.csv")
        name = args.name or name_from_file(args.data)
        version = plan_version(repository, name, args.version, args.force)
        targets = [t.strip() for t in (args.targets or "").split(",") if t.strip()]
        fractions = (args.valid_fraction, args.test_fraction)
        model, config = train_tabular(
            args.recipe, name, args.data, targets, fractions, options, SPLIT_SEED
        )
        return [write_version(repository, model, config, version, args.force)]
    if args.data is not None:
        recipe = ALIASES.get(args.recipe, args.recipe)
        name = args.name or name_from_file(args.data)
        own = OwnData(
            args.data,
            (args.valid_fraction, args.test_fraction),
            args.normalize,
            args.max_length,
            args.input_range,
        )
        return [train_own(recipe, name, own, options)]
    wanted = list(RECIPES) if args.recipe == "all" else [ALIASES.get(args.recipe, args.recipe)]
    return [_train_bundled(recipe, args.name, options) for recipe in wanted]


def _check_arguments(args: argparse.Namespace) -> None:
    if args.recipe == "all" and (args.data is not None or args.name):
        raise DataError(
            "'all' trains the three bundled models; --data and --name go with one recipe"
        )
    for flag in ("epochs", "limit", "threads", "max_length"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise DataError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    fractions = (args.valid_fraction, args.test_fraction)
    if not all(0 < f < 1 for f in fractions) or sum(fractions) >= 1:
        raise DataError("--valid-fraction and --test-fraction must be in (0, 1) and sum below 1")


def name_from_file(path: Path) -> str:
    """A model name from a file's stem: characters a name cannot hold become '-'."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-._")[:64]
    return name or "model"


# --------------------------------------------------------------------------- bundled data sets


def _train_bundled(
    recipe: str, name: str | None, options: TrainOptions
) -> tuple[Path, ModelConfig]:
    if name and name != recipe:
        raise DataError(f"the bundled {recipe} keeps its name; --name goes with --data")
    version = plan_version(options.out, recipe, options.version, options.force)
    options = replace(options, version=version)
    if recipe == "mnist-mlp":
        config = train_mnist_mlp(options)
    else:
        surnames = load_surnames(options.cache_dir)
        trainer = train_names_rnn if recipe == "names-rnn" else train_names_lm
        config = trainer(options, surnames)
    return options.out / recipe / str(version), config


# --------------------------------------------------------------------------- the user's own data


def train_own(
    recipe: str, name: str, own: OwnData, options: TrainOptions
) -> tuple[Path, ModelConfig]:
    """Read, check and split the user's file, train the recipe's architecture on it and write it
    as a new version of `name`. Nothing is written when the file cannot be used."""
    version = plan_version(options.out, name, options.version, options.force)
    options = replace(options, version=version)
    if recipe == "mnist-mlp":
        model, config = _own_mlp(name, own, options)
    elif recipe == "names-rnn":
        model, config = _own_classifier(name, own, options)
    else:
        model, config = _own_lm(name, own, options)
    return write_version(options.out, model, config, version, options.force)


def _provenance(own: OwnData, sizes: dict[str, int], limited: dict[str, int]) -> dict[str, Any]:
    return {
        "file": own.path.name,
        "sha256": hashlib.sha256(own.path.read_bytes()).hexdigest(),
        "splits": sizes,
        "used": limited,
        "split_seed": SPLIT_SEED,
        "valid_fraction": own.fractions[0],
        "test_fraction": own.fractions[1],
    }


def _head(rows: list[int], limit: int | None) -> list[int]:
    return rows if limit is None else rows[:limit]


def _own_mlp(name: str, own: OwnData, options: TrainOptions) -> tuple[nn.Module, ModelConfig]:
    data = read_vectors(own.path)
    check_labels(data.labels, own.path)
    labels = label_names(data.labels)
    index = {label: i for i, label in enumerate(labels)}
    split = split_rows(data.labels, own.fractions, SPLIT_SEED, own.path)
    x = torch.from_numpy(data.x)
    y = torch.tensor([index[label] for label in data.labels])
    parts = [_head(rows, options.limit) for rows in (split.train, split.valid, split.test)]
    width = x.shape[1]
    low, high = own.input_range or (None, None)
    config = ModelConfig(
        name=name,
        task="classify",
        description=f"MLP classifier trained with batchserve train on {own.path.name}.",
        architecture=MLPArchitecture(layer_sizes=[width, 64, 64, len(labels)]),
        input=VectorInput(
            shape=[width],
            also_shapes=[data.shape] if len(data.shape) > 1 else [],
            minimum=low,
            maximum=high,
        ),
        labels=labels,
    )
    train, valid, test = parts
    tensors = ((x[train], y[train]), (x[valid], y[valid]), (x[test], y[test]))
    model, config = train_mlp(config, tensors, options, RECIPES["mnist-mlp"])
    used = dict(zip(("train", "valid", "test"), map(len, parts), strict=True))
    return model, config.model_copy(update={"data": _provenance(own, split.sizes(), used)})


def _normalised(texts: Sequence[str], own: OwnData) -> list[str]:
    result = [normalize(text, own.normalize) for text in texts]
    for original, text in zip(texts, result, strict=True):
        if not text:
            raise DataError(f"{own.path}: {original!r} is empty after --normalize {own.normalize}")
    return result


def _text_input(texts: Sequence[str], own: OwnData) -> TextInput:
    longest = max(len(text) for text in texts)
    if own.max_length is not None and own.max_length < longest:
        example = next(text for text in texts if len(text) == longest)
        raise DataError(
            f"{own.path}: {example!r} has {longest} characters; --max-length is {own.max_length}"
        )
    max_length = own.max_length or max(longest, MIN_MAX_LENGTH)
    alphabet = text_alphabet(texts, "none", own.path)  # texts are normalised already
    return TextInput(alphabet=alphabet, max_length=max_length, normalize=own.normalize)


def _own_classifier(
    name: str, own: OwnData, options: TrainOptions
) -> tuple[nn.Module, ModelConfig]:
    pairs = read_labelled_text(own.path)
    labels_per_row = [label for _, label in pairs]
    check_labels(labels_per_row, own.path)
    texts = _normalised([text for text, _ in pairs], own)
    split = split_rows(labels_per_row, own.fractions, SPLIT_SEED, own.path)
    rows = [_head(part, options.limit) for part in (split.train, split.valid, split.test)]
    config = ModelConfig(
        name=name,
        task="classify",
        description=f"Character RNN classifier trained with batchserve train on {own.path.name}.",
        architecture=CharRNNArchitecture(cell="elman", hidden_size=128),
        input=_text_input(texts, own),
        labels=label_names(labels_per_row),
    )
    train, valid, test = ([(texts[i], labels_per_row[i]) for i in part] for part in rows)
    splits = (train, valid, test)
    model, config = train_char_classifier(config, splits, options, RECIPES["names-rnn"])
    used = dict(zip(("train", "valid", "test"), map(len, rows), strict=True))
    return model, config.model_copy(update={"data": _provenance(own, split.sizes(), used)})


def _own_lm(name: str, own: OwnData, options: TrainOptions) -> tuple[nn.Module, ModelConfig]:
    texts = _normalised(read_lines(own.path), own)
    split = split_rows(len(texts), own.fractions, SPLIT_SEED, own.path)
    rows = [_head(part, options.limit) for part in (split.train, split.valid, split.test)]
    config = ModelConfig(
        name=name,
        task="score",
        description=f"Character GRU language model trained with batchserve train on "
        f"{own.path.name}: ln P(string) with begin/end-of-sequence tokens.",
        architecture=CharLMArchitecture(cell="gru", embedding_dim=32, hidden_size=256),
        input=_text_input(texts, own),
    )
    train, valid, test = ([texts[i] for i in part] for part in rows)
    splits = (train, valid, test)
    model, config = train_char_lm(config, splits, options, RECIPES["names-lm"])
    used = dict(zip(("train", "valid", "test"), map(len, rows), strict=True))
    return model, config.model_copy(update={"data": _provenance(own, split.sizes(), used)})


# --------------------------------------------------------------------------- entry point


def report(written: list[tuple[Path, ModelConfig]]) -> None:
    for directory, config in written:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in config.metrics.items())
        print(f"wrote {directory} ({metrics})")
    if written:
        repository = written[0][0].parent.parent
        if repository == BUNDLED_REPOSITORY:
            print("serve it: batchserve serve")
        else:
            print(f"serve it: batchserve serve --model-repository {repository}")


def main(argv: Sequence[str] | None = None, prog: str = "batchserve train") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report(run(args))
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
