"""How long `batchserve --version`, `batchserve --help` and `batchserve serve --help` take to
start, against `python -c pass` (the interpreter alone) and `python -c "import torch"` in the same
run. Numbers to read, not to assert (tests/test_cli_start.py checks the behaviour: no torch).

Run: `python -m bench.cli_start [--runs 20]`. Each command runs as a fresh process, as a user's
shell runs it, `--runs` times after one warm-up run (the file cache); the table gives the median
and the fastest wall time and the median's ratio to `python -c pass`. The machine's other load
adds to every row alike; rerun on an idle machine for absolute numbers."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = [sys.executable, "-m", "app"]
COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("batchserve --version", [*ENTRY, "--version"]),
    ("batchserve --help", [*ENTRY, "--help"]),
    ("batchserve serve --help", [*ENTRY, "serve", "--help"]),
    ('python -c "import torch"', [sys.executable, "-c", "import torch"]),
]


def wall_times(argv: list[str], runs: int) -> list[float]:
    subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command")
    args = parser.parse_args(argv)
    results = {label: wall_times(command, args.runs) for label, command in COMMANDS}
    floor = statistics.median(results["python -c pass"])
    print(f"{args.runs} runs each, {sys.executable} ({sys.version.split()[0]})")
    print("| command | median s | fastest s | median / `python -c pass` |")
    print("|---|---:|---:|---:|")
    for label, times in results.items():
        median = statistics.median(times)
        print(f"| `{label}` | {median:.3f} | {min(times):.3f} | {median / floor:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
