"""Where a value comes from, looking through ReAct loops (`scf.while`).

A value carried by a loop passes through block arguments, `scf.condition` and `scf.yield`;
the op that really produced it is on the other side.
"""

from __future__ import annotations

from xdsl.dialects import scf
from xdsl.ir import BlockArgument, Operation, OpResult, SSAValue


def producer(value: SSAValue, *, back_edge: bool = True) -> Operation | None:
    """The op whose result `value` is. A loop-carried value has two: the previous turn's (the
    back edge, where it lives between turns) and, with `back_edge=False`, the one before the
    loop (what the first turn reads: the edge an acyclic view of the graph keeps)."""
    seen: set[int] = set()
    while id(value) not in seen:
        seen.add(id(value))
        if isinstance(value, OpResult):
            op = value.op
            if isinstance(op, scf.WhileOp):  # loop result i <- condition operand i + 1
                value = _condition(op).operands[value.index + 1]
                continue
            return op
        assert isinstance(value, BlockArgument)
        loop = value.block.parent_op()
        if not isinstance(loop, scf.WhileOp):
            return None  # a function argument: an input of the graph
        if value.block is loop.after_region.block:
            value = _condition(loop).operands[value.index + 1]
        elif back_edge:  # before region: the value of the previous iteration
            value = loop.after_region.block.last_op.operands[value.index]
        else:  # before region: the value the loop starts with
            value = loop.operands[value.index]
    return None


def _condition(loop: scf.WhileOp) -> scf.ConditionOp:
    return loop.before_region.block.last_op
