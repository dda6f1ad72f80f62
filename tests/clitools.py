"""Running the `batchserve` command in-process (fast) or as the installed entry point, and small
real data files for it."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from app.cli import main

ENTRY_POINT = Path(sys.executable).with_name("batchserve")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Run:
    """`batchserve ARGV` in this process; torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = int(exc.code or 0)
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def command(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> Run:
    """The installed `batchserve` entry point as a process."""
    result = subprocess.run(
        [str(ENTRY_POINT), *map(str, argv)],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    return Run(result.returncode, result.stdout, result.stderr)


def files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")) if directory.exists() else []


# --------------------------------------------------------------------------- data files


def vectors(rows: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4x4 'images' whose label says which half is brighter: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, 4, 4), dtype=np.float32)
    y = (x[:, :2].sum(axis=(1, 2)) > x[:, 2:].sum(axis=(1, 2))).astype(np.int64)
    return x, y


def write_npz(path: Path, rows: int = 120) -> Path:
    x, y = vectors(rows)
    np.savez(path, x=x, y=y)
    return path


def write_vector_csv(path: Path, rows: int = 120) -> Path:
    x, y = vectors(rows)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", *(f"p{i}" for i in range(16))])
        for features, label in zip(x.reshape(rows, -1), y, strict=True):
            writer.writerow(["top" if label else "bottom", *(f"{v:.5f}" for v in features)])
    return path


NAMES = {
    "JP": ["Nakamura", "Tanaka", "Suzuki", "Watanabe", "Yamamoto", "Kobayashi", "Saito", "Kato"],
    "PL": ["Kowalski", "Nowak", "Wiśniewski", "Wójcik", "Kamiński", "Lewandowski", "Zieliński",
           "Szymański"],
    "IT": ["Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci"],
}  # fmt: skip


def write_text_csv(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((name, label) for label, names in NAMES.items() for name in names)
    return path


def write_lines(path: Path) -> Path:
    names = [name for group in NAMES.values() for name in group]
    path.write_text("\n".join(names * 2) + "\n", encoding="utf-8")
    return path


def v2_outputs(url: str, model: str, inputs: list[Any]) -> dict[str, list[Any]]:
    """The model's outputs over /v2 (Open Inference Protocol), each reshaped to rows."""
    if isinstance(inputs[0], str):
        tensor = {"name": "text", "datatype": "BYTES", "shape": [len(inputs)], "data": inputs}
    else:
        rows = np.asarray(inputs, dtype=np.float32).reshape(len(inputs), -1)
        tensor = {"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                  "data": rows.ravel().tolist()}  # fmt: skip
    response = httpx.post(f"{url}/v2/models/{model}/infer", json={"inputs": [tensor]}, timeout=30)
    assert response.status_code == 200, response.text
    outputs = {}
    for output in response.json()["outputs"]:
        width = math.prod(output["shape"][1:])
        data = output["data"]
        outputs[output["name"]] = [data[i : i + width] for i in range(0, len(data), width)]
    return outputs


@contextmanager
def serving(
    argv: Sequence[str], port: int, env: dict[str, str], log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`batchserve serve ARGV` as a process (output to `log`) until /v2/health/ready answers 200
    on `port`; terminated afterwards."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(ENTRY_POINT), "serve", *argv], env={**os.environ, **env}, stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the server did not become ready on {url}: {tail}")
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
