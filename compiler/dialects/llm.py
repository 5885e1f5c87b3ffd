"""`llm`: the phases of one LLM call. Prefill and decode may run on different pools; the KV
cache between them is a value (`!llm.kv<"model">`), so a move is an explicit `kv.transfer`."""

from functools import cache
from typing import ClassVar

from xdsl.dialects.builtin import IntegerAttr, StringAttr
from xdsl.ir import Dialect, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import (
    attr_def,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    result_def,
)
from xdsl.utils.exceptions import VerifyException

from hetagent.compiler.dialects.agent import InputsOp, TextType
from hetagent.compiler.dialects.base import HetOp, same_model


@irdl_attr_definition
class TokensType(ParametrizedAttribute, TypeAttribute):
    """Token ids in a model's vocabulary."""

    name = "llm.tokens"
    model: StringAttr


@irdl_attr_definition
class KVType(ParametrizedAttribute, TypeAttribute):
    """The KV cache of one sequence (a conversation) of a model."""

    name = "llm.kv"
    model: StringAttr


@cache  # attributes are immutable; building one is not cheap
def tokens_of(model: str) -> TokensType:
    return TokensType(StringAttr(model))


@cache
def kv_of(model: str) -> KVType:
    return KVType(StringAttr(model))


@irdl_op_definition
class TokenizeOp(InputsOp):
    """Render the prompt from its inputs and tokenize it."""

    name = "llm.tokenize"
    POSITIVE: ClassVar[tuple[str, ...]] = ("tokens",)

    model = attr_def(StringAttr)
    tokens = attr_def(IntegerAttr)
    out = result_def(TokensType)

    def check(self) -> None:
        same_model(self, self.out.type)


@irdl_op_definition
class PrefillOp(HetOp):
    """Compute the prompt's KV cache, extending `prefix` (a program's earlier turns) if given."""

    name = "llm.prefill"
    POSITIVE: ClassVar[tuple[str, ...]] = ("tokens",)

    model = attr_def(StringAttr)
    tokens = attr_def(IntegerAttr)
    prompt = operand_def(TokensType)
    prefix = opt_operand_def(KVType)
    kv = result_def(KVType)

    def check(self) -> None:
        types = [self.prompt.type, self.kv.type]
        same_model(self, *types, *([self.prefix.type] if self.prefix else []))


@irdl_op_definition
class DecodeOp(HetOp):
    """Generate up to max_tokens tokens (tokens: expected), extending the KV cache."""

    name = "llm.decode"
    POSITIVE: ClassVar[tuple[str, ...]] = ("tokens", "max_tokens")

    model = attr_def(StringAttr)
    tokens = attr_def(IntegerAttr)
    max_tokens = attr_def(IntegerAttr)
    kv_in = operand_def(KVType)
    out = result_def(TokensType)
    kv = result_def(KVType)

    def check(self) -> None:
        same_model(self, self.kv_in.type, self.out.type, self.kv.type)
        if self.attr("tokens") > self.attr("max_tokens"):
            raise VerifyException(f"llm.decode {self.attr('id')!r}: tokens exceeds max_tokens")


@irdl_op_definition
class DetokenizeOp(HetOp):
    """Turn generated tokens into text."""

    name = "llm.detokenize"

    model = attr_def(StringAttr)
    generated = operand_def(TokensType)
    text = result_def(TextType)

    def check(self) -> None:
        same_model(self, self.generated.type)


Llm = Dialect("llm", [TokenizeOp, PrefillOp, DecodeOp, DetokenizeOp], [TokensType, KVType])
