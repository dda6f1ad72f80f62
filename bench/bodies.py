"""The request bodies the benchmark sends: real MNIST test digits for `predict` and common
surnames for `score`, one item per request (the case dynamic batching is for)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# Common surnames of the countries the names models know; ASCII, at most 12 characters.
SURNAMES = (
    "Smith", "Jones", "Williams", "Brown", "Taylor", "Davies", "Evans", "Wilson", "Thomas",
    "Johnson", "Roberts", "Walker", "Wright", "Robinson", "Thompson", "White", "Hughes", "Green",
    "Muller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
    "Hoffmann", "Koch", "Richter", "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard",
    "Petit", "Durand", "Leroy", "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia",
    "Rodriguez", "Gonzalez", "Fernandez", "Lopez", "Martinez", "Sanchez", "Perez", "Gomez",
    "Jimenez", "Ruiz", "Hernandez", "Rossi", "Russo", "Ferrari", "Esposito", "Bianchi",
    "Romano", "Colombo", "Ricci", "Marino", "Greco", "Bruno", "Gallo", "Conti", "DeLuca",
    "Silva", "Santos", "Ferreira", "Pereira", "Oliveira", "Costa", "Rodrigues", "Almeida",
    "Nowak", "Kowalski", "Wisniewski", "Wojcik", "Kowalczyk", "Kaminski", "Lewandowski",
    "Zielinski", "Ivanov", "Smirnov", "Kuznetsov", "Popov", "Vasiliev", "Petrov", "Sokolov",
    "Novak", "Svoboda", "Novotny", "Dvorak", "Cerny", "Prochazka", "Nagy", "Kovacs", "Toth",
    "Szabo", "Horvath", "Varga", "Korhonen", "Virtanen", "Makinen", "Nieminen", "Johansson",
    "Andersson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "DeJong", "Jansen", "DeVries",
    "VanDijk", "Bakker", "Visser", "Smit", "Papadopoulos", "Pappas", "Georgiou", "Yilmaz",
    "Kaya", "Demir", "Sahin", "Celik", "Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe",
    "Ito", "Yamamoto", "Nakamura", "Kobayashi", "Kato", "Kazlauskas", "Jankauskas", "Okafor",
    "Adeyemi", "Okonkwo", "Ogunleye", "Bello", "Eze",
)  # fmt: skip
DIGITS = 16


def mnist_digits(count: int = DIGITS) -> tuple[list[list[float]], str]:
    """The first `count` MNIST test images as 784 floats in [0, 1] (rounded to 4 decimals, as a
    client might send them) and a note on where they came from. Falls back to seeded random
    pixels if the data cannot be had."""
    try:
        from models.data import MNIST_FILE, load_mnist

        images = load_mnist().test.images[:count]
        note = f"the first {count} MNIST test digits ({MNIST_FILE.package}=={MNIST_FILE.version})"
        return [[round(float(v), 4) for v in image] for image in images], note
    except Exception as exc:  # noqa: BLE001 - any failure to get the data means: fall back
        rng = random.Random(0)
        note = f"{count} random images, uniform in [0, 1] (MNIST unavailable: {exc})"
        return [[round(rng.random(), 4) for _ in range(784)] for _ in range(count)], note


def write_bodies(directory: Path) -> dict[str, dict[str, str]]:
    """One JSON body per line, per endpoint; returns {endpoint: {"path", "note"}}."""
    directory.mkdir(parents=True, exist_ok=True)
    digits, digits_note = mnist_digits()
    names = list(dict.fromkeys(SURNAMES))
    files: dict[str, tuple[list[dict[str, Any]], str]] = {
        "predict": ([{"inputs": [d]} for d in digits], digits_note),
        "score": (
            [{"inputs": [n]} for n in names],
            f"{len(names)} common surnames of 18 countries",
        ),
    }
    written = {}
    for endpoint, (bodies, note) in files.items():
        path = directory / f"{endpoint}.jsonl"
        path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
        written[endpoint] = {"path": str(path), "note": note}
    return written
