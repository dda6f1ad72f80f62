"""The model repository on disk: which models and versions `<repository>/<name>/<version>/` holds,
and which of those versions a model's optional `<repository>/<name>/model.json` wants served.

A version directory is named by a positive integer in canonical ASCII form (`1`, `2`, `10`; not
`01`, `+1`, a superscript or an Arabic-Indic digit); any other directory beside the versions is
listed as invalid, with the reason, and never stops the server. Directories and files that are
symbolic links leading out of the repository are refused unless the operator allows them.
Messages meant for API answers name paths relative to the repository; the server's own logs may
show the full paths.

`model.json` carries the version policy of Triton's model configuration, e.g.
`{"version_policy": {"latest": {"num_versions": 1}}}`, `{"version_policy": {"all": {}}}` or
`{"version_policy": {"specific": {"versions": [1, 3]}}}`. Without the file every version is served.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import LoadRequestFailed, RepositoryUnavailable
from models.checkpoint import MODEL_NAME, VERSION

MODEL_FILE = "model.json"
# The same rule as a checkpoint's config name; it also keeps '..' and the like out of paths.
NOT_A_VERSION = (
    "not a version directory: versions are positive integers written in ASCII digits without "
    "a sign or leading zeros (1, 2, 10, ...)"
)


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
    """Sort key: canonical versions by number, anything else first."""
    return (int(version), version) if VERSION.fullmatch(version) else (-1, version)


class Repository:
    """`<root>/<name>/<version>/` as the registry sees it."""

    def __init__(self, root: Path, follow_external_symlinks: bool = False) -> None:
        self.root = root
        self.follow_external_symlinks = follow_external_symlinks

    def relative(self, message: str) -> str:
        """`message` with the repository's own location taken out of every path in it."""
        for root in {str(self.root.resolve()), str(self.root.absolute()), str(self.root)}:
            message = message.replace(root + os.sep, "")
        return message

    def scan(self) -> dict[str, list[str]]:
        """Model names and their version directories, oldest first; models with no version
        directory are left out. Raises RepositoryUnavailable when the root cannot be read."""
        try:
            entries = sorted(p for p in self.root.iterdir() if p.is_dir())
        except OSError as exc:
            raise RepositoryUnavailable(
                f"the model repository cannot be read: {exc.strerror or exc}"
            ) from None
        found: dict[str, list[str]] = {}
        for directory in entries:
            if MODEL_NAME.fullmatch(directory.name):
                versions = self.versions_on_disk(directory.name)
                if versions:
                    found[directory.name] = versions
        return found

    def model_dir(self, name: str) -> Path:
        """The model's directory; a name that is not a plain directory name is refused."""
        if not MODEL_NAME.fullmatch(name):
            raise LoadRequestFailed(f"'{name}' is not a valid model name")
        return self.root / name

    def version_dirs(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The model's version directories (oldest first), and every other subdirectory with
        why it is not one."""
        directory = self.model_dir(name)
        try:
            subdirectories = [p.name for p in directory.iterdir() if p.is_dir()]
        except OSError:
            return [], {}
        versions = sorted((v for v in subdirectories if VERSION.fullmatch(v)), key=version_key)
        invalid = {
            v: NOT_A_VERSION
            for v in subdirectories
            if not VERSION.fullmatch(v) and not v.startswith((".", "_"))
        }
        return versions, invalid

    def versions_on_disk(self, name: str) -> list[str]:
        return self.version_dirs(name)[0]

    def version_dir(self, name: str, version: str) -> Path:
        """The version's directory, once it and the files in it are found to stay inside the
        repository (or the operator allows symbolic links that leave it)."""
        path = self.model_dir(name) / version
        if not self.follow_external_symlinks:
            for inside in [path, *_entries(path)]:
                self._check_inside(inside)
        return path

    def _check_inside(self, path: Path) -> None:
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            shown = path.relative_to(self.root) if path.is_relative_to(self.root) else path.name
            raise LoadRequestFailed(
                f"{shown} is a symbolic link leading out of the model repository; refused "
                "(set BATCHSERVE_FOLLOW_EXTERNAL_SYMLINKS=true to allow it)"
            )

    def read_model_settings(self, name: str) -> ModelSettings:
        path = self.model_dir(name) / MODEL_FILE
        shown = f"{name}/{MODEL_FILE}"
        if not path.is_file():
            return ModelSettings()
        try:
            if not self.follow_external_symlinks:
                self._check_inside(path)
            return ModelSettings.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or MODEL_FILE}: {e['msg']}"
                for e in exc.errors()
            )
            raise LoadRequestFailed(f"{shown} is invalid: {problems}") from None
        except OSError as exc:
            raise LoadRequestFailed(f"cannot read {shown}: {exc.strerror or exc}") from None

    def wanted_versions(self, name: str) -> list[str]:
        """The versions on disk that the model's policy serves; none is a load failure."""
        versions = self.versions_on_disk(name)
        if not versions:
            raise LoadRequestFailed(f"{name}/ has no version directories (1/, 2/, ...)")
        wanted = self.read_model_settings(name).version_policy.select(versions)
        if not wanted:
            raise LoadRequestFailed(
                f"no version of {name} on disk ({', '.join(versions)}) matches its version_policy"
            )
        return wanted


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []  # a missing or unreadable directory fails to load on its own, with the reason
