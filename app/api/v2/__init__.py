"""The Open Inference Protocol (KServe / Triton v2) over HTTP: endpoints, schemas, tensor codec."""
