"""The table of model families. `config.json`'s `architecture` is the union of the families'
architecture models, discriminated by `type`. Adding a family: write its module (see
`models.families.base.Family`) and add it to FAMILIES below."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from models.families.base import Family
from models.families.char_lm import CharLMArchitecture, CharLMFamily
from models.families.char_rnn import CharRNNArchitecture, CharRNNFamily
from models.families.mlp import MLPArchitecture, MLPFamily
from models.families.onnx import OnnxFamily
from models.families.rnn import RNNArchitecture, RNNFamily
from models.onnx_schema import OnnxArchitecture

FAMILIES: dict[str, Family[Any]] = {
    family.type: family
    for family in (
        MLPFamily(),
        CharRNNFamily(),
        CharLMFamily(),
        RNNFamily(),
        OnnxFamily(),
    )
}

if TYPE_CHECKING:
    ArchitectureModel = (
        MLPArchitecture
        | CharRNNArchitecture
        | CharLMArchitecture
        | RNNArchitecture
        | OnnxArchitecture
    )
    Architecture = ArchitectureModel
else:
    ArchitectureModel = Union[tuple(f.architecture for f in FAMILIES.values())]  # noqa: UP007
    Architecture = Annotated[ArchitectureModel, Field(discriminator="type")]


def family_of(architecture: Any) -> Family[Any]:
    """The family of a config's architecture."""
    return FAMILIES[architecture.type]


__all__ = [
    "FAMILIES",
    "Architecture",
    "CharLMArchitecture",
    "CharRNNArchitecture",
    "MLPArchitecture",
    "RNNArchitecture",
    "family_of",
]
