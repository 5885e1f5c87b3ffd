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
from hetagent.compiler.dialects.base import HetOp

PARSE_FORMATS = ("json", "regex", "lines")


@irdl_op_definition
class TemplateOp(InputsOp):
    """Render a template (the node's) from its inputs."""

    name = "data.template"

    text = result_def(TextType)


@irdl_op_definition
class ParseOp(InputsOp):
    """Parse text into a structured value."""

    name = "data.parse"

    format = attr_def(StringAttr)
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
        if self.value_in.type != self.value.type:
            raise VerifyException(
                f"data.transfer {self.attr('id')!r}: result type differs from operand"
            )
        if self.attr("source") == self.attr("target"):
            raise VerifyException(
                f"data.transfer {self.attr('id')!r}: source and target are both "
                f"{self.attr('source')!r}"
            )


Data = Dialect("data", [TemplateOp, ParseOp, TransferOp], [])
