"""KServe's own Python clients against a batchserve server, run by tests/test_kserve_clients.py in a
process of its own: kserve's `inference.*` protobuf messages clash with tritonclient's (and
batchserve's) in one process. Prints what the clients answered as one JSON object.

    python -m tests.kserve_clients GRPC_TARGET HTTP_BASE_URL
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

NAMES = ["Nakamura", "Kowalski", "Rossi"]
IMAGES = np.random.default_rng(1).random((2, 784), dtype=np.float32)


def _names(typed: bool) -> InferInput:
    if typed:  # a list: sent as typed bytes_contents
        return InferInput("text", [len(NAMES)], "BYTES", data=NAMES)
    tensor = InferInput("text", [len(NAMES)], "BYTES")
    tensor.set_data_from_numpy(np.array(NAMES, dtype=object), binary_data=True)
    return tensor


def _images(typed: bool) -> InferInput:
    if typed:
        return InferInput("input", list(IMAGES.shape), "FP32", data=IMAGES.ravel().tolist())
    tensor = InferInput("input", list(IMAGES.shape), "FP32")
    tensor.set_data_from_numpy(IMAGES, binary_data=True)
    return tensor


def _outputs(response: Any) -> dict[str, Any]:
    found = {}
    for output in response.outputs:
        array = output.as_numpy()
        if array.dtype == object:
            found[output.name] = [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]
        else:
            found[output.name] = array.tolist()
    return found


async def _grpc(target: str) -> dict[str, Any]:
    client = InferenceGRPCClient(target, timeout=30)
    try:
        answers: dict[str, Any] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready("names-rnn"),
        }
        for kind, typed in (("raw", False), ("typed", True)):
            rnn = await client.infer(InferRequest("names-rnn", [_names(typed)]))
            lm = await client.infer(InferRequest("names-lm", [_names(typed)]))
            mlp = await client.infer(InferRequest("mnist-mlp", [_images(typed)]))
            answers[kind] = {
                "names-rnn": _outputs(rnn),
                "names-lm": _outputs(lm),
                "mnist-mlp": _outputs(mlp),
            }
        return answers
    finally:
        await client.close()


async def _rest(base_url: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    try:
        instances = {
            "names-rnn": NAMES,
            "names-lm": NAMES,
            "mnist-mlp": IMAGES.tolist(),
        }
        return {
            "live": await client.is_server_live(base_url),
            "model_ready": await client.is_model_ready(base_url, "names-rnn"),
            "predict": {
                model: await client.infer(base_url, {"instances": items}, model_name=model)
                for model, items in instances.items()
            },
        }
    finally:
        await client.close()


async def main(target: str, base_url: str) -> None:
    answers = {"grpc": await _grpc(target), "rest_v1": await _rest(base_url)}
    print(json.dumps(answers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
