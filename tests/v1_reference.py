"""/v1's answers as the reference that other protocols' answers are compared with."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np


def model_labels(url: str, model: str) -> list[str]:
    labels: list[str] = httpx.get(f"{url}/v1/models/{model}").json()["labels"]
    return labels


def v1_probabilities(url: str, model: str, inputs: list[Any]) -> np.ndarray:
    """/v1's probabilities for every label, in label order."""
    top_k = len(model_labels(url, model))
    body = httpx.post(f"{url}/v1/models/{model}/predict", json={"inputs": inputs, "top_k": top_k})
    rows = []
    for prediction in body.json()["predictions"]:
        row = [0.0] * top_k
        for ranked in prediction["top_k"]:
            row[ranked["index"]] = ranked["probability"]
        rows.append(row)
    return np.array(rows)


def v1_labels(url: str, model: str, inputs: list[Any]) -> list[str]:
    body = httpx.post(f"{url}/v1/models/{model}/predict", json={"inputs": inputs})
    return [p["label"] for p in body.json()["predictions"]]
