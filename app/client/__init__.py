"""A Python client for the batchserve `/v1` API, sync (`Client`) and async (`AsyncClient`) on httpx.
It needs httpx and pydantic only: no FastAPI, no torch."""

from app.client.client import (
    AsyncClient,
    BatchserveError,
    Client,
    ModelInfo,
    PredictResult,
    ScoreResult,
)

__all__ = ["AsyncClient", "BatchserveError", "Client", "ModelInfo", "PredictResult", "ScoreResult"]
