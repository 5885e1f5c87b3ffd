"""emit: the lowered, placed module -> `ExecutablePlan`, what the runtime executes.

The plan mirrors the IR: steps in program order, each an operator with the values it reads and
writes (named, not numbered), its pool and stage; a ReAct loop is a step holding the two regions
of its turn. `values` binds every reference a template may contain (`nodes.search.outputs.text`)
to the value that holds it; a template op names its text (`template`: `spec.nodes[3].prompt`,
prefixed with `research/` for a subgraph's document); `documents` holds the AgentGraph and the
subgraphs it inlines, so the runtime has the prompts and tool arguments the IR does not carry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from xdsl.dialects import func, scf
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, OpResult, SSAValue

from hetagent.compiler.dialects import data, kv
from hetagent.compiler.dialects.agent import (
    LOOP_EXPECTED_TURNS,
    LOOP_ID,
    LOOP_MAX_TURNS,
    LOOP_NODE,
    LOOP_P95_TURNS,
    PROVIDES,
    is_react_loop,
)
from hetagent.compiler.dialects.base import from_attr
from hetagent.compiler.dialects.hw import AFFINITY, STAGE, PoolOp, pool_of
from hetagent.compiler.frontend import SUBGRAPH_SEPARATOR
from hetagent.spec import AgentGraph

PLAN_VERSION = 1
_BOOKKEEPING = {"id", "node", AFFINITY, STAGE, PROVIDES, "operandSegmentSizes"}
_MOVES = (kv.TransferOp, data.TransferOp)


class PlanModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlanOp(PlanModel):
    """One operator: `inputs` and `outputs` name values (`input:question`, `answer.decode#1`)."""

    kind: str  # the op name, e.g. llm.prefill
    id: str | None = None
    node: str | None = None  # the step it runs, `research/write` for a subgraph's step
    pool: str | None = None
    stage: int | None = None
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)


class PlanLoop(PlanModel):
    """A ReAct loop: `turn` runs on `turn_args` and decides (`condition`) whether to go on,
    forwarding values to `act` (the tool call), whose `yielded` values start the next turn.
    The loop's values start as `init`; it ends with the forwarded values as `outputs`."""

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


class Stage(PlanModel):
    """Operators of one pool that run together; `after`: the stages whose results they read."""

    id: int
    pool: str
    ops: list[str]
    after: list[int]


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
    documents: dict[str, dict[str, Any]]  # "" -> the AgentGraph, "research" -> its subgraph
    pools: list[PoolPlan]
    inputs: list[str]
    outputs: dict[str, str]
    values: dict[str, str]  # `inputs.q`, `nodes.a.outputs.text` -> the value holding it
    steps: list[PlanStep]
    stages: list[Stage]
    transfers: list[Transfer]


def emit_plan(module: ModuleOp, graph: AgentGraph) -> ExecutablePlan:
    """The plan of a lowered module (placed or not: unplaced ops have no pool or stage)."""
    names = _ValueNames()
    (function,) = [op for op in module.body.block.ops if isinstance(op, func.FuncOp)]
    block = function.body.block
    input_names = [from_attr(n) for n in function.attributes["agent.inputs"]]
    inputs = [names.name(arg, f"input:{n}") for arg, n in zip(block.args, input_names, strict=True)]
    steps = _steps(block, names)
    outputs = {
        from_attr(key): names.of(value)
        for key, value in zip(
            function.attributes["agent.outputs"], block.last_op.operands, strict=True
        )
    }
    values = {f"inputs.{n}": name for n, name in zip(input_names, inputs, strict=True)}
    stages: dict[int, dict[str, Any]] = {}
    transfers = []
    for op in module.walk():
        if PROVIDES in op.attributes:
            for entry in from_attr(op.attributes[PROVIDES]):
                reference, index = entry.rsplit("=", 1)
                values[reference] = names.of(op.results[int(index)])
        if STAGE in op.attributes:
            stage = stages.setdefault(
                from_attr(op.attributes[STAGE]), {"pool": pool_of(op), "ops": [], "after": set()}
            )
            stage["ops"].append(op.attributes["id"].data)
            stage["after"] |= _stages_read(op) - {from_attr(op.attributes[STAGE])}
        if isinstance(op, _MOVES):
            transfers.append(
                Transfer(
                    id=op.attr("id"),
                    kind="kv" if isinstance(op, kv.TransferOp) else "data",
                    source=op.attr("source"),
                    target=op.attr("target"),
                    value=names.of(op.operands[0]),
                )
            )
    pools = [
        PoolPlan(name=op.sym_name.data, device=op.device.data, count=op.count.value.data)
        for op in module.body.block.ops
        if isinstance(op, PoolOp)
    ]
    return ExecutablePlan(
        agent=graph.metadata.name,
        documents=_documents(graph),
        pools=pools,
        inputs=inputs,
        outputs=outputs,
        values=values,
        steps=steps,
        stages=[
            Stage(id=key, pool=s["pool"], ops=s["ops"], after=sorted(s["after"]))
            for key, s in sorted(stages.items())
        ],
        transfers=transfers,
    )


def _documents(graph: AgentGraph, prefix: str = "") -> dict[str, dict[str, Any]]:
    """The graph's document and, by node path, those of the subgraphs it inlines."""
    documents = {prefix.rstrip(SUBGRAPH_SEPARATOR): graph.to_dict()}
    for node, child in graph.subgraphs.items():
        documents |= _documents(child, f"{prefix}{node}{SUBGRAPH_SEPARATOR}")
    return documents


def _stages_read(op: Operation) -> set[int]:
    """The stages whose results an op reads (through transfers)."""
    stages = set()
    for value in op.operands:
        source = value.owner
        while isinstance(source, _MOVES):
            source = source.operands[0].owner
        if isinstance(source, Operation) and STAGE in source.attributes:
            stages.add(from_attr(source.attributes[STAGE]))
    return stages


def _steps(block: Block, names: _ValueNames) -> list[PlanLoop | PlanOp]:
    steps: list[PlanLoop | PlanOp] = []
    for op in block.ops:
        if isinstance(op, func.ReturnOp | scf.ConditionOp | scf.YieldOp):
            continue
        steps.append(_loop(op, names) if is_react_loop(op) else _op(op, names))
    return steps


def _loop(op: scf.WhileOp, names: _ValueNames) -> PlanLoop:
    loop_id = op.attributes[LOOP_ID].data
    before, after = op.before_region.block, op.after_region.block
    turn_args = [names.name(a, f"{loop_id}.turn#{a.index}") for a in before.args]
    act_args = [names.name(a, f"{loop_id}.act#{a.index}") for a in after.args]
    turn = _steps(before, names)
    act = _steps(after, names)
    condition = before.last_op
    return PlanLoop(
        id=loop_id,
        node=op.attributes[LOOP_NODE].data,
        max_turns=from_attr(op.attributes[LOOP_MAX_TURNS]),
        p95_turns=from_attr(op.attributes[LOOP_P95_TURNS]),
        expected_turns=from_attr(op.attributes[LOOP_EXPECTED_TURNS]),
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
    stage = op.attributes.get(STAGE)
    # Built from verified IR: skip pydantic's validation (most of emit's time on large plans).
    return PlanOp.model_construct(
        kind=op.name,
        id=op.attributes["id"].data if "id" in op.attributes else None,
        node=op.attributes["node"].data if "node" in op.attributes else None,
        pool=pool_of(op),
        stage=None if stage is None else from_attr(stage),
        inputs=[names.of(v) for v in op.operands],
        outputs=[names.of(r) for r in op.results],
        attributes=attributes,
    )


class _ValueNames:
    """Unique names for SSA values: `<op id>` (or `<op id>#<i>` for several results),
    `input:<name>`, loop arguments, and `<op name>#<n>` for ops without an id."""

    def __init__(self) -> None:
        self._names: dict[int, str] = {}
        self._anonymous = 0

    def name(self, value: SSAValue, name: str) -> str:
        self._names[id(value)] = name
        return name

    def of(self, value: SSAValue) -> str:
        if id(value) not in self._names:
            assert isinstance(value, OpResult), f"unnamed block argument {value}"
            op = value.op
            base = op.attributes.get("id") or op.attributes.get(LOOP_ID)
            if base is None:
                self._anonymous += 1
                stem = f"{op.name}#{self._anonymous}"
            else:
                stem = base.data
            for result in op.results:
                suffix = "" if len(op.results) == 1 else f"#{result.index}"
                self._names[id(result)] = stem + suffix
        return self._names[id(value)]


PlanLoop.model_rebuild()
__all__ = ["ExecutablePlan", "PlanLoop", "PlanOp", "emit_plan"]
