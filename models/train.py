"""The three training recipes (mnist-mlp, names-rnn, names-lm): a seeded, bit-reproducible loop
(on one machine: other CPUs pick other float kernels), trainers for each architecture on tensors or
strings, and the recipes on their pinned data sets. `python -m models.train` is the same command
as `batchserve train` (models/train_cli.py)."""

from __future__ import annotations

import copy
import math
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from models.checkpoint import (
    CharLMArchitecture,
    CharRNNArchitecture,
    MLPArchitecture,
    ModelConfig,
    TextInput,
    VectorInput,
    build_model,
)
from models.data import (
    SURNAME_ALPHABET,
    SURNAME_MAX_LENGTH,
    MnistData,
    SurnameData,
    load_mnist,
    load_surnames,
)
from models.text import CharVocab
from models.versions import default_repository, plan_version, write_version

EVAL_BATCH = 2048
MNIST_SHIFT_PX = 1
CLIP_NORM = 5.0
T = TypeVar("T")


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings of one model."""

    epochs: int
    batch_size: int
    learning_rate: float
    schedule: str = "constant"  # or "one_cycle": warm up to learning_rate, then anneal to ~0


RECIPES = {
    "mnist-mlp": Recipe(epochs=20, batch_size=128, learning_rate=3e-3, schedule="one_cycle"),
    "names-rnn": Recipe(epochs=20, batch_size=128, learning_rate=2e-3),
    "names-lm": Recipe(epochs=8, batch_size=256, learning_rate=3e-3),
}


@dataclass(frozen=True)
class TrainOptions:
    """What every trainer takes; `limit` keeps the first N items of each split (for tests). The
    checkpoint is written as `version` of the model in `out` (None: the next free version); an
    existing version is replaced only with `force`."""

    out: Path = field(default_factory=default_repository)
    version: int | None = None
    epochs: int | None = None
    seed: int = 0
    limit: int | None = None
    progress: bool = True
    cache_dir: Path | None = None
    force: bool = False


@dataclass
class FitResult:
    best_epoch: int
    valid_score: float
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- shared loop


def _fit(
    name: str,
    recipe: Recipe,
    model: nn.Module,
    losses: Callable[[torch.Tensor], torch.Tensor],
    num_train: int,
    validate: Callable[[], float],
    options: TrainOptions,
) -> FitResult:
    """Mini-batch Adam over a seeded shuffle of range(num_train); `losses(indices)` is a batch's
    loss. Keeps the weights of the epoch with the best `validate()` score (higher is better)."""
    start = time.monotonic()
    epochs = options.epochs or recipe.epochs
    generator = torch.Generator().manual_seed(options.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    scheduler = _scheduler(optimizer, recipe, epochs, num_train)
    best_epoch, best_score, best_state = 0, -math.inf, copy.deepcopy(model.state_dict())
    epoch_losses: list[float] = []
    bar = tqdm(
        range(1, epochs + 1), desc=name, unit="epoch", disable=not options.progress, file=sys.stderr
    )
    for epoch in bar:
        loss = _train_epoch(model, losses, num_train, recipe, optimizer, scheduler, generator)
        epoch_losses.append(loss)
        model.eval()
        score = validate()
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}", valid=f"{score:.4f}")
        if score > best_score:
            best_epoch, best_score, best_state = epoch, score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch, best_score, epochs, time.monotonic() - start, epoch_losses)


def _train_epoch(
    model: nn.Module,
    losses: Callable[[torch.Tensor], torch.Tensor],
    num_train: int,
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    generator: torch.Generator,
) -> float:
    model.train()
    total, count = 0.0, 0
    for indices in torch.split(torch.randperm(num_train, generator=generator), recipe.batch_size):
        optimizer.zero_grad()
        loss = losses(indices)
        torch.autograd.backward(loss)
        # The Elman recurrence has no gates; clipping stops the occasional exploding step.
        nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total, count = total + loss.item() * len(indices), count + len(indices)
    return total / max(count, 1)


def _scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, epochs: int, num_train: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if recipe.schedule == "constant":
        return None
    steps = epochs * math.ceil(num_train / recipe.batch_size)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=steps)


def _training_record(
    recipe: Recipe, fit: FitResult, options: TrainOptions, augmentation: str | None = None
) -> dict[str, Any]:
    return {
        "epochs": fit.epochs,
        "best_epoch": fit.best_epoch,
        "selection": "weights of the epoch with the best validation score",
        "seed": options.seed,
        "optimizer": "Adam",
        "learning_rate": recipe.learning_rate,
        "learning_rate_schedule": recipe.schedule,
        "batch_size": recipe.batch_size,
        "gradient_clip_norm": CLIP_NORM,
        **({"augmentation": augmentation} if augmentation else {}),
        "train_loss_per_epoch": [round(x, 5) for x in fit.losses],
        "limit": options.limit,
        "seconds": round(fit.seconds, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # The same seed gives the same bits on the same machine; another CPU may differ in the last
        # bits (ATen and MKL pick kernels by instruction set), which training then amplifies.
        "cpu": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}",
    }


def _head(items: Sequence[T], limit: int | None) -> Sequence[T]:
    return items if limit is None else items[:limit]


def _save(model: nn.Module, config: ModelConfig, options: TrainOptions) -> ModelConfig:
    version = plan_version(options.out, config.name, options.version, options.force)
    return write_version(options.out, model, config, version, options.force)[1]


# --------------------------------------------------------------------------- MNIST MLP


def mnist_config() -> ModelConfig:
    return ModelConfig(
        name="mnist-mlp",
        task="classify",
        description="Handwritten digit classifier: the Keras MNIST example's MLP "
        "(784 -> Dense 64 ReLU -> Dense 64 ReLU -> Dense 10 softmax) on 28x28 images in [0, 1].",
        architecture=MLPArchitecture(layer_sizes=[784, 64, 64, 10], activation="relu"),
        input=VectorInput(shape=[784], also_shapes=[[28, 28]], minimum=0.0, maximum=1.0),
        labels=[str(digit) for digit in range(10)],
    )


def translate(images: torch.Tensor, generator: torch.Generator, max_px: int) -> torch.Tensor:
    """Each 28x28 image moved by a random whole number of pixels (up to `max_px` each way), zeros
    filling in. A dense net has no translation invariance of its own; this teaches it some and
    takes test accuracy from ~97.5% to ~98.3%."""
    n = images.shape[0]
    offsets = torch.randint(-max_px, max_px + 1, (n, 2), generator=generator) * (2 / 28)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = offsets
    grid = nn.functional.affine_grid(theta, [n, 1, 28, 28], align_corners=False)
    moved = nn.functional.grid_sample(
        images.view(n, 1, 28, 28), grid, mode="nearest", align_corners=False
    )
    return moved.view(n, 784)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        predicted = torch.cat([model(chunk).argmax(-1) for chunk in torch.split(x, EVAL_BATCH)])
    return (predicted == y).double().mean().item()


Tensors = tuple[torch.Tensor, torch.Tensor]


def train_mlp(
    config: ModelConfig,
    splits: tuple[Tensors, Tensors, Tensors],
    options: TrainOptions,
    recipe: Recipe,
    shift_px: int = 0,
) -> tuple[nn.Module, ModelConfig]:
    """Fit an mlp classifier on (features, label index) train/valid/test splits; `shift_px` > 0
    moves 28x28 images by random whole pixels. Returns the model and the config with its metrics
    and training record."""
    (x, y), (vx, vy), (tx, ty) = splits
    torch.manual_seed(options.seed)
    model = build_model(config)
    loss_fn = nn.CrossEntropyLoss()
    shifts = torch.Generator().manual_seed(options.seed + 1)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        inputs = translate(x[idx], shifts, shift_px) if shift_px else x[idx]
        loss: torch.Tensor = loss_fn(model(inputs), y[idx])
        return loss

    fit = _fit(
        config.name, recipe, model, batch_loss, len(y), lambda: _accuracy(model, vx, vy), options
    )
    metrics = {"test_accuracy": _accuracy(model, tx, ty), "valid_accuracy": fit.valid_score}
    metrics["majority_class_baseline"] = torch.bincount(ty).max().item() / len(ty)
    augmentation = f"random shifts of up to {shift_px} px" if shift_px else None
    training = _training_record(recipe, fit, options, augmentation)
    return model, config.model_copy(update={"metrics": metrics, "training": training})


def train_mnist_mlp(options: TrainOptions, data: MnistData | None = None) -> ModelConfig:
    """Train and save mnist-mlp; returns the saved config."""
    version = plan_version(options.out, "mnist-mlp", options.version, options.force)
    options = replace(options, version=version)
    data = data or load_mnist(options.cache_dir)
    (x, y), (vx, vy), (tx, ty) = [
        (torch.from_numpy(split.images), torch.from_numpy(split.labels))
        for split in (data.train, data.valid, data.test)
    ]
    if options.limit is not None:
        x, y, vx, vy, tx, ty = (t[: options.limit] for t in (x, y, vx, vy, tx, ty))
    splits = ((x, y), (vx, vy), (tx, ty))
    recipe = RECIPES["mnist-mlp"]
    model, config = train_mlp(mnist_config(), splits, options, recipe, MNIST_SHIFT_PX)
    used = {"train": len(y), "valid": len(vy), "test": len(ty)}
    config = config.model_copy(update={"data": {**data.provenance(), "used": used}})
    return _save(model, config, options)


# --------------------------------------------------------------------------- surname tensors


def encode_batch(names: Sequence[str], vocab: CharVocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded alphabet indices [N, T] (padding 0) and lengths [N]."""
    lengths = torch.tensor([len(n) for n in names], dtype=torch.long)
    chars = torch.zeros(len(names), int(lengths.max()), dtype=torch.long)
    for row, name in enumerate(names):
        chars[row, : len(name)] = torch.tensor(vocab.encode(name), dtype=torch.long)
    return chars, lengths


def lm_batch(
    names: Sequence[str], vocab: CharVocab
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs [BOS] + chars and targets chars + [EOS], both [N, T + 1] padded with EOS, and the
    lengths (characters + 1)."""
    chars, lengths = encode_batch(names, vocab)
    n, width = chars.shape
    inputs = torch.full((n, width + 1), vocab.eos, dtype=torch.long)
    targets = torch.full((n, width + 1), vocab.eos, dtype=torch.long)
    inputs[:, 0] = vocab.bos
    for row, length in enumerate(lengths.tolist()):
        inputs[row, 1 : length + 1] = chars[row, :length]
        targets[row, :length] = chars[row, :length]
    return inputs, targets, lengths + 1


def _surname_input() -> TextInput:
    return TextInput(alphabet=SURNAME_ALPHABET, max_length=SURNAME_MAX_LENGTH, normalize="ascii")


def _limited(data: SurnameData, limit: int | None) -> tuple[list[tuple[str, str]], ...]:
    return tuple(list(_head(split, limit)) for split in (data.train, data.valid, data.test))


# --------------------------------------------------------------------------- names RNN


def names_rnn_config(countries: Sequence[str], hidden_size: int = 128) -> ModelConfig:
    return ModelConfig(
        name="names-rnn",
        task="classify",
        description="Surname -> country of origin: the PyTorch 'classifying names with a "
        "character-level RNN' tutorial's RNN (i2h and i2o over one-hot char + hidden), trained on "
        "names-dataset surnames labelled with the country where most bearers live.",
        architecture=CharRNNArchitecture(cell="elman", hidden_size=hidden_size),
        input=_surname_input(),
        labels=list(countries),
    )


def _classify(model: nn.Module, names: Sequence[str], vocab: CharVocab) -> torch.Tensor:
    """Log-probabilities [N, classes]."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(names), EVAL_BATCH):
            outputs.append(model(*encode_batch(names[start : start + EVAL_BATCH], vocab)))
    return torch.cat(outputs)


def _topk_accuracy(log_probs: torch.Tensor, y: torch.Tensor, k: int) -> float:
    top = log_probs.topk(min(k, log_probs.shape[1]), dim=-1).indices
    return (top == y[:, None]).any(-1).double().mean().item()


Pairs = Sequence[tuple[str, str]]


def train_char_classifier(
    config: ModelConfig, splits: tuple[Pairs, Pairs, Pairs], options: TrainOptions, recipe: Recipe
) -> tuple[nn.Module, ModelConfig]:
    """Fit a char_rnn_classifier on (normalised text, label) train/valid/test splits; returns the
    model and the config with its metrics and training record."""
    train, valid, test = splits
    vocab = CharVocab(config.input.alphabet)  # type: ignore[union-attr]
    label_index = {c: i for i, c in enumerate(config.labels)}
    chars, lengths = encode_batch([n for n, _ in train], vocab)
    y = torch.tensor([label_index[c] for _, c in train])
    vy = torch.tensor([label_index[c] for _, c in valid])
    torch.manual_seed(options.seed)
    model = build_model(config)
    loss_fn = nn.NLLLoss()
    fit = _fit(
        config.name,
        recipe,
        model,
        lambda idx: loss_fn(model(chars[idx], lengths[idx]), y[idx]),
        len(y),
        lambda: _topk_accuracy(_classify(model, [n for n, _ in valid], vocab), vy, 1),
        options,
    )
    metrics = _classifier_metrics(model, test, vocab, label_index)
    update = {
        "metrics": {**metrics, "valid_accuracy": fit.valid_score},
        "training": _training_record(recipe, fit, options),
    }
    return model, config.model_copy(update=update)


def train_names_rnn(options: TrainOptions, data: SurnameData | None = None) -> ModelConfig:
    """Train and save names-rnn; returns the saved config."""
    options = replace(
        options, version=plan_version(options.out, "names-rnn", options.version, options.force)
    )
    data = data or load_surnames(options.cache_dir)
    train, valid, test = _limited(data, options.limit)
    config = names_rnn_config(data.countries)
    recipe = RECIPES["names-rnn"]
    model, config = train_char_classifier(config, (train, valid, test), options, recipe)
    provenance = {**data.provenance(), "used": _used(train, valid, test)}
    return _save(model, config.model_copy(update={"data": provenance}), options)


def _classifier_metrics(
    model: nn.Module, test: Sequence[tuple[str, str]], vocab: CharVocab, label_index: dict[str, int]
) -> dict[str, float]:
    ty = torch.tensor([label_index[c] for _, c in test])
    log_probs = _classify(model, [n for n, _ in test], vocab)
    majority = Counter(c for _, c in test).most_common(1)[0][1] / len(test)
    return {
        "test_accuracy": _topk_accuracy(log_probs, ty, 1),
        "test_top3_accuracy": _topk_accuracy(log_probs, ty, 3),
        "majority_class_baseline": majority,
    }


def _used(*splits: Sequence[Any]) -> dict[str, int]:
    return dict(zip(("train", "valid", "test"), (len(s) for s in splits), strict=True))


# --------------------------------------------------------------------------- names LM


def names_lm_config(embedding_dim: int = 32, hidden_size: int = 256) -> ModelConfig:
    return ModelConfig(
        name="names-lm",
        task="score",
        description="Character-level GRU language model of surnames (begin/end-of-sequence "
        "tokens): scores how surname-like a string is, as a natural-log probability.",
        architecture=CharLMArchitecture(
            cell="gru", embedding_dim=embedding_dim, hidden_size=hidden_size, num_layers=1
        ),
        input=_surname_input(),
    )


def _lm_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Mean negative log-likelihood per real token (the EOS token included)."""
    log_probs = model(inputs, lengths).gather(-1, targets[..., None]).squeeze(-1)
    mask = torch.arange(inputs.shape[1])[None, :] < lengths[:, None]
    loss: torch.Tensor = -(log_probs * mask).sum() / mask.sum()
    return loss


def sequence_log_probs(model: nn.Module, names: Sequence[str], vocab: CharVocab) -> torch.Tensor:
    """ln P(name + EOS | BOS) for each name, summed over its tokens: [N] (float64)."""
    totals = []
    with torch.inference_mode():
        for start in range(0, len(names), EVAL_BATCH):
            inputs, targets, lengths = lm_batch(names[start : start + EVAL_BATCH], vocab)
            log_probs = model(inputs, lengths).gather(-1, targets[..., None]).squeeze(-1)
            mask = torch.arange(inputs.shape[1])[None, :] < lengths[:, None]
            totals.append((log_probs.double() * mask).sum(-1))
    return torch.cat(totals)


def _perplexity(model: nn.Module, names: Sequence[str], vocab: CharVocab) -> float:
    num_tokens = sum(len(n) + 1 for n in names)
    return math.exp(-sequence_log_probs(model, names, vocab).sum().item() / num_tokens)


def unigram_perplexity(train: Sequence[str], test: Sequence[str], vocab: CharVocab) -> float:
    """Per-token perplexity of add-one-smoothed character (+EOS) frequencies: the baseline a
    language model must beat."""
    counts = Counter(c for name in train for c in name)
    counts["</s>"] = len(train)
    total = sum(counts.values()) + len(vocab.alphabet) + 1
    nll = sum(-math.log((counts[token] + 1) / total) for name in test for token in [*name, "</s>"])
    return math.exp(nll / sum(len(n) + 1 for n in test))


def train_char_lm(
    config: ModelConfig,
    splits: tuple[Sequence[str], Sequence[str], Sequence[str]],
    options: TrainOptions,
    recipe: Recipe,
) -> tuple[nn.Module, ModelConfig]:
    """Fit a char_lm on normalised train/valid/test strings; returns the model and the config with
    its metrics and training record."""
    train, valid, test = splits
    vocab = CharVocab(config.input.alphabet)  # type: ignore[union-attr]
    inputs, targets, lengths = lm_batch(train, vocab)
    torch.manual_seed(options.seed)
    model = build_model(config)
    fit = _fit(
        config.name,
        recipe,
        model,
        lambda idx: _lm_loss(model, inputs[idx], targets[idx], lengths[idx]),
        len(train),
        lambda: -_perplexity(model, valid, vocab),
        options,
    )
    perplexity = _perplexity(model, test, vocab)
    metrics = {
        "test_perplexity": perplexity,
        "test_nll_per_token": math.log(perplexity),
        "unigram_baseline_perplexity": unigram_perplexity(train, test, vocab),
        "valid_perplexity": -fit.valid_score,
    }
    training = _training_record(recipe, fit, options)
    return model, config.model_copy(update={"metrics": metrics, "training": training})


def train_names_lm(options: TrainOptions, data: SurnameData | None = None) -> ModelConfig:
    """Train and save names-lm on the surnames' train split; returns the saved config."""
    options = replace(
        options, version=plan_version(options.out, "names-lm", options.version, options.force)
    )
    data = data or load_surnames(options.cache_dir)
    train, valid, test = ([n for n, _ in split] for split in _limited(data, options.limit))
    model, config = train_char_lm(
        names_lm_config(), (train, valid, test), options, RECIPES["names-lm"]
    )
    provenance = {**data.provenance(), "used": _used(train, valid, test), "labels": "not used"}
    return _save(model, config.model_copy(update={"data": provenance}), options)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m models.train`: the same command as `batchserve train`."""
    from models.train_cli import main as train_main  # it imports this module

    return train_main(argv, prog="python -m models.train")


if __name__ == "__main__":
    sys.exit(main())
