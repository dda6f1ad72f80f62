"""The optional health listener (BATCHSERVE_HEALTH_PORT): the same probes as the main port,
answered by a thread of its own."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import free_port, live_server, settings_for, write_tiny_repository


def test_health_port_answers_live_and_ready_like_the_main_port(tmp_path: Path) -> None:
    port = free_port()
    settings = settings_for(write_tiny_repository(tmp_path / "repository"), health_port=port)
    with live_server(settings) as url:
        live = httpx.get(f"http://127.0.0.1:{port}/v2/health/live")
        ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready")
        main_ready = httpx.get(f"{url}/v2/health/ready")
        other = httpx.get(f"http://127.0.0.1:{port}/v1/models")
    assert live.status_code == 200 and live.json() == {"live": True}
    assert ready.status_code == 200 == main_ready.status_code and ready.json() == {"ready": True}
    assert other.status_code == 404 and "/v2/health/live" in other.json()["error"]


def test_health_port_is_not_ready_while_a_model_failed_to_load(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    weights = repository / "names-lm" / "1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    port = free_port()
    with live_server(settings_for(repository, health_port=port)):
        ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready")
        live = httpx.get(f"http://127.0.0.1:{port}/v2/health/live")
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert live.status_code == 200


def test_health_port_closes_with_the_server(tmp_path: Path) -> None:
    port = free_port()
    settings = settings_for(write_tiny_repository(tmp_path / "repository"), health_port=port)
    with live_server(settings):
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/live").status_code == 200
    try:
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)
    except httpx.ConnectError:
        return
    raise AssertionError("the health port still answers after shutdown")
