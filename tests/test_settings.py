"""Settings: read from BATCHSERVE_* variables, nonsense refused at start-up, all documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings

SETTINGS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCHSERVE_MAX_BATCH_SIZE", "0"),
        ("BATCHSERVE_DEVICE", "gpu0"),
        ("BATCHSERVE_PORT", "99999"),
        ("BATCHSERVE_MODEL_REPOSITORY", "/nonexistent/repository"),
        ("BATCHSERVE_MAX_BATCH_DELAY_MS", "soon"),
    ],
)
def test_a_nonsense_setting_stops_the_server_naming_the_variable(variable: str, value: str) -> None:
    env = {**os.environ, variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert variable in result.stderr


def test_api_keys_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSERVE_API_KEYS", " alpha, beta\n")
    keys = [k.get_secret_value() for k in Settings().api_keys]
    assert keys == ["alpha", "beta"]


def test_secrets_never_appear_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSERVE_API_KEYS", "s3cret-key")
    monkeypatch.setenv("BATCHSERVE_ADMIN_API_KEY", "adm1n-key")
    text = repr(Settings())
    assert "s3cret-key" not in text and "adm1n-key" not in text


def test_the_server_binds_to_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHSERVE_HOST", raising=False)
    assert Settings().host == "127.0.0.1"


def test_every_setting_is_in_the_settings_page() -> None:
    page = SETTINGS_PAGE.read_text()
    missing = [n for n in Settings.model_fields if f"| `BATCHSERVE_{n.upper()}` |" not in page]
    assert missing == []
