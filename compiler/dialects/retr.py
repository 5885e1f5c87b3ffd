"""`retr`: retrieval, an embedding model call followed by a vector search."""

from functools import cache
from typing import ClassVar

from xdsl.dialects.builtin import IntegerAttr, StringAttr
from xdsl.ir import Dialect, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import (
    attr_def,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    result_def,
)

from hetagent.compiler.dialects.agent import InputsOp, ValueType
from hetagent.compiler.dialects.base import HetOp, same_model


@irdl_attr_definition
class EmbeddingType(ParametrizedAttribute, TypeAttribute):
    """An embedding vector of a model."""

    name = "retr.embedding"
    model: StringAttr


@cache  # attributes are immutable; building one is not cheap
def embedding_of(model: str) -> EmbeddingType:
    return EmbeddingType(StringAttr(model))


@irdl_op_definition
class EmbedOp(InputsOp):
    """Render the query from its inputs and embed it."""

    name = "retr.embed"
    POSITIVE: ClassVar[tuple[str, ...]] = ("tokens",)

    model = attr_def(StringAttr)
    tokens = attr_def(IntegerAttr)
    vector = result_def(EmbeddingType)

    def check(self) -> None:
        same_model(self, self.vector.type)


@irdl_op_definition
class SearchOp(HetOp):
    """The k nearest chunks of an index."""

    name = "retr.search"
    POSITIVE: ClassVar[tuple[str, ...]] = ("k",)

    index = attr_def(StringAttr)
    k = attr_def(IntegerAttr)
    query = operand_def(EmbeddingType)
    documents = result_def(ValueType)


Retr = Dialect("retr", [EmbedOp, SearchOp], [EmbeddingType])
