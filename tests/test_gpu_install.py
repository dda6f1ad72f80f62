"""bench/gpu_install.py: on a machine without network, which carried wheels to install. Real
wheel files (metadata only) and this environment's real installed packages."""

from __future__ import annotations

import importlib.metadata
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from bench.gpu_install import choose


def _wheel(directory: Path, name: str, version: str, *requires: str) -> Path:
    path = directory / f"{name}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
    return path


def _carried(directory: Path) -> None:
    directory.mkdir()
    _wheel(
        directory,
        "alpha_xyz",
        "1.0",
        "beta-xyz>=2",
        "pytest>=1",
        "packaging>=999",
        "gamma-xyz; extra == 'more'",
        "pinned-xyz<1",
    )
    _wheel(directory, "beta_xyz", "3.0", "beta-missing-xyz>=1")
    _wheel(directory, "gamma_xyz", "1.0")
    _wheel(directory, "pinned_xyz", "2.0")
    _wheel(directory, "packaging", "999.0")
    _wheel(directory, "pytest", importlib.metadata.version("pytest"))
    _wheel(directory, "unasked_xyz", "1.0")


def _names(paths: list[Path]) -> set[str]:
    return {p.name.split("-")[0] for p in paths}


def test_missing_and_too_old_packages_are_installed_and_met_ones_kept(tmp_path: Path) -> None:
    _carried(tmp_path / "wheels")
    choice = choose(tmp_path / "wheels", [Requirement("alpha-xyz[more]")])
    # pytest is installed here and meets pytest>=1: kept. packaging is, but not at >=999.
    assert _names(choice.install) == {
        "alpha_xyz",
        "beta_xyz",
        "gamma_xyz",
        "pinned_xyz",
        "packaging",
    }
    assert sorted(choice.warnings) == [
        "beta-missing-xyz is not installed, not carried: beta-xyz asks beta-missing-xyz>=1",
        "pinned-xyz 2.0, carried: alpha-xyz asks pinned-xyz<1",
    ]


def test_a_need_behind_an_extra_counts_only_when_the_extra_is_asked_for(tmp_path: Path) -> None:
    _carried(tmp_path / "wheels")
    choice = choose(tmp_path / "wheels", [Requirement("alpha-xyz")])
    assert "gamma_xyz" not in _names(choice.install)
    assert "alpha_xyz" in _names(choice.install)
