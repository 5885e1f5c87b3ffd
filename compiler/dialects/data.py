"""`data`: data steps (render, parse) and moves of values between pools."""

from xdsl.dialects.builtin import IntegerAttr, StringAttr
from xdsl.ir import Dialect
from xdsl.irdl import (
    attr_def,
    irdl_op_definition,
    operand_def,
    opt_attr_def,
    result_def,
)
from xdsl.utils.exceptions import VerifyException

from hetagent.compiler.dialects.agent import InputsOp, TextType, ValueType
from hetagent.compiler.dialects.base import HetOp, distinct_pools
from hetagent.compiler.dialects.llm import KVType

PARSE_FORMATS = ("json", "regex", "lines")


@irdl_op_definition
class TemplateOp(InputsOp):
    """Render a template (the node's) from its inputs."""

    name = "data.template"

    template = attr_def(StringAttr)  # where the text is: `spec.nodes[3].template`, `observation`
    text = result_def(TextType)


@irdl_op_definition
class ParseOp(InputsOp):
    """Parse text into a structured value."""

    name = "data.parse"

    format = attr_def(StringAttr)
    pattern = opt_attr_def(StringAttr)
    template = attr_def(StringAttr)  # the document path of the parse spec
    value = result_def(ValueType)

    def check(self) -> None:
        if self.attr("format") not in PARSE_FORMATS:
            raise VerifyException(
                f"data.parse {self.attr('id')!r}: format must be one of {', '.join(PARSE_FORMATS)}"
            )


@irdl_op_definition
class TransferOp(HetOp):
    """Move a value from the pool that produced it to the pool that uses it."""

    name = "data.transfer"

    source = attr_def(StringAttr)
    target = attr_def(StringAttr)
    bytes = opt_attr_def(IntegerAttr)
    value_in = operand_def()
    value = result_def()

    def check(self) -> None:
        if isinstance(self.value_in.type, KVType):
            raise VerifyException(
                f"data.transfer {self.attr('id')!r}: a KV cache moves by kv.transfer"
            )
        if self.value_in.type != self.value.type:
            raise VerifyException(
                f"data.transfer {self.attr('id')!r}: result type differs from operand"
            )
        distinct_pools(self)


Data = Dialect("data", [TemplateOp, ParseOp, TransferOp], [])
