"""Model-only throughput: the forward pass in a pure torch loop, in-process, one thread, under
`torch.inference_mode()`, with the same checkpoints and inputs as the HTTP runs. Items/s here is
the compute ceiling that no server can beat on one core (or, with `--device cuda`, on the GPU:
inputs already on it, the CUDA queue drained before each clock reading, TF32 off as the server's
default has it).

Run: `taskset -c 0 python -m bench.model_only REPOSITORY BODIES_DIR [--device cuda]
[--batch-sizes 1,8,64]` (prints JSON)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from bench.baseline_app import CLASSIFIER, LANGUAGE_MODEL, newest_version
from models.checkpoint import TextInput, load_checkpoint
from models.text import CharVocab, normalize


def _items(bodies: Path) -> list[Any]:
    return [json.loads(line)["inputs"][0] for line in bodies.read_text().splitlines() if line]


def _tile(items: list[Any], size: int) -> list[Any]:
    return [items[i % len(items)] for i in range(size)]


def classifier_step(
    repository: Path, digits: list[list[float]], size: int, device: torch.device
) -> Callable[[], Any]:
    model, _ = load_checkpoint(newest_version(repository, CLASSIFIER), device)
    x = torch.tensor(_tile(digits, size), dtype=torch.float32, device=device)
    return lambda: torch.softmax(model(x), dim=-1)


def scorer_step(
    repository: Path, names: list[str], size: int, device: torch.device
) -> Callable[[], Any]:
    model, config = load_checkpoint(newest_version(repository, LANGUAGE_MODEL), device)
    assert isinstance(config.input, TextInput)
    vocab = CharVocab(config.input.alphabet)
    encoded = [vocab.encode(normalize(n, config.input.normalize)) for n in _tile(names, size)]
    inputs = pad_sequence([torch.tensor([vocab.bos, *ids]) for ids in encoded], batch_first=True)
    targets = pad_sequence([torch.tensor([*ids, vocab.eos]) for ids in encoded], batch_first=True)
    inputs, targets = inputs.to(device), targets.to(device)
    lengths = torch.tensor([len(ids) + 1 for ids in encoded])  # stays on the CPU, as served
    return lambda: model(inputs, lengths).gather(2, targets.unsqueeze(-1))


def items_per_second(
    step: Callable[[], Any], size: int, seconds: float, device: torch.device
) -> dict[str, float]:
    # CUDA kernels run asynchronously: drain the queue before each clock reading, or the loop
    # times how fast kernels are launched rather than run.
    def drain() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        for _ in range(20):
            step()
        drain()
        calls, started = 0, time.perf_counter()
        while True:
            for _ in range(10):
                step()
            calls += 10
            drain()
            if (elapsed := time.perf_counter() - started) >= seconds:
                break
    return {"items_per_s": calls * size / elapsed, "us_per_batch": elapsed / calls * 1e6}


def measure(
    repository: Path,
    bodies_dir: Path,
    batch_sizes: list[int],
    seconds: float,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    where = torch.device(device)
    # As the server's default (BATCHSERVE_ALLOW_TF32=false): full float32 on CUDA.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    digits = _items(bodies_dir / "predict.jsonl")
    names = _items(bodies_dir / "score.jsonl")
    rows = []
    for model, endpoint, make in (
        (CLASSIFIER, "predict", lambda n: classifier_step(repository, digits, n, where)),
        (LANGUAGE_MODEL, "score", lambda n: scorer_step(repository, names, n, where)),
    ):
        for size in batch_sizes:
            result = items_per_second(make(size), size, seconds, where)
            row = {"model": model, "endpoint": endpoint, "batch_size": size, **result}
            rows.append({**row, "device": str(where)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path)
    parser.add_argument("bodies_dir", type=Path)
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    rows = measure(args.repository, args.bodies_dir, sizes, args.seconds, args.device)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
