"""`tool`: one tool call, run in a sandbox under a resource controller."""

from typing import ClassVar

from xdsl.dialects.builtin import ArrayAttr, FloatAttr, IntegerAttr, StringAttr
from xdsl.ir import Dialect
from xdsl.irdl import attr_def, irdl_op_definition, opt_attr_def, result_def

from hetagent.compiler.dialects.agent import InputsOp, ValueType, check_tool_call


@irdl_op_definition
class ExecOp(InputsOp):
    """Run a tool (in a ReAct loop, the one of `tools` the model called)."""

    name = "tool.exec"
    POSITIVE: ClassVar[tuple[str, ...]] = ("memory_bytes",)

    tools = attr_def(ArrayAttr[StringAttr])
    expected_seconds = opt_attr_def(FloatAttr)
    memory_bytes = opt_attr_def(IntegerAttr)
    cpu = opt_attr_def(FloatAttr)
    result = result_def(ValueType)

    def check(self) -> None:
        check_tool_call(self)


Tool = Dialect("tool", [ExecOp], [])
