"""The `batchserve` command: serve a model repository, train a recipe, import a Keras or PyTorch
model, check a repository before deploying it."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from app.settings import DEFAULT_REPOSITORY, Settings

ENV_PREFIX = "BATCHSERVE_"
Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"batchserve {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_train(commands)
    _add_import(commands)
    _add_check(commands)
    return parser


def _version() -> str:
    try:
        return metadata.version("batchserve")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class UsageError(Exception):
    """An option value the command cannot use; the message names the option."""


def _fail(command: str, message: object) -> int:
    print(f"batchserve {command}: error: {message}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------- serve


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(a) for a in typing.get_args(annotation))


def _metavar(annotation: Any) -> str:
    kinds = set(typing.get_args(annotation)) or {annotation}
    if Path in kinds:
        return "DIR"
    if kinds & {int, float}:
        return "N"
    return "VALUE"


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _setting_flags() -> dict[str, str]:
    """Settings field -> its serve flag, for every field that is not a secret."""
    return {
        name: _flag(name)
        for name, info in Settings.model_fields.items()
        if not _is_secret(info.annotation)
    }


def _add_serve(commands: Any) -> None:
    secrets = [n for n, i in Settings.model_fields.items() if _is_secret(i.annotation)]
    epilog = (
        "Every option is also a BATCHSERVE_* environment variable (shown with each); an option "
        "given here wins over the variable. Secrets are read from the environment only (an "
        "option would show them in the process list): "
        + ", ".join(_env_name(n) for n in secrets)
        + ". PORT is the port when BATCHSERVE_PORT and --port are unset (Knative, KServe, Cloud "
        "Run set it). KServe's --model_name, --http_port and --workers are accepted."
    )
    serve = commands.add_parser(
        "serve",
        help="serve the models of a repository over HTTP",
        description="Serve every model version of the repository (/v1 and /v2 APIs).",
        epilog=epilog,
    )
    for name, flag in _setting_flags().items():
        info = Settings.model_fields[name]
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default is None else str(default)
        if name == "model_repository":
            shown = "the bundled models"
        help_text = f"{info.description} [${_env_name(name)}; default {shown}]"
        if info.annotation is bool:
            serve.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(info.annotation) is typing.Literal:
            serve.add_argument(flag, choices=typing.get_args(info.annotation), help=help_text)
        else:
            serve.add_argument(flag, metavar=_metavar(info.annotation), help=help_text)
    kserve = serve.add_argument_group("KServe's flags (appended by its model server runtime)")
    kserve.add_argument("--model_name", metavar="NAME", help="logged; the repository decides")
    kserve.add_argument("--http_port", metavar="PORT", help="the same as --port")
    kserve.add_argument("--workers", type=int, metavar="N", help="server processes: 1 for now")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers != 1:
        return _fail(
            "serve",
            f"--workers {args.workers}: one server process per container for now; run more "
            "replicas to use more cores",
        )
    overrides, sources = _overrides(args)
    if isinstance(overrides, str):
        return _fail("serve", overrides)
    # The environment alone first: a nonsense variable is reported even where a flag overrides it.
    if _settings({}, {}) is None:
        return 2
    settings = _settings(overrides, sources)
    if settings is None:
        return 2
    return serve_forever(settings, args.model_name)


def _settings(overrides: dict[str, Any], sources: dict[str, str]) -> Settings | None:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            source = sources.get(field, _env_name(field))
            print(f"batchserve: {source}: {error['msg']}", file=sys.stderr)
        return None


def _overrides(args: argparse.Namespace) -> tuple[dict[str, Any] | str, dict[str, str]]:
    """Settings given as flags (and PORT), and where each came from for error messages."""
    overrides: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, flag in _setting_flags().items():
        value = getattr(args, name)
        if value is not None:
            overrides[name], sources[name] = value, flag
    if args.http_port is not None:
        if "port" in overrides and overrides["port"] != args.http_port:
            return "--port and --http_port disagree", sources
        overrides["port"], sources["port"] = args.http_port, "--http_port"
    if "port" not in overrides and _env_name("port") not in os.environ and "PORT" in os.environ:
        overrides["port"], sources["port"] = os.environ["PORT"], "PORT"
    return overrides, sources


def serve_forever(settings: Settings, model_name: str | None = None) -> int:
    from app import server

    return server.serve(settings, model_name)


# --------------------------------------------------------------------------- train


def _add_train(commands: Any) -> None:
    from models import train_cli

    train = commands.add_parser(
        "train",
        help="train a recipe on a bundled data set or your own data",
        description=train_cli.__doc__,
    )
    train_cli.add_arguments(train)
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from models import train_cli

    try:
        train_cli.report(train_cli.run(args))
    except train_cli.USER_ERRORS as exc:
        return _fail("train", exc)
    return 0


# --------------------------------------------------------------------------- import


def _add_import(commands: Any) -> None:
    from models.importing import ARCHITECTURES
    from models.versions import DEFAULT_OUTPUT, REPOSITORY_ENV

    parent = commands.add_parser(
        "import",
        help="make a checkpoint from a Keras file or a PyTorch state_dict",
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
        choices=["relu", "tanh", "sigmoid", "gelu"],
        help="mlp: the activation after each hidden Linear layer (a state_dict does not say)",
    )
    torch_.add_argument(
        "--hidden-activation",
        choices=["identity", "tanh"],
        help="i2h/i2o RNN: identity (the tutorial as written) or tanh on the hidden state",
    )
    for sub in (keras, torch_):
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
        sub.set_defaults(handler=_import)
    keras.add_argument("--input-range", metavar="LOW,HIGH", help="refuse inputs outside it")
    keras.add_argument("--input-shape", metavar="AxB", help="also accept this nested layout")
    torch_.add_argument("--input-range", metavar="LOW,HIGH", help="mlp: refuse inputs outside it")
    torch_.add_argument("--input-shape", metavar="AxB", help="mlp: also accept this nested layout")
    torch_.add_argument("--alphabet", help="text models: the characters in one-hot order")
    torch_.add_argument("--max-length", type=int, help="text models: longest string (default 32)")
    torch_.add_argument(
        "--normalize", choices=["none", "ascii"], help="text models: fold accents away (ascii)"
    )


def _import(args: argparse.Namespace) -> int:
    from models.checkpoint import CheckpointError
    from models.data import DataError
    from models.importing import import_keras, import_state_dict
    from models.versions import VersionError, default_repository, plan_version, write_version

    try:
        facts = _user_facts(args)
        repository = (args.repository or default_repository()).expanduser().resolve()
        version = plan_version(repository, facts.name, args.version, args.force)
        if args.kind == "keras":
            model, config = import_keras(args.file, facts)
        else:
            model, config = import_state_dict(args.file, args.arch, facts)
        directory, config = write_version(repository, model, config, version, args.force)
    except (CheckpointError, DataError, VersionError, UsageError) as exc:
        return _fail(f"import {args.kind}", exc)
    arch = config.architecture
    print(f"wrote {directory} ({arch.type}, {len(config.labels)} labels)")
    print(f"check it: batchserve check {repository}")
    return 0


def _user_facts(args: argparse.Namespace) -> Any:
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


# --------------------------------------------------------------------------- check


def _add_check(commands: Any) -> None:
    check = commands.add_parser(
        "check",
        help="validate every model version of a repository (exit 1 on any failure)",
        description="Load every version as the server would (config, name, weights, sha256, "
        "shapes, model.json) and run a warm-up forward pass whose outputs must be finite; "
        "print one line per version. Exit status 1 when any fails: run it in CI before deploy.",
    )
    check.add_argument(
        "repository",
        nargs="?",
        type=Path,
        help=f"default: ${_env_name('model_repository')} if set, else the bundled models",
    )
    check.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from models.repository_check import check_repository

    configured = os.environ.get(_env_name("model_repository"))
    root = args.repository or (Path(configured) if configured else DEFAULT_REPOSITORY)
    if not root.is_dir():
        return _fail("check", f"{root} is not a directory")
    device_problem = _device_problem(args.device)
    if device_problem:
        return _fail("check", device_problem)
    results = [*check_repository(root, args.device), *_model_json_checks(root)]
    results.sort(
        key=lambda r: (r.name, r.version.isdigit(), int(r.version) if r.version.isdigit() else 0)
    )
    _print_table(results)
    failed = [r for r in results if not r.ok]
    versions = [r for r in results if r.version.isdigit()]
    print(f"{len(versions)} version(s) checked in {root}: {len(failed)} problem(s)")
    if not versions:
        print("no model versions found: expected <name>/<version>/config.json", file=sys.stderr)
    return 1 if failed or not versions else 0


def _model_json_checks(root: Path) -> list[Any]:
    """The version policy of each model (app/serving/repository.py): invalid, or matching no
    version."""
    from app.errors import LoadRequestFailed
    from app.serving.repository import Repository
    from models.repository_check import VersionCheck

    repository = Repository(root)
    results = []
    for name in repository.scan():
        try:
            repository.wanted_versions(name)
        except LoadRequestFailed as exc:
            results.append(VersionCheck(name, "model.json", exc.message))
    return results


def _device_problem(device: str) -> str | None:
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        return f"--device {device!r}: expected cpu, cuda or cuda:N"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: CUDA is not available"
    return None


def _print_table(results: Sequence[Any]) -> None:
    rows = [("MODEL", "VERSION", "RESULT", "DETAIL")]
    rows += [
        (r.name, r.version, "ok" if r.ok else "FAILED", r.detail if r.ok else r.problem)
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]))
