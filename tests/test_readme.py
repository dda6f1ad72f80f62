"""The code blocks of the README and of the docs site's pages (docs/*.md), run as a user would run
them, so that neither can drift.

Each fenced block follows a marker line that says how it is tested:

    <!-- test: KIND [scenario=NAME] [server=shipped] [setup=NAME] [network] [slow] [...] -->

KIND is one of:
- `shell`: run with bash (`set -euo pipefail`); `curl` fails on an HTTP error status.
- `python`: run with this Python.
- `serve`: a one-line `batchserve serve ...` started in the background, on a free port
  (BATCHSERVE_PORT); the scenario's later blocks talk to it.
- `file`: written to `path=...` in the scenario's directory (a `config.json` must also load).
- `skip`: not run here; `reason="..."` says why (Docker, a GPU, a fresh venv).

Blocks with the same `scenario` in one file run in that file's order in one scratch directory; any
other block runs alone. `localhost:8000` and `127.0.0.1:8000` in a block are rewritten to the
scenario's server: the one its `serve` block started, the bundled models (`server=shipped`), or
one from a `setup` below; `localhost:8001` to the bundled models' gRPC listener (`server=shipped`).
`train-args="..."` is appended to each `batchserve train RECIPE` (tiny settings). `network` and
`slow` mark the scenario's test. A block without a marker fails
`test_every_block_says_how_it_is_tested`, and so does a fence that is indented (inside a list or
an admonition), which this reader would not see.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from models.checkpoint import ModelConfig
from tests.conftest import SHIPPED, free_port, live_server, settings_for

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_BUDGET_LINES = 300  # a front door; the reference is the docs site
KINDS = {"shell", "python", "serve", "file", "skip"}
SHELLS = {"sh", "bash", "shell"}
MARKER = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(.*)$")
INDENTED_FENCE = re.compile(r"^\s+```")
ADDRESS = re.compile(r"(localhost|127\.0\.0\.1):8000")
GRPC_ADDRESS = re.compile(r"(localhost|127\.0\.0\.1):8001")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    page: str  # README.md or docs/NAME.md
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    kind: str | None  # None: no marker
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def scenario(self) -> str:
        """The test's name: the page's name (README for the README) and the scenario's."""
        page = Path(self.page).stem
        return f"{page}:{self.attrs.get('scenario', f'line-{self.line}')}"

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _marker(line: str) -> tuple[str | None, dict[str, str]]:
    found = MARKER.match(line.strip())
    if not found:
        return None, {}
    kind, *rest = shlex.split(found.group(1)) or [""]
    pairs = [item.partition("=") for item in rest]
    return kind, {key: value if sep else "true" for key, sep, value in pairs}


def read_blocks(text: str, page: str = "README.md") -> list[Block]:
    """Every fenced block of a page with the marker on the last non-blank line before it."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        kind, attrs = _marker(previous)
        body = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(page, i + 1, opening.group(1).strip(), body, kind, attrs))
        i = end + 1
    return blocks


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


BLOCKS = [b for path in PAGES for b in read_blocks(path.read_text(encoding="utf-8"), _name(path))]


def _scenarios() -> dict[str, list[Block]]:
    scenarios: dict[str, list[Block]] = {}
    for block in BLOCKS:
        if block.kind in KINDS - {"skip"}:
            scenarios.setdefault(block.scenario, []).append(block)
    return scenarios


SCENARIOS = _scenarios()


# --------------------------------------------------------------------------- the pages' rules


def test_every_block_says_how_it_is_tested() -> None:
    unmarked = [f"{b.where} ({b.language or 'no language'})" for b in BLOCKS if not b.kind]
    unknown = [f"{b.where}: {b.kind}" for b in BLOCKS if b.kind and b.kind not in KINDS]
    assert not unmarked, "put <!-- test: ... --> before these blocks: " + ", ".join(unmarked)
    assert not unknown, f"unknown test kinds (known: {sorted(KINDS)}): " + ", ".join(unknown)
    indented = [
        f"{_name(path)}:{number}"
        for path in PAGES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if INDENTED_FENCE.match(line)
    ]
    assert not indented, "an indented code block is never run; unindent it: " + ", ".join(indented)


def test_the_readme_stays_within_its_budget() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_BUDGET_LINES, (
        f"README.md has {lines} lines, over its budget of {README_BUDGET_LINES}: move the detail "
        "into a page of docs/ and link it"
    )


def test_the_readmes_links_into_the_repository_lead_somewhere() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if "://" not in link and not link.startswith("#")]
    assert sum(link.startswith("docs/") for link in local) >= 8  # the front door to the reference
    missing = [link for link in local if not (ROOT / link.partition("#")[0]).exists()]
    assert missing == []
    for link in local:
        target, _, anchor = link.partition("#")
        if anchor:  # the heading it names, as MkDocs and GitHub spell the id
            headings = re.findall(r"^#+ (.+)$", (ROOT / target).read_text(), re.MULTILINE)
            ids = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in ids, f"{link}: no heading for #{anchor}"


def test_each_marker_fits_its_block() -> None:
    wrong = []
    for b in BLOCKS:
        if b.kind == "skip" and not b.attrs.get("reason"):
            wrong.append(f'{b.where}: a skipped block needs reason="..."')
        if b.kind in {"shell", "serve"} and b.language not in SHELLS:
            wrong.append(f"{b.where}: a {b.kind} block in {b.language!r}, not sh")
        if b.kind == "python" and b.language != "python":
            wrong.append(f"{b.where}: a python block in {b.language!r}")
        if b.kind == "file" and "path" not in b.attrs:
            wrong.append(f"{b.where}: a file block needs path=...")
        if b.kind == "serve" and len(b.text.strip().splitlines()) != 1:
            wrong.append(f"{b.where}: a serve block is one command")
    assert not wrong, "; ".join(wrong)


def test_the_pages_have_runnable_blocks_for_each_way_in() -> None:
    # The finder must keep finding them; an emptied or renamed section would otherwise pass.
    own_model = {"own-model:own-data", "own-model:bundled", "own-model:keras", "own-model:torch"}
    assert own_model | {"own-model:by-hand", "README:own-model"} <= set(SCENARIOS)
    readme = [b for b in BLOCKS if b.page == "README.md"]
    assert sum(b.kind == "shell" and b.attrs.get("server") == "shipped" for b in readme) >= 2
    pages = {b.page for b in BLOCKS if b.kind in KINDS - {"skip"}}
    assert {"docs/protocols.md", "docs/own-model.md", "docs/deploying.md"} <= pages


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if b.kind == "file" and b.attrs["path"].endswith("config.json")],
    ids=lambda b: b.where,
)
def test_a_config_example_loads_as_printed(block: Block) -> None:
    config = ModelConfig.model_validate_json(block.text)
    assert Path(block.attrs["path"]).parent.parent.name == config.name  # name = directory name


# --------------------------------------------------------------------------- running the blocks

Setup = Callable[[Path], tuple[dict[str, str], Settings]]


def _live_update(workspace: Path) -> tuple[dict[str, str], Settings]:
    """A copy of the bundled repository at ./models/repository, a checkpoint to copy in, and a
    server over it with the admin API on."""
    repository = workspace / "models" / "repository"
    shutil.copytree(SHIPPED, repository)
    shutil.copytree(SHIPPED / "names-rnn" / "1", workspace / "my-new-checkpoint")
    key = "readme-admin-key"
    return {"ADMIN_KEY": key}, settings_for(repository, admin_api_key=key)


SETUPS: dict[str, Setup] = {"live-update": _live_update}


def _environment(tmp_path: Path) -> dict[str, str]:
    """This environment without BATCHSERVE_* settings, and a `curl` that fails on HTTP errors."""
    shim = tmp_path / "bin"
    shim.mkdir()
    real = shutil.which("curl")
    assert real, "the README's examples need curl"
    (shim / "curl").write_text(f'#!/bin/sh\n"{real}" --fail-with-body "$@" || exit $?\necho\n')
    (shim / "curl").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k.upper() not in _setting_variables()}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([str(shim), venv_bin, env.get("PATH", "")])
    env.pop("PORT", None)
    return env


def _setting_variables() -> set[str]:
    return {f"BATCHSERVE_{name.upper()}" for name in Settings.model_fields}


def _with_server(text: str, url: str | None, grpc: str | None, block: Block) -> str:
    if ADDRESS.search(text) and url is None:
        raise AssertionError(f"{block.where} talks to localhost:8000 but has no server")
    if GRPC_ADDRESS.search(text) and grpc is None:
        raise AssertionError(f"{block.where} talks gRPC to localhost:8001 but has none")
    text = GRPC_ADDRESS.sub(grpc, text) if grpc else text
    return ADDRESS.sub(url.removeprefix("http://"), text) if url else text


def _run(argv: list[str], block: Block, workspace: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        argv, cwd=workspace, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert result.returncode == 0, (
        f"{block.where} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


@contextmanager
def _serve(block: Block, workspace: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    log = workspace / f"serve-{block.line}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", "-c", "exec " + block.text.strip()], cwd=workspace,
            env={**env, "BATCHSERVE_PORT": str(port)}, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{block.where} did not start serving:\n{tail}")
            time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _write_file(block: Block, workspace: Path) -> None:
    path = workspace / block.attrs["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text, encoding="utf-8")
    if path.name == "config.json":
        config = ModelConfig.model_validate_json(block.text)
        assert path.parent.parent.name == config.name


def _marks(blocks: list[Block]) -> list[pytest.MarkDecorator]:
    marks = []
    if any("network" in b.attrs for b in blocks):
        marks.append(pytest.mark.network)
    if any("slow" in b.attrs for b in blocks):
        marks.append(pytest.mark.slow)
    return marks


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=_marks(bs), id=n) for n, bs in SCENARIOS.items()]
)
def test_page_scenario(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks = SCENARIOS[name]
    workspace = tmp_path / "work"
    workspace.mkdir()
    env = _environment(tmp_path)
    with ExitStack() as stack:
        url = grpc = None
        setup = blocks[0].attrs.get("setup")
        if setup:
            extra, settings = SETUPS[setup](workspace)
            env.update(extra)
            url = stack.enter_context(live_server(settings))
        for block in blocks:
            if block.attrs.get("server") == "shipped":
                url = request.getfixturevalue("shipped_server")
                grpc = request.getfixturevalue("shipped_grpc")
            text = _with_server(block.text, url, grpc, block)
            if "train-args" in block.attrs:
                text = re.sub(r"(batchserve train \S+)", rf"\1 {block.attrs['train-args']}", text)
            if block.kind == "shell":
                _run(["bash", "-euo", "pipefail", "-c", text], block, workspace, env)
            elif block.kind == "python":
                _run([sys.executable, "-c", text], block, workspace, env)
            elif block.kind == "serve":
                url = stack.enter_context(_serve(block, workspace, env))
            elif block.kind == "file":
                _write_file(block, workspace)


def test_json_in_shell_blocks_is_valid() -> None:
    # The -d '{...}' bodies a reader copies: a typo there fails with a 400 only at run time.
    bodies = [
        (b.where, body)
        for b in BLOCKS
        if b.kind == "shell"
        for body in re.findall(r"-d '(\{.*?\})'", b.text)
    ]
    assert bodies
    for line, body in bodies:
        try:
            json.loads(body)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{line}: {body}: {exc}") from None
