"""Checking every model version in a repository as the server would load it: config, name, weights,
sha256, shapes, and a warm-up forward pass with finite outputs; one result per version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.checkpoint import MODEL_NAME, CheckpointError, is_version, load_checkpoint, read_config
from models.probe import check_finite_outputs


@dataclass(frozen=True)
class VersionCheck:
    """One version's result: `problem` is None when it would serve."""

    name: str
    version: str
    problem: str | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_repository(root: Path, device: str = "cpu") -> list[VersionCheck]:
    """Every version of every model under `root`, in name and version order. Directories that
    hold version directories but that the server would skip are reported as problems too."""
    results: list[VersionCheck] = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = sorted(
            (p for p in directory.iterdir() if p.is_dir() and is_version(p.name)),
            key=lambda p: int(p.name),
        )
        if not versions:
            if (directory / "config.json").exists():
                results.append(VersionCheck(directory.name, "-", _NOT_VERSIONED))
            continue
        if not MODEL_NAME.fullmatch(directory.name):
            results.append(VersionCheck(directory.name, "-", _BAD_NAME))
            continue
        results.extend(check_version(version, device) for version in versions)
    return results


_NOT_VERSIONED = "config.json lies in the model directory; move it and the weights into <name>/1/"
_BAD_NAME = "not a model name the server serves (letters, digits, _ . -; at most 64)"


def check_version(directory: Path, device: str = "cpu") -> VersionCheck:
    """Load the version in `directory` as the server would and run the warm-up probe."""
    name, version = directory.parent.name, directory.name
    try:
        config = read_config(directory)
        if config.name != name:
            raise CheckpointError(
                f"config.json names the model '{config.name}' but it lies under '{name}'"
            )
        if config.format == "onnx":
            return _check_onnx(directory, device)
        model, config = load_checkpoint(directory, device)
        check_finite_outputs(model, config)
    except CheckpointError as exc:
        return VersionCheck(name, version, str(exc).replace(str(directory) + "/", ""))
    parameters = sum(p.numel() for p in model.parameters())
    sha = (config.weights_sha256 or "")[:12] or "not recorded"
    detail = f"{config.architecture.type}, {parameters:,} parameters, sha256 {sha}"
    return VersionCheck(name, version, None, detail)


def _check_onnx(directory: Path, device: str) -> VersionCheck:
    """An ONNX version: its graph checked, opened in ONNX Runtime and warmed up."""
    from models.onnx_file import load_onnx

    model, config = load_onnx(directory, device)
    sha = (config.weights_sha256 or "")[:12] or "not recorded"
    detail = (
        f"onnx opset {model.facts.opset} on {model.device}, {model.facts.elements:,} "
        f"weights, sha256 {sha}"
    )
    return VersionCheck(directory.parent.name, directory.name, None, detail)
