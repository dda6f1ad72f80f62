"""API keys as operators really set them: from a secrets file (a trailing newline), with stray
spaces, or blank by mistake; and tokens as clients really send them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, live_server, settings_for, write_tiny_repository

KEY = "user-key-1"
ADMIN_KEY = "admin-key-1"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCHSERVE_API_KEYS", " , "),
        ("BATCHSERVE_API_KEYS", ""),
        ("BATCHSERVE_API_KEYS", ","),
        ("BATCHSERVE_API_KEYS", "good-key,,other"),
        ("BATCHSERVE_API_KEYS", "good-key, \t"),
        ("BATCHSERVE_ADMIN_API_KEY", ""),
        ("BATCHSERVE_ADMIN_API_KEY", " \n"),
        ("BATCHSERVE_ADMIN_API_KEY", "\t"),
    ],
)
def test_a_blank_key_stops_the_server_naming_the_variable(variable: str, value: str) -> None:
    env = {**os.environ, variable: value, "BATCHSERVE_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr and "blank" in result.stderr


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("keys") / "repository")
    # As read from secrets files and a hand-edited variable: whitespace around the keys.
    settings = settings_for(
        repository, api_keys=f"  {KEY}\n, other-key\t", admin_api_key=f"{ADMIN_KEY}\n"
    )
    with live_server(settings) as base:
        yield base


@pytest.mark.parametrize(
    "authorization",
    # (Whitespace at the end of a header value never reaches the server: HTTP strips it.)
    [f"Bearer {KEY}", f"bearer {KEY}", f"Bearer  {KEY}", f"Bearer \t{KEY}", "Bearer other-key"],
)
def test_keys_and_tokens_are_trimmed_of_ascii_whitespace_alike(
    url: str, authorization: str
) -> None:
    response = httpx.get(f"{url}/v1/models", headers={"Authorization": authorization})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {KEY}\u00a0",  # a no-break space is part of the token, not padding
        f"Bearer \u00a0{KEY}",
        f"Bearer {KEY}\u2003",
        f"Bearer {KEY[:-1]}",
        f"Basic {KEY}",
        "Bearer",
        KEY,
    ],
)
def test_anything_but_the_exact_key_is_a_401(url: str, authorization: str) -> None:
    # As raw bytes: ISO 8859-1 where it can be (a no-break space is the single byte 0xA0).
    raw = authorization.encode("latin-1") if max(map(ord, authorization)) < 256 else None
    headers = {b"Authorization": raw or authorization.encode()}
    response = httpx.get(f"{url}/v1/models", headers=headers)
    assert response.status_code == 401


def test_an_admin_key_from_a_secrets_file_with_a_newline_matches(url: str) -> None:
    response = httpx.post(
        f"{url}/v2/repository/index", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert response.status_code == 200


def test_the_start_up_log_says_which_doors_are_open_and_never_the_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    settings = settings_for(repository, api_keys=KEY, admin_api_key=ADMIN_KEY)
    with caplog.at_level(logging.INFO), live_server(settings):
        pass
    lines = [r.getMessage() for r in caplog.records]
    (doors,) = [line for line in lines if "user auth" in line]
    assert "user auth on" in doors and "admin API on" in doors
    assert not any(KEY in line or ADMIN_KEY in line for line in lines)
