"""/docs and /redoc render their operations in a real headless browser that can reach nothing but
loopback: every other request goes to a proxy that records it and answers nothing."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import live_server, settings_for, write_tiny_repository

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# What the pages themselves would fetch from the internet; the browser's own background calls
# (update and time checks to google.com) also reach the proxy and are not the page's doing.
PAGE_ASSETS_ONLINE = re.compile(r"swagger|redoc|jsdelivr|unpkg|cdnjs|fonts\.g", re.IGNORECASE)


@pytest.fixture(scope="module")
def browser() -> str:
    path = next((p for p in map(shutil.which, BROWSERS) if p), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("repository"))
    with live_server(settings_for(repository)) as url:
        yield url


class DeadProxy:
    """A proxy that records the first line of each request and closes: the internet, unreachable."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.requests.append(conn.recv(512).split(b"\r\n")[0].decode("latin-1"))
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dead_proxy() -> Iterator[DeadProxy]:
    proxy = DeadProxy()
    yield proxy
    proxy.close()


def render(browser: str, url: str, proxy: DeadProxy, profile: Path) -> str:
    """The DOM after the page's scripts ran, with loopback the only reachable network."""
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # Loopback bypasses a proxy implicitly; all else, host names and IP literals, goes to it.
        f"--proxy-server=http://127.0.0.1:{proxy.port}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_proxy_catches_every_non_loopback_request(
    browser: str, dead_proxy: DeadProxy, tmp_path: Path
) -> None:
    # The guard for the tests below: a page that asks the internet is seen asking.
    page = tmp_path / "online.html"
    page.write_text(
        '<script src="https://cdn.jsdelivr.net/npm/x.js"></script><img src="http://10.1.2.3/a.png">'
    )
    render(browser, page.as_uri(), dead_proxy, tmp_path / "profile")
    asked = " ".join(dead_proxy.requests)
    assert "cdn.jsdelivr.net:443" in asked
    assert "http://10.1.2.3/a.png" in asked


def test_swagger_ui_renders_the_operations_offline(
    browser: str, server: str, dead_proxy: DeadProxy, tmp_path: Path
) -> None:
    dom = render(browser, f"{server}/docs", dead_proxy, tmp_path / "profile")
    paths = re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom)
    assert "/v1/models/{name}/predict" in paths
    assert "/v1/models/{name}/score" in paths
    assert "/v2/models/{name}/infer" in paths
    assert 'class="opblock opblock-post' in dom
    assert not [r for r in dead_proxy.requests if PAGE_ASSETS_ONLINE.search(r)]


def test_redoc_renders_the_operations_offline(
    browser: str, server: str, dead_proxy: DeadProxy, tmp_path: Path
) -> None:
    dom = render(browser, f"{server}/redoc", dead_proxy, tmp_path / "profile")
    operations = re.findall(r'id="tag/[^/"]+/operation/([^"]+)"', dom)
    assert any(op.startswith("predict_v1_models__name__predict") for op in operations)
    assert any(op.startswith("score_v1_models__name__score") for op in operations)
    assert "/v1/models/{name}/predict" in dom
    # Redoc's Redocly logo comes from its CDN; the pages' Content-Security-Policy stops it.
    assert not [r for r in dead_proxy.requests if PAGE_ASSETS_ONLINE.search(r)]


def test_docs_pages_reference_only_their_own_origin(server: str) -> None:
    for page in ("/docs", "/redoc"):
        response = httpx.get(f"{server}{page}")
        assert response.status_code == 200
        assert not re.findall(r'(?:src|href)="(?:https?:)?//', response.text)
        assert "default-src 'self'" in response.headers["content-security-policy"]
    assert httpx.get(f"{server}/static/docs/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(f"{server}/static/docs/redoc.standalone.js").status_code == 200
