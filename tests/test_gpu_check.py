"""bench/gpu_check.sh where torch sees no CUDA device: it falls back to the CPU, runs every stage
and writes one table whose rows hold together; its Python load generator, and the wheels that
bench/gpu_wheels.sh carries to a CUDA machine. The numbers are read for consistency, never for
speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import gpu_deps, pyload, servers
from bench.bodies import SURNAMES, write_bodies
from bench.gpu_check import AGREEMENT_LIMIT, STATUSES

ROOT = Path(__file__).resolve().parents[1]
PLANTED = """
import pytest

def test_planted_pass():
    assert 1 + 1 == 2

@pytest.mark.skip(reason="planted")
def test_planted_skip():
    pass

def test_planted_failure():
    assert 1 + 1 == 3
"""


def _planted_suite(root: Path) -> Path:
    """A suite of one passing, one skipped and one failing test, and a module whose import is
    not installed: what the suite stage must tell apart."""
    root.mkdir()
    (root / "test_planted.py").write_text(PLANTED)
    (root / "test_needs_absent.py").write_text("import no_such_package_xyz\n\ndef test_x(): pass\n")
    return root


@pytest.fixture(scope="module")
def fallback(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    tmp = tmp_path_factory.mktemp("gpu-check")
    suite = _planted_suite(tmp / "suite")
    env = {**os.environ, "OUT": str(tmp / "out"), "PYTHON": sys.executable}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = ["bash", "bench/gpu_check.sh", "--quick", "--device", "cpu"]
    command += ["--suite-path", str(suite), "--workers", "2"]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, check=False
    )
    record = json.loads((tmp / "out" / "gpu_check.json").read_text())
    table = (tmp / "out" / "gpu_check.md").read_text()
    return done.returncode, record, table


def _rows(record: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    return [r for r in record["rows"] if r["stage"] == stage]


@pytest.mark.slow
def test_the_fallback_says_so_and_fails_only_on_the_planted_test(
    fallback: tuple[int, dict[str, Any], str],
) -> None:
    code, record, table = fallback
    assert record["device"] == "cpu" and record["fallback"] == "--device cpu"
    assert "FELL BACK TO THE CPU" in table.splitlines()[0]
    assert {r["status"] for r in record["rows"]} <= set(STATUSES)
    failed = [r for r in record["rows"] if r["status"] == "FAILED"]
    assert [(r["stage"], r["case"]) for r in failed] == [("suite", "pytest")]
    assert code == 1  # a FAILED row


@pytest.mark.slow
def test_the_suite_row_counts_the_planted_tests_and_names_what_was_not_collected(
    fallback: tuple[int, dict[str, Any], str],
) -> None:
    _, record, _ = fallback
    ran, not_collected = _rows(record, "suite")
    assert ran["value"] == 1 and ran["unit"] == "passed"
    assert "1 failed" in ran["notes"] and "1 skipped" in ran["notes"]
    assert "test_planted_failure" in ran["notes"] and "test_planted_pass" not in ran["notes"]
    assert not_collected["status"] == "skipped" and not_collected["value"] == 1
    assert "test_needs_absent.py (no no_such_package_xyz)" in not_collected["notes"]


@pytest.mark.slow
def test_model_only_rows_cover_each_model_and_batch_and_agree_with_their_timings(
    fallback: tuple[int, dict[str, Any], str],
) -> None:
    _, record, _ = fallback
    rows = _rows(record, "model")
    cases = {r["case"] for r in rows}
    assert cases == {f"{m} batch {n}" for m in ("mnist-mlp", "names-lm") for n in (1, 8, 64)}
    for raw in record["raw"]["model_only"]:
        assert raw["device"] == "cpu" and raw["items_per_s"] > 0
        implied = raw["batch_size"] / (raw["us_per_batch"] / 1e6)
        assert math.isclose(raw["items_per_s"], implied, rel_tol=1e-6)


@pytest.mark.slow
def test_end_to_end_rows_served_every_request_with_ordered_latencies(
    fallback: tuple[int, dict[str, Any], str],
) -> None:
    _, record, _ = fallback
    rows = {r["case"]: r for r in _rows(record, "e2e")}
    measured = [
        f"{c}: {e} c={n}"
        for c in ("pinned", "not pinned")
        for e in ("predict", "score")
        for n in (64, 256)
    ]
    assert all(rows[case]["status"] == "ok" and rows[case]["value"] > 0 for case in measured)
    for raw in record["raw"]["e2e"]:
        assert raw["requests"] > 0 and raw["non_2xx"] == 0 and raw["socket_errors"] == 0
        assert raw["rps"] == pytest.approx(raw["requests"] / raw["duration_s"])
        latency = raw["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    # Worker processes: measured where the server has them, else refused by name.
    workers = [r for case, r in rows.items() if case.startswith("2 workers:")]
    assert len(workers) == 4
    for row in workers:
        assert row["status"] == "ok" or (
            row["status"] == "unsupported" and "--workers" in row["notes"]
        ), row
    assert rows["compile: every row"]["status"] == "skipped"  # --quick


@pytest.mark.slow
def test_the_agreement_check_compares_every_token_of_two_real_servers(
    fallback: tuple[int, dict[str, Any], str],
) -> None:
    _, record, _ = fallback
    [row] = _rows(record, "agreement")
    assert row["status"] == "ok" and row["device"] == "cpu"
    assert 0 <= row["value"] <= AGREEMENT_LIMIT
    surnames = int(row["case"].rsplit(", ", 1)[1].split()[0])
    tokens = int(row["notes"].split(" tokens")[0].rsplit(" ", 1)[1])
    # Every surname: at least two letters and the end-of-sequence token.
    assert surnames == len(set(SURNAMES)) and tokens >= 3 * surnames


@pytest.mark.slow
def test_the_markdown_table_has_one_line_per_row_with_seven_cells(
    fallback: tuple[int, dict[str, Any], str],
) -> None:
    _, record, table = fallback
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0] == "| stage | case | device | status | value | unit | notes |"
    body = lines[2:]
    assert len(body) == len(record["rows"])
    for line, row in zip(body, record["rows"], strict=True):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 7
        assert cells[:4] == [row[k] for k in ("stage", "case", "device", "status")]


def test_the_python_load_generator_counts_answers_and_statuses(tmp_path: Path) -> None:
    bodies = write_bodies(tmp_path / "bodies")
    spec = servers.specs(servers.ROOT / "models" / "repository", "async", {})[0]
    server = servers.start(spec, tmp_path, None)
    try:
        good = pyload.run(
            server.base_url + "/v1/models/mnist-mlp/predict",
            bodies["predict"]["path"],
            8,
            1.0,
            processes=2,
        )
        # Surnames sent to the digit classifier: every answer is a 4xx, and counted as one.
        bad = pyload.run(
            server.base_url + "/v1/models/mnist-mlp/predict", bodies["score"]["path"], 4, 1.0
        )
    finally:
        servers.stop(server)
    assert good["requests"] > 0 and good["statuses"] == {200: good["requests"]}
    assert good["non_2xx"] == 0 and good["socket_errors"] == 0
    assert good["rps"] == pytest.approx(good["requests"] / good["duration_s"])
    assert 0 < good["latency_ms"]["p50"] <= good["latency_ms"]["p99"]
    assert bad["requests"] > 0 and bad["non_2xx"] == bad["requests"]
    assert set(bad["statuses"]) == {422}


def test_the_carried_wheels_leave_torch_behind_and_hold_what_the_server_imports() -> None:
    pins = {gpu_deps.canonical(p.split("==")[0]): p for p in gpu_deps.carried_pins()}
    assert "torch" not in pins and not any(n.startswith("nvidia-") for n in pins)
    needed = (
        "fastapi",
        "starlette",
        "pydantic",
        "pydantic-core",
        "pydantic-settings",
        "uvicorn",
        "opentelemetry-api",
        "grpcio-health-checking",
        "pytest-asyncio",
    )
    constraints = gpu_deps.constraints()
    for name in needed:
        assert pins[name] == constraints[name], name
    requirements = [
        r.split("[")[0].split("<")[0].split(">")[0].split("=")[0]
        for r in gpu_deps.device_requirements()
    ]
    assert "torch" not in requirements and "fastapi" in requirements


def test_the_fallback_is_taken_where_torch_sees_no_cuda() -> None:
    """Not a GPU test: on a machine with CUDA the check must not fall back."""
    from bench.gpu_check import parse_args, plan_for

    plan = plan_for(parse_args(["--load", "python"]))
    assert (plan.device == "cuda") == torch.cuda.is_available()
    assert (plan.fallback is None) == torch.cuda.is_available()
