"""The model repository on disk: which models and versions `<repository>/<name>/<version>/` holds,
and which of those versions a model's optional `<repository>/<name>/model.json` wants served.

`model.json` carries the version policy of Triton's model configuration, e.g.
`{"version_policy": {"latest": {"num_versions": 1}}}`, `{"version_policy": {"all": {}}}` or
`{"version_policy": {"specific": {"versions": [1, 3]}}}`. Without the file every version is served.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import LoadRequestFailed

MODEL_FILE = "model.json"
# The same rule as a checkpoint's config name; it also keeps '..' and the like out of paths.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatestPolicy(_Strict):
    num_versions: int = Field(1, ge=1, description="Serve the newest N versions.")


class SpecificPolicy(_Strict):
    versions: list[int] = Field(min_length=1, description="Serve exactly these versions.")


class VersionPolicy(_Strict):
    """Exactly one of `latest`, `all` or `specific`, as in Triton's ModelVersionPolicy."""

    latest: LatestPolicy | None = None
    all: dict[str, object] | None = None
    specific: SpecificPolicy | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        given = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'latest', 'all' or 'specific'")
        if self.all:
            raise ValueError("'all' takes no settings: write {}")
        return self

    def select(self, versions: list[str]) -> list[str]:
        """The versions (in `version_key` order) that this policy serves."""
        if self.latest is not None:
            return versions[-self.latest.num_versions :]
        if self.specific is not None:
            wanted = {str(v) for v in self.specific.versions}
            return [v for v in versions if v in wanted]
        return list(versions)


class ModelSettings(_Strict):
    """Everything in `model.json`."""

    version_policy: VersionPolicy = Field(default_factory=lambda: VersionPolicy(all={}))


def version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (-1, version)


def model_dir(root: Path, name: str) -> Path:
    """The model's directory; a name that is not a plain directory name is refused."""
    if not MODEL_NAME.match(name):
        raise LoadRequestFailed(f"'{name}' is not a valid model name")
    return root / name


def versions_on_disk(directory: Path) -> list[str]:
    """Version directories (all digits) of one model, oldest first."""
    if not directory.is_dir():
        return []
    found = [v.name for v in directory.iterdir() if v.is_dir() and v.name.isdigit()]
    return sorted(found, key=version_key)


def scan(root: Path) -> dict[str, list[str]]:
    """Model names and version directories present in the repository."""
    found: dict[str, list[str]] = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = versions_on_disk(directory)
        if versions and MODEL_NAME.match(directory.name):
            found[directory.name] = versions
    return found


def read_model_settings(directory: Path) -> ModelSettings:
    path = directory / MODEL_FILE
    if not path.is_file():
        return ModelSettings()
    try:
        return ModelSettings.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'model.json'}: {e['msg']}"
            for e in exc.errors()
        )
        raise LoadRequestFailed(f"{path} is invalid: {problems}") from None
    except OSError as exc:
        raise LoadRequestFailed(f"cannot read {path}: {exc}") from None


def wanted_versions(directory: Path) -> list[str]:
    """The versions on disk that the model's policy serves; none is a load failure."""
    versions = versions_on_disk(directory)
    if not versions:
        raise LoadRequestFailed(f"{directory} has no version directories (1/, 2/, ...)")
    wanted = read_model_settings(directory).version_policy.select(versions)
    if not wanted:
        raise LoadRequestFailed(
            f"no version of {directory.name} on disk ({', '.join(versions)}) matches its "
            "version_policy"
        )
    return wanted
