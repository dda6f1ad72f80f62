"""Request bodies as a FastAPI user would declare them; shared by the baseline and the floor so
that both pay the same pydantic parsing cost."""

from __future__ import annotations

from pydantic import BaseModel


class PredictRequest(BaseModel):
    inputs: list[list[float]]
    top_k: int = 1


class ScoreRequest(BaseModel):
    inputs: list[str]
