"""Service settings: one class, read from `BATCHSERVE_*` variables, checked at start-up."""

from __future__ import annotations

import re
import subprocess
import sysconfig
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import models

DEFAULT_REPOSITORY = Path(models.__file__).resolve().parent / "repository"
# Keys and the tokens clients present are trimmed of these only: a no-break space (U+00A0) or
# any other Unicode space is part of the key.
ASCII_WHITESPACE = " \t\r\n\v\f"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


class Settings(BaseSettings):
    """Each field is read from `BATCHSERVE_<FIELD>`; a nonsense value stops the server at start."""

    model_config = SettingsConfigDict(env_prefix="BATCHSERVE_", extra="forbid")

    model_repository: Path = Field(
        DEFAULT_REPOSITORY,
        description="Directory holding <name>/<version>/{config.json,model.safetensors}.",
    )
    device: str = Field(
        "auto", description="Where models run: auto (CUDA when available), cpu, cuda or cuda:N."
    )
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 only inside a container.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="Server processes sharing the port, each loading its own copy of the models; "
        "above 1 a supervisor starts them, replaces dead ones and sums their metrics.",
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also serve /v2/health/live and /ready on this port, from a thread of their "
        "own, so probes stay prompt when the main port is flooded; unset = off.",
    )
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also serve the Open Inference Protocol over gRPC (Triton's "
        "inference.GRPCInferenceService, and grpc.health.v1) on this port; unset = off.",
    )
    max_batch_size: int = Field(
        256,
        ge=1,
        le=65536,
        description="Most items in one forward pass (a deep queue under overload drains faster).",
    )
    max_batch_delay_ms: float = Field(
        2.0, ge=0, le=10_000, description="Longest wait for more items after a batch's first item."
    )
    batch_idle_turns: int = Field(
        4,
        ge=0,
        le=1000,
        description="Close a batch before max_batch_delay_ms once this many event-loop turns "
        "bring no new item (arrivals stopped); 0 always waits the full delay.",
    )
    inline_max_ms: float = Field(
        0.5,
        ge=0,
        le=1000,
        description="A lone item runs on the event loop instead of the inference thread when "
        "nothing else is computing and one item has been taking at most this long (saves the "
        "~70 us hand-off at low load); 0 = always the thread.",
    )
    max_batch_tokens: int = Field(
        8192, ge=1, description="Most characters in one batch of a text model (caps long strings)."
    )
    max_queue_size: int = Field(
        2048,
        ge=1,
        description="Most items queued per model version; a request that finds it full waits "
        "(max_queue_wait_ms) or gets 503.",
    )
    max_queue_wait_ms: float = Field(
        1000.0,
        ge=0,
        le=600_000,
        description="How long a request that finds its model's queue full waits for room, first "
        "come first served and within its deadline, unparsed, before it gets 503; 0 refuses at "
        "once.",
    )
    max_items_per_request: int = Field(1024, ge=1, description="Most inputs in one request.")
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get 413."
    )
    max_logprobs: int = Field(
        5, ge=0, le=1000, description="Most alternatives per position a completion may ask for."
    )
    max_completion_choices: int = Field(
        16, ge=1, le=1024, description="Most choices (n) one completions request may ask for."
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line and header section; larger ones get 431.",
    )
    max_headers: int = Field(100, ge=8, le=10_000, description="Most header fields; more get 431.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time from a request's first byte to its last header; then 408."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Time from a request's headers to its last body byte; then 408."
    )
    keep_alive_timeout_s: float = Field(
        5.0,
        ge=1,
        description="Close a connection that has sent nothing for this long (new or kept alive).",
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Most open connections; a new one beyond it is answered 503 and closed.",
    )
    max_top_k: int = Field(100, ge=1, description="Largest top_k a predict request may ask for.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with a 503 for a full queue.")
    torch_threads: int = Field(
        1, ge=1, le=256, description="CPU threads for each forward pass (torch.set_num_threads)."
    )
    gc_threshold: int = Field(
        10_000,
        ge=0,
        description="Net new objects between two young-generation garbage collections "
        "(Python's default is 700; the older generations keep theirs); 0 = the collector off.",
    )
    allow_tf32: bool = Field(
        False,
        description="Let CUDA use TF32 for matrix products and convolutions (faster on Ampere "
        "and later, but scores then differ from the CPU's by up to ~1e-2).",
    )
    pin_memory: bool = Field(
        True,
        description="On CUDA, copy each batch to the GPU from page-locked (pinned) host memory, "
        "without waiting; false = plain copies. No effect on the CPU.",
    )
    warmup: bool = Field(True, description="Run warm-up forward passes when a model loads.")
    compile: bool = Field(
        False,
        description="Opt in to torch.compile for loaded models; needs a C++ compiler ($CXX or "
        "g++) and Python's headers, checked at start-up.",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer keys for inference and metadata; unset = no auth.",
    )
    admin_api_key: SecretStr | None = Field(
        None, description="Key for /v2/repository load/unload; unset = those endpoints are off."
    )
    strict_readiness: bool = Field(
        True,
        description="Ready (/v2/health/ready) only while every model has a ready version, as "
        "Triton's --strict-readiness; false = ready while at least one model has one.",
    )
    follow_external_symlinks: bool = Field(
        False,
        description="Serve model and version directories (and the files in them) that are "
        "symbolic links leading out of the model repository; off = refused with a reason.",
    )
    protect_metrics: bool = Field(False, description="Require an API key for /metrics too.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    access_log: bool = Field(True, description="Write one JSON access line per request.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long accepted requests get to finish."
    )
    shutdown_drain_s: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, how long to answer 503 (readiness false) before the listener "
        "closes, so load balancers stop routing here first.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            keys = [k.strip(ASCII_WHITESPACE) for k in value.split(",")]
            if not all(keys):
                # " , " would otherwise become no keys at all: auth silently off.
                raise ValueError(
                    "a blank key (keys are comma-separated; unset the variable for no auth)"
                )
            return keys
        return value

    @field_validator("api_keys")
    @classmethod
    def _no_blank_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        stripped = [SecretStr(k.get_secret_value().strip(ASCII_WHITESPACE)) for k in value]
        if any(not k.get_secret_value() for k in stripped):
            raise ValueError("a blank key (unset the variable for no auth)")
        return stripped

    @field_validator("admin_api_key")
    @classmethod
    def _no_blank_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        # A key read from a secrets file ends in a newline; tokens are trimmed the same way.
        key = value.get_secret_value().strip(ASCII_WHITESPACE)
        if not key:
            raise ValueError("blank (unset the variable to turn the admin API off)")
        return SecretStr(key)

    @field_validator("grpc_port")
    @classmethod
    def _one_grpc_port_for_all_workers(cls, value: int | None, info: ValidationInfo) -> int | None:
        # Each worker binds the gRPC port itself (SO_REUSEPORT): 0 would give each its own.
        if value == 0 and info.data.get("workers", 1) > 1:
            raise ValueError("0 (any free port) with workers > 1: give the port the workers share")
        return value

    @field_validator("admin_api_key")
    @classmethod
    def _repository_api_needs_one_worker(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is not None and info.data.get("workers", 1) > 1:
            raise ValueError(
                "the repository API loads and unloads models in the one worker that answers: "
                "not available with workers > 1 (restart the server to change versions)"
            )
        return value

    @field_validator("compile")
    @classmethod
    def _compiler_works(cls, value: bool) -> bool:
        # torch.compile defers building kernels to the first forward pass: without this check a
        # missing compiler fails every model's warm-up and the server never turns ready.
        problem = _cpp_toolchain_problem() if value else None
        if problem:
            raise ValueError(f"torch.compile needs a C++ toolchain: {problem}")
        return value

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value


def _cpp_toolchain_problem() -> str | None:
    """Why inductor (torch.compile's CPU backend) could not build kernels here, or None. It
    compiles C++ that includes Python.h with the compiler it finds ($CXX, else g++): check both."""
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        cxx = get_cpp_compiler()
    except InvalidCxxCompiler:
        return "no C++ compiler found ($CXX, else g++); install g++ or leave it off"
    include = sysconfig.get_path("include")
    try:
        done = subprocess.run(
            [cxx, "-fsyntax-only", "-x", "c++", "-I", include, "-"],
            input="#include <Python.h>\n#include <cstdint>\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{cxx} does not run: {exc}"
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no output"])[0]
        return f"{cxx} cannot build against Python.h in {include}: {first}"
    return None
