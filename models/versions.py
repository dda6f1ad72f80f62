"""Writing a checkpoint into a model repository as a new version of a model: never over an existing
version unless asked, never into the bundled repository unless it is named, and all at once (a
server scanning the repository never sees a half-written version)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from torch import nn

from models.checkpoint import MODEL_NAME, ModelConfig, is_version, save_checkpoint

REPOSITORY_ENV = "BATCHSERVE_MODEL_REPOSITORY"
DEFAULT_OUTPUT = Path("model-repository")
BUNDLED_REPOSITORY = Path(__file__).resolve().parent / "repository"


class VersionError(Exception):
    """A version that may not be written; the message says why and what to do."""


def default_repository() -> Path:
    """Where training and imports write unless told: $BATCHSERVE_MODEL_REPOSITORY (the repository
    `batchserve serve` reads), else ./model-repository. Never the bundled repository, so a command
    run with defaults cannot change the models the package ships."""
    configured = os.environ.get(REPOSITORY_ENV)
    chosen = Path(configured).expanduser() if configured else DEFAULT_OUTPUT
    if chosen.resolve() == BUNDLED_REPOSITORY:
        return DEFAULT_OUTPUT.resolve()
    return chosen.resolve()


def existing_versions(repository: Path, name: str) -> list[int]:
    """The model's version directories (all digits), lowest first."""
    directory = repository / name
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and is_version(p.name))


def plan_version(repository: Path, name: str, version: int | None, force: bool) -> int:
    """The version to write: `version` if given (refused when it exists, unless `force`), else one
    above the highest on disk. Called before training, so a refusal costs nothing."""
    if not MODEL_NAME.fullmatch(name):
        raise VersionError(
            f"{name!r} is not a model name: letters, digits, '_', '.', '-' (at most 64), "
            "starting with a letter or digit"
        )
    if repository.exists() and not repository.is_dir():
        raise VersionError(f"{repository} is not a directory")
    versions = existing_versions(repository, name)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if version < 1:
        raise VersionError(f"--version must be a positive integer, got {version}")
    if version in versions and not force:
        raise VersionError(
            f"{repository / name / str(version)} exists; choose another --version, leave it out "
            f"to write version {versions[-1] + 1}, or pass --force to replace it"
        )
    return version


def write_version(
    repository: Path, model: nn.Module, config: ModelConfig, version: int, force: bool
) -> tuple[Path, ModelConfig]:
    """Save the checkpoint as `<repository>/<config.name>/<version>`: written beside it under a
    hidden name, then renamed into place (a replaced version is removed only afterwards)."""
    return write_version_with(
        repository,
        config.name,
        version,
        force,
        lambda staging: save_checkpoint(staging, model, config),
    )


def write_version_with(
    repository: Path, name: str, version: int, force: bool, save: Callable[[Path], ModelConfig]
) -> tuple[Path, ModelConfig]:
    """As `write_version`, with `save` writing the version's files into the staging directory
    it is given (and checking them: an exception there leaves nothing behind)."""
    parent = repository / name
    target = parent / str(version)
    plan_version(repository, name, version, force)
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".incoming-{version}-{uuid.uuid4().hex[:8]}"
    old = parent / f".replaced-{version}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        saved = save(staging)
        staging.chmod(0o755)
        if target.exists():
            target.rename(old)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return target, saved
