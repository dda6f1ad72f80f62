"""The model repository as a careless operator (or an attacker with write access to it) leaves it:
directories that look like versions and are not, symbolic links out of it, a root that vanishes,
failed loads that must not show server paths; and readiness when one model fails."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, live_server, settings_for, write_tiny_repository

ADMIN_KEY = "safety-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NOT_VERSIONS = [
    "\u00b2",
    "\u2460",
    "\u0661",
    "\u0663",
    "00001",
    "01",
    "+2",
    "-3",
    "1.0",
    "2 ",
    "1e3",
    "9" * 19,
]


def _index(url: str) -> dict[tuple[str, str], dict[str, str]]:
    rows = httpx.post(f"{url}/v2/repository/index", headers=ADMIN).json()
    return {(r["name"], r["version"]): r for r in rows}


def test_directories_that_are_not_canonical_versions_are_listed_invalid_and_never_served(
    tmp_path: Path,
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    for name in NOT_VERSIONS:  # each a loadable copy of version 1: only its name is wrong
        shutil.copytree(repository / "mnist-mlp" / "1", repository / "mnist-mlp" / name)
    with live_server(settings_for(repository, admin_api_key=ADMIN_KEY)) as url:
        listed = httpx.get(f"{url}/v1/models").json()["models"]
        loaded = httpx.post(f"{url}/v2/repository/models/mnist-mlp/load", headers=ADMIN)
        index = _index(url)
        by_version = httpx.get(f"{url}/v1/models/mnist-mlp/versions/00001")
        ready = httpx.get(f"{url}/v2/health/ready")
    mnist = next(m for m in listed if m["name"] == "mnist-mlp")
    assert mnist["versions"] == ["1"] and mnist["default_version"] == "1"
    assert loaded.status_code == 200 and loaded.json()["versions"] == ["1"]
    for name in NOT_VERSIONS:
        assert "not a version directory" in index["mnist-mlp", name]["reason"], name
        assert index["mnist-mlp", name]["state"] == "unavailable"
    assert by_version.status_code == 404
    assert ready.status_code == 200


def test_a_model_with_only_invalid_version_directories_does_not_stop_the_server(
    tmp_path: Path,
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    (repository / "names-rnn" / "1").rename(repository / "names-rnn" / "²")
    with live_server(settings_for(repository)) as url:
        names = [m["name"] for m in httpx.get(f"{url}/v1/models").json()["models"]]
        served = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": ["Kim"]})
    assert names == ["mnist-mlp", "names-lm"] and served.status_code == 200


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A trained-looking model directory outside the repository."""
    elsewhere = write_tiny_repository(tmp_path / "elsewhere", seed=3)
    return elsewhere / "names-rnn"


def _link_model(repository: Path, outside: Path) -> str:
    shutil.rmtree(repository / "names-rnn")
    (repository / "names-rnn").symlink_to(outside, target_is_directory=True)
    return "names-rnn/1"


def _link_version(repository: Path, outside: Path) -> str:
    (repository / "names-rnn" / "2").symlink_to(outside / "1", target_is_directory=True)
    return "names-rnn/2"


def _link_weights(repository: Path, outside: Path) -> str:
    weights = repository / "names-rnn" / "1" / "model.safetensors"
    weights.unlink()
    weights.symlink_to(outside / "1" / "model.safetensors")
    return "names-rnn/1/model.safetensors"


@pytest.mark.parametrize(
    "link", [_link_model, _link_version, _link_weights], ids=["model", "version", "weights"]
)
def test_symlinks_out_of_the_repository_are_refused_with_a_reason(
    tmp_path: Path, outside: Path, link: object
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    shown = link(repository, outside)  # type: ignore[operator]
    # A symbolic link that stays inside the repository is fine.
    (repository / "names-lm" / "2").symlink_to("1", target_is_directory=True)
    with live_server(settings_for(repository, admin_api_key=ADMIN_KEY)) as url:
        index = _index(url)
        served = httpx.post(f"{url}/v1/models/names-lm/score", json={"inputs": ["Kim"]})
    refused = [r for r in index.values() if "symbolic link" in r["reason"]]
    assert len(refused) == 1 and refused[0]["state"] == "failed"
    assert (
        shown in refused[0]["reason"]
        and "BATCHSERVE_FOLLOW_EXTERNAL_SYMLINKS" in (refused[0]["reason"])
    )
    assert str(tmp_path) not in refused[0]["reason"]
    assert served.status_code == 200 and served.json()["version"] == "2"


def test_symlinks_out_of_the_repository_serve_when_the_operator_allows_them(
    tmp_path: Path, outside: Path
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    _link_model(repository, outside)
    settings = settings_for(repository, follow_external_symlinks=True)
    with live_server(settings) as url:
        answer = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": ["Kim"]})
    assert answer.status_code == 200


def test_failed_load_reasons_name_repository_paths_not_server_paths(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    (repository / "names-rnn" / "1" / "config.json").write_text("{not json")
    (repository / "names-lm" / "model.json").write_text('{"version_policy": {"none": {}}}')
    with live_server(settings_for(repository, admin_api_key=ADMIN_KEY)) as url:
        metadata = httpx.get(f"{url}/v1/models/names-rnn").json()
        index = _index(url)
        load = httpx.post(f"{url}/v2/repository/models/names-lm/load", headers=ADMIN).json()
    answers = [metadata["reason"], index["names-rnn", "1"]["reason"], load["error"]]
    assert "names-rnn/1/config.json is invalid" in answers[0]
    assert "names-lm/model.json is invalid" in answers[2]
    for answer in answers:
        assert str(tmp_path) not in answer and "/repository/" not in answer, answer


def test_a_vanished_repository_root_is_a_clear_503_and_loaded_models_keep_serving(
    tmp_path: Path,
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    with live_server(settings_for(repository, admin_api_key=ADMIN_KEY)) as url:
        repository.rename(tmp_path / "moved")
        index = httpx.post(f"{url}/v2/repository/index", headers=ADMIN)
        load = httpx.post(f"{url}/v2/repository/models/names-rnn/load", headers=ADMIN)
        served = httpx.post(f"{url}/v1/models/names-rnn/predict", json={"inputs": ["Kim"]})
        ready = httpx.get(f"{url}/v2/health/ready")
    assert index.status_code == 503 and index.json()["code"] == "repository_unavailable"
    assert load.status_code in (400, 404, 503) and load.status_code != 500
    assert served.status_code == 200 and ready.status_code == 200


# -- readiness with a failed model --------------------------------------------------------------


def _break(repository: Path, name: str) -> None:
    weights = repository / name / "1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non-strict"])
def test_readiness_with_a_failed_model_follows_the_readiness_setting(
    tmp_path: Path, strict: bool
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    _break(repository, "names-lm")
    port = free_port()
    settings = settings_for(repository, health_port=port, strict_readiness=strict)
    with live_server(settings) as url:
        main = httpx.get(f"{url}/v2/health/ready")
        probe = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready")
        failed = httpx.get(f"{url}/v2/models/names-lm/ready")
        fine = httpx.get(f"{url}/v2/models/names-rnn/ready")
    expected = 503 if strict else 200
    assert main.status_code == probe.status_code == expected
    assert failed.status_code == 400 and fine.status_code == 200


def test_no_model_ready_is_not_ready_even_when_not_strict(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    for name in ("mnist-mlp", "names-rnn", "names-lm"):
        _break(repository, name)
    with live_server(settings_for(repository, strict_readiness=False)) as url:
        ready = httpx.get(f"{url}/v2/health/ready")
    assert ready.status_code == 503 and "names-lm" in ready.json()["error"]


def test_start_up_log_lists_only_served_models_and_failed_ones_at_error_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    _break(repository, "names-lm")
    _break(repository, "names-rnn")
    with caplog.at_level(logging.INFO, logger="batchserve"), live_server(settings_for(repository)):
        pass
    serving = [r.getMessage() for r in caplog.records if "serving models" in r.getMessage()]
    assert serving == ["serving models: mnist-mlp"]
    errors = {r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR}
    assert any("names-lm" in m for m in errors) and any("names-rnn" in m for m in errors)
    auth = [r.getMessage() for r in caplog.records if "user auth" in r.getMessage()]
    assert auth and "OFF" in auth[0] and "admin API off" in auth[0]
