"""hetagent.compiler: AgentGraph -> MLIR (xDSL) -> granular operators -> placed plan.

agent   build_module            one `agent` op per step, graph = func.func, loops = scf.while
ops     lower-agent-to-ops      llm.tokenize/prefill/decode/detokenize, kv.*, retr.*, tool.*, data.*
placed  assign-affinity         hw.pool declarations, hw.affinity on every operator
        materialize-transfers   kv.transfer / data.transfer on pool-crossing edges
        cluster-by-device       hw.stage: per-pool groups of operators
plan    emit_plan               ExecutablePlan (JSON) for the runtime
"""

from __future__ import annotations

import io
from typing import Literal

from xdsl.dialects.builtin import ModuleOp
from xdsl.printer import Printer

from hetagent.compiler.emit import ExecutablePlan, emit_plan
from hetagent.compiler.frontend import CompileError, build_module
from hetagent.compiler.passes import (
    AssignAffinity,
    ClusterByDevice,
    LowerAgentToOps,
    MaterializeTransfers,
    run_passes,
)
from hetagent.compiler.placement import Placement
from hetagent.spec import AgentGraph

Level = Literal["agent", "ops", "placed"]


def lower(graph: AgentGraph, level: Level = "ops", placement: Placement | None = None) -> ModuleOp:
    """The module of a graph at a level of the pipeline (`placed` needs a placement)."""
    module = build_module(graph)
    if level == "agent":
        return module
    run_passes(module, [LowerAgentToOps()])
    if level == "ops":
        return module
    if placement is None:
        raise CompileError("placing the operators needs a placement (a cluster)")
    run_passes(module, [AssignAffinity(placement), MaterializeTransfers(), ClusterByDevice()])
    return module


def compile_plan(graph: AgentGraph, placement: Placement) -> ExecutablePlan:
    """The whole pipeline: the plan the runtime executes."""
    return emit_plan(lower(graph, "placed", placement), graph)


def print_generic(module: ModuleOp) -> str:
    """MLIR's generic form: what xDSL and upstream MLIR (iree-opt) both parse."""
    stream = io.StringIO()
    Printer(stream=stream, print_generic_format=True).print_op(module)
    return stream.getvalue() + "\n"


__all__ = ["CompileError", "ExecutablePlan", "Placement", "compile_plan", "lower", "print_generic"]
