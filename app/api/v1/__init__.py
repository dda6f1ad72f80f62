"""batchserve's native /v1 API: endpoints and their request/response schemas."""
