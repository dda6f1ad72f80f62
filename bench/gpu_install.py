"""On a CUDA machine without network (bench/gpu_check.sh): which of the wheels that
bench/gpu_wheels.sh carried there to install, each with `pip install --no-deps`. A carried
package is installed where the machine lacks it, or where its installed version does not meet
what the requirements and the other carried packages ask of it; what the machine has and meets
them stays, torch above all (no torch wheel travels). This is pip's choice when each package has
one candidate, without pip's refusal of the whole install over one need that the machine's own
packages leave unmet (tritonclient's ml-dtypes<=0.5.4 against a newer ml-dtypes, say): such
needs are printed as warnings instead.

Run: `python -m bench.gpu_install WHEELS_DIR REQUIREMENTS_FILE` (prints the wheels to install)."""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import re
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version
except ImportError:  # not installed there: the machine's pip carries a copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.utils import parse_wheel_filename  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef,assignment]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Choice:
    install: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def carried_wheels(directory: Path) -> dict[str, Path]:
    """{canonical name: wheel}; two versions of one package are an error."""
    found: dict[str, Path] = {}
    for wheel in sorted(directory.glob("*.whl")):
        name = canonical(parse_wheel_filename(wheel.name)[0])
        if name in found:
            raise SystemExit(f"two wheels of {name}: {found[name].name}, {wheel.name}")
        found[name] = wheel
    return found


def wheel_needs(wheel: Path) -> list[Requirement]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(member).decode())
    return [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]


def _applies(need: Requirement, extras: Iterable[str]) -> bool:
    marker = need.marker
    return marker is None or any(marker.evaluate({"extra": e}) for e in ("", *extras))


def needs_of(
    roots: list[Requirement], wheels: dict[str, Path]
) -> dict[str, list[tuple[str, Requirement]]]:
    """Every package the roots need, through the carried wheels' own needs: {name: [(who asks,
    requirement)]}. A package's needs are read from its carried wheel."""
    asked: dict[str, list[tuple[str, Requirement]]] = {}
    extras: dict[str, set[str]] = {}
    queue = [("requirements", r) for r in roots if _applies(r, ())]
    while queue:
        who, need = queue.pop()
        name = canonical(need.name)
        new_extras = set(need.extras) - extras.get(name, set())
        first = name not in asked
        asked.setdefault(name, []).append((who, need))
        extras.setdefault(name, set()).update(need.extras)
        if name in wheels and (first or new_extras):
            for sub in wheel_needs(wheels[name]):
                if _applies(sub, extras[name]):
                    queue.append((name, sub))
    return asked


def installed_version(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def _meets(version: Version | None, need: Requirement) -> bool:
    return version is not None and need.specifier.contains(version, prereleases=True)


def choose(wheels_dir: Path, requirements: list[Requirement]) -> Choice:
    wheels = carried_wheels(wheels_dir)
    choice = Choice()
    for name, asks in sorted(needs_of(requirements, wheels).items()):
        have = installed_version(name)
        unmet = [(who, r) for who, r in asks if not _meets(have, r)]
        if name in wheels and unmet:
            choice.install.append(wheels[name])
            carried = Version(str(parse_wheel_filename(wheels[name].name)[1]))
            wrong = [f"{who} asks {r}" for who, r in asks if not _meets(carried, r)]
            if wrong:
                choice.warnings.append(f"{name} {carried}, carried: " + "; ".join(wrong))
        elif unmet:
            said = "; ".join(f"{who} asks {r}" for who, r in unmet)
            choice.warnings.append(f"{name} {have or 'is not installed'}, not carried: {said}")
    return choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("wheels", type=Path)
    parser.add_argument("requirements", type=Path)
    args = parser.parse_args()
    lines = args.requirements.read_text().splitlines()
    roots = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    choice = choose(args.wheels, roots)
    for warning in choice.warnings:
        print(f"gpu_install: {warning}", file=sys.stderr)
    print("\n".join(str(path) for path in choice.install))


if __name__ == "__main__":
    main()
