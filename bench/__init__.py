"""Benchmarks: batchserve against a naive FastAPI baseline and a no-model floor (see README.md)."""
