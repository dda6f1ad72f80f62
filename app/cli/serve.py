"""`batchserve serve`: every setting as an option (flags win over BATCHSERVE_* variables), PORT
and KServe's appended flags, then the server."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from app.cli.common import SUMMARIES, env_name, fail
from app.settings import Settings


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(a) for a in typing.get_args(annotation))


def _metavar(annotation: Any) -> str:
    kinds = set(typing.get_args(annotation)) or {annotation}
    if Path in kinds:
        return "DIR"
    if kinds & {int, float}:
        return "N"
    return "VALUE"


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _setting_flags() -> dict[str, str]:
    """Settings field -> its serve flag, for every field that is not a secret."""
    return {
        name: _flag(name)
        for name, info in Settings.model_fields.items()
        if not _is_secret(info.annotation)
    }


def add(commands: Any) -> None:
    secrets = [n for n, i in Settings.model_fields.items() if _is_secret(i.annotation)]
    epilog = (
        "Every option is also a BATCHSERVE_* environment variable (shown with each); an option "
        "given here wins over the variable. Secrets are read from the environment only (an "
        "option would show them in the process list): "
        + ", ".join(env_name(n) for n in secrets)
        + ". PORT is the port when BATCHSERVE_PORT and --port are unset (Knative, KServe, Cloud "
        "Run set it). KServe's --model_name and --http_port are accepted; its --workers is the "
        "--workers above."
    )
    serve = commands.add_parser(
        "serve",
        help=SUMMARIES["serve"],
        description="Serve every model version of the repository (/v1 and /v2 APIs).",
        epilog=epilog,
    )
    for name, flag in _setting_flags().items():
        info = Settings.model_fields[name]
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default is None else str(default)
        if name == "model_repository":
            shown = "the bundled models"
        help_text = f"{info.description} [${env_name(name)}; default {shown}]"
        if info.annotation is bool:
            serve.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(info.annotation) is typing.Literal:
            serve.add_argument(flag, choices=typing.get_args(info.annotation), help=help_text)
        else:
            serve.add_argument(flag, metavar=_metavar(info.annotation), help=help_text)
    kserve = serve.add_argument_group("KServe's flags (appended by its model server runtime)")
    kserve.add_argument("--model_name", metavar="NAME", help="logged; the repository decides")
    kserve.add_argument("--http_port", metavar="PORT", help="the same as --port")
    # KServe's --workers is the setting's own option (BATCHSERVE_WORKERS), listed above.
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    overrides, sources = _overrides(args)
    if isinstance(overrides, str):
        return fail("serve", overrides)
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
            source = sources.get(field, env_name(field))
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
    if "port" not in overrides and env_name("port") not in os.environ and "PORT" in os.environ:
        overrides["port"], sources["port"] = os.environ["PORT"], "PORT"
    return overrides, sources


def serve_forever(settings: Settings, model_name: str | None = None) -> int:
    from app import server

    return server.serve(settings, model_name)
