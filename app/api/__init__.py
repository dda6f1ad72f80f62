"""The transports: each protocol decodes a request, calls the data plane and encodes its typed
result. HTTP: one endpoint table (`router`) for /v1, /v2 and /metrics, documented by `openapi`."""
