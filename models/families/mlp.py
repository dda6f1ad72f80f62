"""The `mlp` family: Linear layers over a fixed-size vector, as `layer_sizes` with one shared
activation, or as an explicit `layers` stack (an nn.Sequential's children in order: linear,
activation, dropout, batch_norm, layer_norm). Heads: classify (softmax), multilabel (a sigmoid per
label), regress (the last layer's values, target scaling undone)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator
from torch import nn

from models.architectures import ACTIVATIONS, MLP
from models.families.base import MAX_WIDTH, Family, _Strict

if TYPE_CHECKING:
    from models.checkpoint import ModelConfig

ActivationName = Literal[
    "relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "softplus", "none"
]
# What the server applies to the last layer, per head.
HEAD_OUTPUT = {"classify": "softmax", "multilabel": "sigmoid", "regress": "identity"}


class LinearLayer(_Strict):
    kind: Literal["linear"] = "linear"
    out_features: int = Field(ge=1, le=MAX_WIDTH)
    bias: bool = True


class ActivationLayer(_Strict):
    kind: Literal["activation"] = "activation"
    name: ActivationName
    negative_slope: float = 0.01  # leaky_relu
    alpha: float = 1.0  # elu
    beta: float = 1.0  # softplus
    approximate: Literal["none", "tanh"] = "none"  # gelu


class DropoutLayer(_Strict):
    """Kept so that the stack's indices match the trained nn.Sequential; a no-op when serving."""

    kind: Literal["dropout"] = "dropout"
    p: float = Field(default=0.5, ge=0, le=1)


class BatchNormLayer(_Strict):
    """nn.BatchNorm1d in eval(): its running mean and variance normalize."""

    kind: Literal["batch_norm"] = "batch_norm"
    eps: float = Field(default=1e-5, gt=0)
    affine: bool = True


class LayerNormLayer(_Strict):
    kind: Literal["layer_norm"] = "layer_norm"
    eps: float = Field(default=1e-5, gt=0)
    elementwise_affine: bool = True


Layer = Annotated[
    LinearLayer | ActivationLayer | DropoutLayer | BatchNormLayer | LayerNormLayer,
    Field(discriminator="kind"),
]


class MLPArchitecture(_Strict):
    type: Literal["mlp"] = "mlp"
    # The input width, then each Linear layer's outputs.
    layer_sizes: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        min_length=2, max_length=64
    )
    # Between Linear layers when `layers` is not given.
    activation: ActivationName = "relu"
    # The whole stack in order (its Linear sizes must be layer_sizes[1:]); None: Linear layers
    # with `activation` between them.
    layers: list[Layer] | None = Field(default=None, max_length=256)
    # What the head applies to the last layer: softmax (classify), sigmoid (multilabel) or
    # identity (regress).
    output: Literal["softmax", "sigmoid", "identity"] = "softmax"

    @model_validator(mode="after")
    def _stack_matches_sizes(self) -> MLPArchitecture:
        if self.layers is None:
            return self
        sizes = [layer.out_features for layer in self.layers if isinstance(layer, LinearLayer)]
        if sizes != self.layer_sizes[1:]:
            raise ValueError(
                f"architecture.layers: its linear layers give {sizes}, but layer_sizes[1:] "
                f"is {self.layer_sizes[1:]}"
            )
        if not isinstance(self.layers[0], LinearLayer | DropoutLayer):
            raise ValueError("architecture.layers: the first layer must be linear (or dropout)")
        return self


def _module(layer: LinearLayer | ActivationLayer | DropoutLayer | BatchNormLayer | LayerNormLayer,
            width: int) -> nn.Module:  # fmt: skip
    if isinstance(layer, LinearLayer):
        return nn.Linear(width, layer.out_features, bias=layer.bias)
    if isinstance(layer, DropoutLayer):
        return nn.Dropout(layer.p)
    if isinstance(layer, BatchNormLayer):
        return nn.BatchNorm1d(width, eps=layer.eps, affine=layer.affine)
    if isinstance(layer, LayerNormLayer):
        return nn.LayerNorm(width, eps=layer.eps, elementwise_affine=layer.elementwise_affine)
    if layer.name == "leaky_relu":
        return nn.LeakyReLU(layer.negative_slope)
    if layer.name == "elu":
        return nn.ELU(layer.alpha)
    if layer.name == "softplus":
        return nn.Softplus(layer.beta)
    if layer.name == "gelu":
        return nn.GELU(approximate=layer.approximate)
    return ACTIVATIONS[layer.name]()


class MLPFamily(Family[MLPArchitecture]):
    type = "mlp"
    architecture = MLPArchitecture
    inputs = ("vector",)
    tasks = ("classify", "multilabel", "regress")

    def check(self, arch: MLPArchitecture, config: ModelConfig) -> None:
        super().check(arch, config)
        assert config.input.kind == "vector"
        width = 1
        for n in config.input.shape:
            width *= n
        if width != arch.layer_sizes[0]:
            raise ValueError(f"input shape {config.input.shape} does not match layer_sizes[0]")
        want = HEAD_OUTPUT[config.task]
        if arch.output != want:
            raise ValueError(
                f"architecture.output: a {config.task} head applies {want} to the last layer, "
                f"not {arch.output}"
            )

    def num_outputs(self, arch: MLPArchitecture, config: ModelConfig) -> int:
        return arch.layer_sizes[-1]

    def build(self, arch: MLPArchitecture, config: ModelConfig) -> nn.Module:
        if arch.layers is None:
            return MLP(arch.layer_sizes, arch.activation)
        stack, width = [], arch.layer_sizes[0]
        for layer in arch.layers:
            stack.append(_module(layer, width))
            if isinstance(layer, LinearLayer):
                width = layer.out_features
        return MLP(arch.layer_sizes, stack=stack)
