"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService`, a superset of
KServe's, with stubs generated from protos/ (see regenerate.py)."""
