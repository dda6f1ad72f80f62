"""BATCHSERVE_COMPILE=true needs a C++ toolchain (torch.compile's inductor builds C++ kernels):
without one the server refuses to start and says so, rather than never turning ready."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from app.settings import Settings


def _serve(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_compile_without_a_compiler_stops_the_server_at_start_naming_the_setting() -> None:
    # inductor looks for $CXX (else g++): a name that is no program stands for a bare image.
    done = _serve(BATCHSERVE_COMPILE="true", CXX="no-such-c++-compiler")
    assert done.returncode == 2
    assert "BATCHSERVE_COMPILE" in done.stderr
    assert "no C++ compiler found" in done.stderr


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on this machine")
def test_compile_is_accepted_where_the_toolchain_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSERVE_COMPILE", "true")
    monkeypatch.delenv("CXX", raising=False)
    assert Settings().compile is True
