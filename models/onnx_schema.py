"""The part of `config.json` that describes an ONNX model version (`"format": "onnx"`): which graph
input carries the item, which declares its lengths, which graph output the head reads and what
that output holds. The graph itself (`model.onnx`) says the rest; `models.onnx_file` checks one
against the other. No onnx import here: a config can be read without the extra installed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from models.families.base import _Strict

ONNX_FILE = "model.onnx"
TENSOR_NAME = r"^[^\x00-\x1f]{1,256}$"

# What the head's output holds; the servable turns it into the task's answer (softmax of logits,
# exp of log-probabilities, a sigmoid per label, ...), as a native model's head does. `values`
# is a regress head's (real outputs, target scaling undone); the others are classify's,
# multilabel's (per label: logits or probabilities) and score's.
OutputKind = Literal["logits", "probabilities", "log_probabilities", "values"]
# The kinds each task's output may hold.
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "classify": ("logits", "probabilities", "log_probabilities"),
    "multilabel": ("logits", "probabilities"),
    "regress": ("values",),
    "score": ("logits", "probabilities", "log_probabilities"),
}


class OnnxArchitecture(_Strict):
    """`architecture` of an ONNX version: names in the graph, nothing about its layers."""

    type: Literal["onnx"] = "onnx"
    # The graph input that takes the batch of items: [B, ...] floats for a vector input, [B, T]
    # integer token ids for a text input.
    input: str = Field(pattern=TENSOR_NAME)
    # A text model's [B] integer lengths input, when the graph has one: items of different
    # lengths are then padded to the batch's longest; without one they are grouped by length.
    lengths_input: str | None = Field(default=None, pattern=TENSOR_NAME)
    output: str = Field(pattern=TENSOR_NAME)
    # classify: [B, labels] logits, probabilities or log-probabilities; multilabel: [B, labels]
    # logits or probabilities (one per label); regress: [B, labels] values; score: [B, T, V]
    # next-token logits, probabilities or log-probabilities.
    output_kind: OutputKind = "logits"
    # The default domain's opset the graph was exported with, as `batchserve import onnx` read it.
    opset: int | None = Field(default=None, ge=1, le=10_000)
