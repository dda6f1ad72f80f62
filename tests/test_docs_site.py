"""The documentation site (mkdocs.yml, docs/): it builds with `--strict`, so that a broken link or
anchor fails; every page is in its navigation; the settings page is the one generated from
`Settings`; and what the pages claim about the `models` package and the image holds.
(Its code blocks run in tests/test_readme.py, with the README's.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS = Path(sys.executable).with_name("mkdocs")
GENERATOR = DOCS / "gen_settings.py"

needs_mkdocs = pytest.mark.skipif(
    not MKDOCS.exists(), reason="mkdocs is in the docs extra: pip install -e '.[docs]'"
)


def _build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(site)],
        cwd=project, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip


def _nav_pages(nav: list[Any]) -> set[str]:
    pages: set[str] = set()
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def _copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", project)
    shutil.copytree(DOCS, project / "docs")
    (project / "bench").mkdir()
    for name in ("README.md", "RESULTS.md"):  # included by docs/bench-*.md
        shutil.copy(ROOT / "bench" / name, project / "bench")
    return project


@needs_mkdocs
def test_the_site_builds_with_no_broken_link(tmp_path: Path) -> None:
    result = _build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "settings" / "index.html").is_file()
    results = (tmp_path / "site" / "bench-results" / "index.html").read_text()
    assert "batchserve benchmark" in results  # bench/RESULTS.md, included


@needs_mkdocs
@pytest.mark.parametrize(
    ("page", "link"),
    [("limits.md", "[gone](no-such-page.md)"), ("install.md", "[gone](protocols.md#no-such)")],
)
def test_a_broken_link_or_anchor_fails_the_build(tmp_path: Path, page: str, link: str) -> None:
    project = _copy_project(tmp_path)
    with (project / "docs" / page).open("a", encoding="utf-8") as f:
        f.write(f"\nSee {link}.\n")
    result = _build(project, tmp_path / "site")
    assert result.returncode != 0
    assert link.split("(")[1].rstrip(")").split("#")[-1] in result.stderr


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = {p.name for p in DOCS.glob("*.md")}
    listed = _nav_pages(config["nav"])
    assert listed == pages
    assert "families.md" in listed  # docs/families.md: the model families page


def test_the_settings_page_is_what_the_generator_writes() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    page = (DOCS / "settings.md").read_text()
    for name, info in Settings.model_fields.items():
        start = f"| `BATCHSERVE_{name.upper()}` |"
        row = next(line for line in page.splitlines() if line.startswith(start))
        assert (info.description or "").split(";")[0].replace("<", "&lt;") in row


def test_the_settings_check_notices_a_stale_page(tmp_path: Path) -> None:
    page = (DOCS / "settings.md").read_text()
    stale = "\n".join(line for line in page.splitlines() if "BATCHSERVE_MAX_TOP_K" not in line)
    script = (
        "import runpy, sys; from pathlib import Path\n"
        f"namespace = runpy.run_path({str(GENERATOR)!r})\n"
        f"sys.exit(0 if namespace['render']({stale!r}) != {stale!r} else 1)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_a_models_py_beside_a_script_fails_as_the_docs_say_and_a_package_avoids_it(
    tmp_path: Path,
) -> None:
    documented = re.search(r"`(ModuleNotFoundError: [^`]+)`", (DOCS / "own-model.md").read_text())
    assert documented
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    (tmp_path / "models.py").write_text("class Net: ...\n")
    (tmp_path / "save.py").write_text("from models.checkpoint import save_checkpoint\n")
    shadowed = subprocess.run([sys.executable, "save.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert shadowed.returncode == 1
    assert shadowed.stderr.strip().splitlines()[-1] == documented.group(1)
    # The way round it that the page gives: your models.py inside your own package, run with -m.
    package = tmp_path / "elsewhere" / "myproject"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text("class Net: ...\n")
    (package / "save.py").write_text(
        "from myproject.models import Net\n"
        "from models.checkpoint import save_checkpoint\n"
        "print(Net.__module__, save_checkpoint.__module__)\n"
    )
    run = subprocess.run([sys.executable, "-m", "myproject.save"], cwd=package.parent, env=env,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["myproject.models", "models.checkpoint"]


def test_the_base_image_digest_the_docs_give_is_the_dockerfiles() -> None:
    pinned = re.search(r"^ARG BASE_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert pinned
    quoted = re.findall(
        r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", (DOCS / "deploying.md").read_text()
    )
    assert quoted and set(quoted) == {pinned.group(1)}
