"""`agent`: the graph level. One op per AgentGraph step, SSA edges for its dependencies.

The graph itself is a `func.func` (inputs are its arguments, outputs what it returns) and a ReAct
loop is an `scf.while` whose regions hold one turn: upstream MLIR cannot make an op defined in IRDL
a terminator, so containers come from upstream `func`/`scf` and our dialects hold the domain ops.
"""

from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any, ClassVar, Self

from xdsl.dialects import scf
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    i1,
    i32,
    i64,
)
from xdsl.ir import Attribute, Dialect, ParametrizedAttribute, SSAValue, TypeAttribute
from xdsl.irdl import (
    AttrSizedOperandSegments,
    attr_def,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_attr_def,
    result_def,
    var_operand_def,
)
from xdsl.utils.exceptions import VerifyException

from hetagent.compiler.dialects.base import HetOp


@irdl_attr_definition
class TextType(ParametrizedAttribute, TypeAttribute):
    """Text: a prompt, a reply, a rendered template."""

    name = "agent.text"


@irdl_attr_definition
class ValueType(ParametrizedAttribute, TypeAttribute):
    """A structured (JSON) value: a tool result, retrieved documents, parsed data."""

    name = "agent.value"


TEXT = TextType()  # parameterless types: one instance each (building one is not cheap)
VALUE = ValueType()

# A ReAct loop is an `scf.while` carrying these discardable attributes.
LOOP_ID, LOOP_NODE = "agent.id", "agent.node"
LOOP_MAX_TURNS, LOOP_P95_TURNS, LOOP_EXPECTED_TURNS = (
    "agent.max_turns",
    "agent.p95_turns",
    "agent.expected_turns",
)
# Which references (`nodes.answer.outputs.text`) an op's results provide: "<reference>=<result>".
# Lowering moves it to the op that then holds the step's result, so the plan can bind templates.
PROVIDES = "agent.provides"


def is_react_loop(op: object) -> bool:
    return isinstance(op, scf.WhileOp) and LOOP_NODE in op.attributes


class InputsOp(HetOp):
    """An op that reads the values of the steps it depends on.

    They arrive in three operand groups by type, because IRDL binds a variadic operand to a
    single type: upstream MLIR could not otherwise verify steps that read text and values."""

    texts = var_operand_def(TextType)
    values = var_operand_def(ValueType)
    numbers = var_operand_def(i64)
    irdl_options = (AttrSizedOperandSegments(),)

    @classmethod
    def make(
        cls,
        result_types: Sequence[Attribute] = (),
        *,
        inputs: Iterable[SSAValue] = (),
        **attributes: Any,
    ) -> Self:
        """Build the op from its inputs (any order: they are sorted into the groups)."""
        groups: tuple[list[SSAValue], ...] = ([], [], [])
        for value in inputs:
            for group, kind in zip(groups, (TextType, ValueType, type(i64)), strict=True):
                if isinstance(value.type, kind):
                    group.append(value)
                    break
            else:
                raise TypeError(f"{cls.name}: cannot read a value of type {value.type}")
        sizes = _segment_sizes(tuple(len(group) for group in groups))
        return super().make(groups, result_types, operandSegmentSizes=sizes, **attributes)

    @property
    def inputs(self) -> tuple[SSAValue, ...]:
        return (*self.texts, *self.values, *self.numbers)


@cache
def _segment_sizes(sizes: tuple[int, ...]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i32, sizes)


@irdl_op_definition
class LlmOp(InputsOp):
    """One LLM call; lowered to tokenize -> prefill -> decode -> detokenize."""

    name = "agent.llm"
    POSITIVE: ClassVar[tuple[str, ...]] = ("input_tokens", "output_tokens", "max_tokens")

    model = attr_def(StringAttr)
    input_tokens = attr_def(IntegerAttr)
    output_tokens = attr_def(IntegerAttr)
    max_tokens = attr_def(IntegerAttr)
    text = result_def(TextType)

    def check(self) -> None:
        if self.attr("output_tokens") > self.attr("max_tokens"):
            raise VerifyException(
                f"agent.llm {self.attr('id')!r}: output_tokens exceeds max_tokens"
            )


class ToolCallOp(InputsOp):
    """What a tool call carries at every level: the tools it may run and its resource hints."""

    POSITIVE: ClassVar[tuple[str, ...]] = ("memory_bytes",)

    tools = attr_def(ArrayAttr[StringAttr])
    expected_seconds = opt_attr_def(FloatAttr)
    memory_bytes = opt_attr_def(IntegerAttr)
    cpu = opt_attr_def(FloatAttr)
    result = result_def(ValueType)

    def check(self) -> None:
        if not self.tools.data:
            raise VerifyException(f"{self.name} {self.attr('id')!r}: tools is empty")
        if (self.attr("expected_seconds") or 0) < 0:
            raise VerifyException(f"{self.name} {self.attr('id')!r}: expected_seconds is negative")
        cpu = self.attr("cpu")
        if cpu is not None and cpu <= 0:
            raise VerifyException(f"{self.name} {self.attr('id')!r}: cpu must be positive")


@irdl_op_definition
class ToolOp(ToolCallOp):
    """A tool call; in a ReAct loop the model picks one of `tools` at run time."""

    name = "agent.tool"


@irdl_op_definition
class RetrieveOp(InputsOp):
    """Vector search: lowered to embed -> search."""

    name = "agent.retrieve"
    POSITIVE: ClassVar[tuple[str, ...]] = ("k", "query_tokens")

    index = attr_def(StringAttr)
    embedding_model = attr_def(StringAttr)
    k = attr_def(IntegerAttr)
    query_tokens = attr_def(IntegerAttr)
    result = result_def(ValueType)


@irdl_op_definition
class TransformOp(InputsOp):
    """A data step: `kind` template renders text; `kind` parse produces a value."""

    name = "agent.transform"

    kind = attr_def(StringAttr)
    format = opt_attr_def(StringAttr)
    pattern = opt_attr_def(StringAttr)
    template = attr_def(StringAttr)  # where the text is: `spec.nodes[3].template`, `observation`
    result = result_def()

    def check(self) -> None:
        kind = self.attr("kind")
        expected = {"template": TextType, "parse": ValueType}.get(kind)
        if expected is None:
            raise VerifyException(
                f"agent.transform {self.attr('id')!r}: kind must be template or parse"
            )
        if not isinstance(self.result.type, expected):
            raise VerifyException(
                f"agent.transform {self.attr('id')!r}: a {kind} produces !{expected.name}"
            )
        if (kind == "parse") != (self.format is not None):
            raise VerifyException(f"agent.transform {self.attr('id')!r}: format goes with parse")


@irdl_op_definition
class ContinueOp(HetOp):
    """A ReAct loop's condition: the reply of model turn `turn` (counted from 1) calls a tool,
    and `turn < max_turns`, so a next turn may follow the tool call."""

    name = "agent.continue"
    POSITIVE: ClassVar[tuple[str, ...]] = ("max_turns",)

    max_turns = attr_def(IntegerAttr)
    reply = operand_def(TextType)
    turn = operand_def(i64)
    more = result_def(i1)


Agent = Dialect(
    "agent",
    [LlmOp, ToolOp, RetrieveOp, TransformOp, ContinueOp],
    [TextType, ValueType],
)
