"""`tool`: one tool call, run in a sandbox under a resource controller."""

from xdsl.ir import Dialect
from xdsl.irdl import irdl_op_definition

from hetagent.compiler.dialects.agent import ToolCallOp


@irdl_op_definition
class ExecOp(ToolCallOp):
    """Run a tool (in a ReAct loop, the one of `tools` the model called)."""

    name = "tool.exec"


Tool = Dialect("tool", [ExecOp], [])
