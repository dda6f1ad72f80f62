"""Schemathesis against the live server's own /openapi.json: every operation, generated valid and
invalid inputs, a fixed seed. No 5xx (but the documented 503s of a model that is not ready), and
every response matches the documented status codes, content types and schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from tests.conftest import live_server, settings_for, write_tiny_repository

pytestmark = pytest.mark.slow

ADMIN_KEY = "fuzz-admin-key"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Schema-valid bodies may still be refused by the model (a 784-float image sent to the surname
# classifier), so "schema-valid data must be accepted" does not hold for this API.
EXCLUDED_CHECKS = "positive_data_acceptance"


def _fuzz(
    url: str, report: Path, *selection: str, examples: int
) -> subprocess.CompletedProcess[str]:
    command = [
        str(SCHEMATHESIS), "run", f"{url}/openapi.json",
        "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS,
        "--max-examples", str(examples), "--seed", "20261128",
        "--phases", "examples,coverage,fuzzing", "--no-shrink", "--workers", "1",
        "--header", f"Authorization: Bearer {ADMIN_KEY}",
        # A deadline shorter than one batch is a 504 by design (deadline_too_short), which
        # schemathesis counts as a server error: every case gets a deadline of 10 minutes.
        "--header", "X-Request-Timeout-Ms: 600000",
        "--report", "junit", "--report-junit-path", str(report),
        *selection,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return write_tiny_repository(tmp_path / "repository")


def _operations(url: str) -> set[str]:
    """Every operation the live server documents, as schemathesis names them."""
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    return {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}


def _tested(report: Path) -> set[str]:
    """The operations schemathesis ran cases against, from its JUnit report."""
    root = ElementTree.parse(report).getroot()
    return {case.attrib["name"] for case in root.iter("testcase")}


def test_inference_and_metadata_operations_survive_fuzzing(
    repository: Path, tmp_path: Path
) -> None:
    # Unload is fuzzed on its own server below: here it would make every later call a 503.
    settings = settings_for(repository, admin_api_key=ADMIN_KEY, max_items_per_request=16)
    report = tmp_path / "junit.xml"
    with live_server(settings) as url:
        result = _fuzz(url, report, "--exclude-path-regex", "/unload$", examples=60)
        documented = _operations(url)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    unload = "POST /v2/repository/models/{name}/unload"
    assert _tested(report) == documented - {unload}


def test_repository_control_operations_survive_fuzzing(repository: Path, tmp_path: Path) -> None:
    settings = settings_for(repository, admin_api_key=ADMIN_KEY)
    report = tmp_path / "junit.xml"
    with live_server(settings) as url:
        result = _fuzz(url, report, "--include-path-regex", "^/v2/repository", examples=40)
        documented = _operations(url)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert _tested(report) == {op for op in documented if " /v2/repository/" in op}
