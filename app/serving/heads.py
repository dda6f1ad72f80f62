"""What a model's metadata says of its head, its input and its outputs: enough for a client (or
a playground page) to build a request and read the answer from the metadata alone, whatever the
family. Transport-neutral: /v1 puts it under `head`, the Open Inference Protocol's metadata
describes the same tensors."""

from __future__ import annotations

import math
from typing import Any

from models.checkpoint import ModelConfig
from models.families.base import SequenceInput, SubwordsInput, TextInput, VectorInput, WordsInput

DEFAULT_THRESHOLD = 0.5


def head_description(config: ModelConfig) -> dict[str, Any]:
    head: dict[str, Any] = {"task": config.task, "item": _item(config)}
    task = config.task
    if task == "classify":
        head["answer"] = "per item: label, index, probability and top_k (label order: labels)"
        head["labels"] = config.labels
    elif task == "multilabel":
        threshold = DEFAULT_THRESHOLD if config.threshold is None else config.threshold
        head["answer"] = "per item: labels (at or above threshold) and every label's probability"
        head.update(labels=config.labels, threshold=threshold)
    elif task == "regress":
        head["answer"] = "per item: values, one per output, in the targets' units"
        head["outputs"] = config.labels
        if config.target_scaling is not None:
            head["target_scaling"] = config.target_scaling.model_dump()
    else:
        head["answer"] = "per item: log_prob, num_tokens, perplexity (POST .../score)"
    return head


def _item(config: ModelConfig) -> dict[str, Any]:
    """One input item: its JSON form, limits and an example."""
    spec = config.input
    if isinstance(spec, VectorInput):
        width = math.prod(spec.shape)
        low = 0.0 if spec.minimum is None else spec.minimum
        return {
            "json": f"an array of {width} numbers"
            + "".join(f" or a {'x'.join(map(str, s))} nested array" for s in spec.also_shapes),
            "shape": [width],
            "minimum": spec.minimum,
            "maximum": spec.maximum,
            "example": [low] * width,
        }
    if isinstance(spec, TextInput):
        return {
            "json": "a string of the alphabet's characters",
            "max_length": spec.max_length,
            "example": spec.alphabet[:4],
        }
    if isinstance(spec, WordsInput):
        return {
            "json": f"a string of words ({spec.split} split"
            + (", lowercased" if spec.lowercase else "")
            + (f", unknown words read as {spec.unknown!r})" if spec.unknown else ")"),
            "max_words": spec.max_length,
            "example": " ".join(w for w in spec.vocabulary[:4] if w != spec.unknown),
        }
    if isinstance(spec, SubwordsInput):
        return {
            "json": f"a string, read as the subword tokens of {spec.tokenizer_file}",
            "tokenizer": spec.tokenizer_file,
            "vocab_size": spec.vocab_size,
            "max_tokens": spec.max_length,
            "example": spec.tokenizer.example(spec.max_length),
        }
    assert isinstance(spec, SequenceInput)
    return {
        "json": f"an array of T steps (1 <= T <= {spec.max_steps}), each {spec.features} numbers",
        "features": spec.features,
        "max_steps": spec.max_steps,
        "example": [[0.0] * spec.features, [0.0] * spec.features],
    }
