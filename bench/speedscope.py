"""Summarise a py-spy speedscope profile: the functions with the most own (self) time, the most
inclusive time, and the share of each package or source file.

Run: `python -m bench.speedscope bench/profile-predict.json [--top 25]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def area(file: str) -> str:
    """Where a frame's code lives: our own source file, a third-party package, or the stdlib."""
    path = Path(file)
    if "site-packages" in path.parts:
        return path.parts[path.parts.index("site-packages") + 1].removesuffix(".py")
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        pass
    parts = path.parts
    for i, part in enumerate(parts):
        if part.startswith("python3") and i + 1 < len(parts):
            return "stdlib " + parts[i + 1].removesuffix(".py")
    return file or "?"


def summarise(profile: dict[str, Any]) -> dict[str, Any]:
    frames = profile["shared"]["frames"]
    own: Counter[int] = Counter()
    inclusive: Counter[int] = Counter()
    areas: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total, samples = 0.0, 0
    for thread in profile["profiles"]:
        for stack, weight in zip(thread["samples"], thread["weights"], strict=True):
            if not stack:
                continue
            total += weight
            samples += 1
            threads[thread.get("name", "?")] += weight
            own[stack[-1]] += weight
            for index in set(stack):
                inclusive[index] += weight
            areas[area(frames[stack[-1]].get("file", ""))] += weight

    def label(index: int) -> str:
        frame = frames[index]
        return f"{frame.get('name', '?')} ({area(frame.get('file', ''))}:{frame.get('line', '?')})"

    def ranked(counter: Counter[Any], name: Any = str) -> list[dict[str, Any]]:
        return [
            {"name": name(k), "share": v / total if total else 0.0}
            for k, v in counter.most_common()
        ]

    return {
        "samples": samples,
        "seconds": total,
        "threads": ranked(threads),
        "own": ranked(own, label),
        "inclusive": ranked(inclusive, label),
        "areas": ranked(areas),
    }


def render(summary: dict[str, Any], top: int = 25) -> str:
    lines = [f"{summary['samples']} samples of non-idle threads ({summary['seconds']:.1f} s)"]
    for key, title in (
        ("threads", "by thread"),
        ("areas", "own time by package / file"),
        ("own", "top functions by own time"),
        ("inclusive", "top functions by inclusive time"),
    ):
        lines.append(f"\n{title}:")
        lines += [f"  {row['share']:6.1%}  {row['name']}" for row in summary[key][:top]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    summary = summarise(json.loads(args.profile.read_text()))
    sys.stdout.write(render(summary, args.top) + "\n")


if __name__ == "__main__":
    main()
