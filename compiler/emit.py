"""emit: the lowered, placed module -> `ExecutablePlan`, what the runtime executes.

The plan mirrors the IR: functions of steps in program order, each step an operator with the
values it reads and writes (named, not numbered), its pool and stage; a ReAct loop is a step with
the two regions of its turn. Stages, transfers and pools are listed for the runtime and the
dashboard, and the AgentGraph document is embedded so the runtime has the prompts and tool
arguments the IR does not carry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from xdsl.dialects import func, scf
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, BlockArgument, Operation, OpResult, SSAValue

from hetagent.compiler.dialects import data, kv
from hetagent.compiler.dialects.base import from_attr
from hetagent.compiler.dialects.hw import AFFINITY, STAGE, PoolOp
from hetagent.compiler.frontend import is_react_loop
from hetagent.spec import AgentGraph

PLAN_VERSION = 1
_BOOKKEEPING = {"id", "node", AFFINITY, STAGE, "operandSegmentSizes"}


class PlanModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlanOp(PlanModel):
    """One operator: `inputs` and `outputs` name values (`input:question`, `answer.decode#1`)."""

    kind: str  # the op name, e.g. llm.prefill
    id: str | None = None
    node: str | None = None
    pool: str | None = None
    stage: int | None = None
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)


class PlanLoop(PlanModel):
    """A ReAct loop: `turn` runs on `turn_args` and decides (`condition`) whether to go on,
    forwarding values to `act` (the tool call), whose `yielded` values start the next turn."""

    kind: Literal["loop"] = "loop"
    id: str
    node: str
    max_turns: int
    p95_turns: int
    expected_turns: float
    init: list[str]
    turn_args: list[str]
    turn: list[PlanStep]
    condition: str
    forwarded: list[str]
    act_args: list[str]
    act: list[PlanStep]
    yielded: list[str]
    outputs: list[str]


PlanStep = Annotated[PlanLoop | PlanOp, Field(union_mode="left_to_right")]


class PlanFunction(PlanModel):
    inputs: list[str]
    outputs: dict[str, str]
    steps: list[PlanStep]


class Stage(PlanModel):
    id: int
    pool: str
    ops: list[str]


class Transfer(PlanModel):
    id: str
    kind: Literal["kv", "data"]
    source: str
    target: str
    value: str


class PoolPlan(PlanModel):
    name: str
    device: str
    count: int


class ExecutablePlan(PlanModel):
    version: int = PLAN_VERSION
    agent: str
    entry: str
    graph: dict[str, Any]
    pools: list[PoolPlan]
    functions: dict[str, PlanFunction]
    stages: list[Stage]
    transfers: list[Transfer]


def emit_plan(module: ModuleOp, graph: AgentGraph) -> ExecutablePlan:
    """The plan of a lowered module (placed or not: unplaced ops have no pool or stage)."""
    names = _ValueNames()
    functions, pools, stages, transfers = {}, [], {}, []
    for op in module.body.block.ops:
        if isinstance(op, PoolOp):
            pools.append(
                PoolPlan(name=op.sym_name.data, device=op.device.data, count=op.count.value.data)
            )
        elif isinstance(op, func.FuncOp):
            block = op.body.block
            inputs = [
                names.name_input(arg, n)
                for arg, n in zip(block.args, op.attributes["agent.inputs"], strict=True)
            ]
            steps = _steps(block, names)
            returned = block.last_op
            outputs = {
                from_attr(key): names.of(value)
                for key, value in zip(
                    op.attributes["agent.outputs"], returned.operands, strict=True
                )
            }
            functions[op.sym_name.data] = PlanFunction(inputs=inputs, outputs=outputs, steps=steps)
    for op in module.walk():
        if STAGE in op.attributes:
            stage = from_attr(op.attributes[STAGE])
            stages.setdefault(
                stage, Stage(id=stage, pool=op.attributes[AFFINITY].pool.data, ops=[])
            )
            stages[stage].ops.append(op.attributes["id"].data)
        if isinstance(op, kv.TransferOp | data.TransferOp):
            transfers.append(
                Transfer(
                    id=op.attr("id"),
                    kind="kv" if isinstance(op, kv.TransferOp) else "data",
                    source=op.attr("source"),
                    target=op.attr("target"),
                    value=names.of(op.operands[0]),
                )
            )
    return ExecutablePlan(
        agent=graph.metadata.name,
        entry=graph.metadata.name,
        graph=graph.to_dict(),
        pools=pools,
        functions=functions,
        stages=[stages[key] for key in sorted(stages)],
        transfers=transfers,
    )


def _steps(block: Block, names: _ValueNames) -> list[PlanLoop | PlanOp]:
    steps: list[PlanLoop | PlanOp] = []
    for op in block.ops:
        if isinstance(op, func.ReturnOp | scf.ConditionOp | scf.YieldOp):
            continue
        if is_react_loop(op):
            steps.append(_loop(op, names))
        else:
            steps.append(_op(op, names))
    return steps


def _loop(op: scf.WhileOp, names: _ValueNames) -> PlanLoop:
    loop_id = op.attributes["agent.id"].data
    before, after = op.before_region.block, op.after_region.block
    turn_args = [names.name_block_arg(a, f"{loop_id}.turn#{a.index}") for a in before.args]
    act_args = [names.name_block_arg(a, f"{loop_id}.act#{a.index}") for a in after.args]
    turn = _steps(before, names)
    act = _steps(after, names)
    condition = before.last_op
    return PlanLoop(
        id=loop_id,
        node=op.attributes["agent.node"].data,
        max_turns=from_attr(op.attributes["agent.max_turns"]),
        p95_turns=from_attr(op.attributes["agent.p95_turns"]),
        expected_turns=from_attr(op.attributes["agent.expected_turns"]),
        init=[names.of(v) for v in op.operands],
        turn_args=turn_args,
        turn=turn,
        condition=names.of(condition.operands[0]),
        forwarded=[names.of(v) for v in condition.operands[1:]],
        act_args=act_args,
        act=act,
        yielded=[names.of(v) for v in after.last_op.operands],
        outputs=[names.of(r) for r in op.results],
    )


def _op(op: Operation, names: _ValueNames) -> PlanOp:
    attributes = {
        key: from_attr(value)
        for key, value in (*op.properties.items(), *op.attributes.items())
        if key not in _BOOKKEEPING
    }
    affinity = op.attributes.get(AFFINITY)
    stage = op.attributes.get(STAGE)
    # Built from verified IR: skip pydantic's validation (most of emit's time on large plans).
    return PlanOp.model_construct(
        kind=op.name,
        id=op.attributes["id"].data if "id" in op.attributes else None,
        node=op.attributes["node"].data if "node" in op.attributes else None,
        pool=None if affinity is None else affinity.pool.data,
        stage=None if stage is None else from_attr(stage),
        inputs=[names.of(v) for v in op.operands],
        outputs=[names.of(r) for r in op.results],
        attributes=attributes,
    )


class _ValueNames:
    """Stable names for SSA values: `<op id>` or `<op id>#<i>`, `input:<name>`, loop args."""

    def __init__(self) -> None:
        self._names: dict[int, str] = {}
        self._anonymous = 0

    def name_input(self, arg: BlockArgument, name: Any) -> str:
        return self.name_block_arg(arg, f"input:{from_attr(name)}")

    def name_block_arg(self, arg: BlockArgument, name: str) -> str:
        self._names[id(arg)] = name
        return name

    def of(self, value: SSAValue) -> str:
        name = self._names.get(id(value))
        if name is None:
            assert isinstance(value, OpResult)
            op = value.op
            base = op.attributes.get("id") or op.attributes.get("agent.id")
            if base is None:
                self._anonymous += 1
                base_name = f"{op.name}.{self._anonymous}"
            else:
                base_name = base.data
            name = base_name if len(op.results) == 1 else f"{base_name}#{value.index}"
            for result in op.results:
                self._names[id(result)] = (
                    base_name if len(op.results) == 1 else f"{base_name}#{result.index}"
                )
        return name


PlanLoop.model_rebuild()
