"""hetagent.compiler: AgentGraph -> MLIR (xDSL) -> granular operators -> placed plan.

agent   build_module            one `agent` op per step, graph = func.func, loops = scf.while
ops     lower-agent-to-ops      llm.tokenize/prefill/decode/detokenize, kv.*, retr.*, tool.*, data.*
placed  assign-affinity         hw.pool declarations, hw.affinity on every operator
        materialize-transfers   kv.transfer / data.transfer on pool-crossing edges
        cluster-by-device       hw.stage: per-pool groups of operators
plan    emit_plan               ExecutablePlan (JSON) for the runtime
"""

from __future__ import annotations

import gc
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from xdsl.dialects.builtin import ModuleOp
from xdsl.printer import Printer

from hetagent.compiler.emit import ExecutablePlan, emit_plan
from hetagent.compiler.errors import CompileError
from hetagent.compiler.frontend import build_module
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


@contextmanager
def paused_gc() -> Iterator[None]:
    """Compiling allocates many long-lived IR objects and no cycles worth collecting early;
    Python's cyclic GC would rescan them over and over (about 40% of the time on large
    graphs). Collection resumes afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def lower(
    graph: AgentGraph,
    level: Level = "ops",
    placement: Placement | None = None,
    *,
    verify: bool = True,
) -> ModuleOp:
    """The module of a graph at a level of the pipeline (`placed` needs a placement).

    With `verify`, the module is verified after every pass (what the CLI and tests do)."""
    if level == "placed" and placement is None:
        raise CompileError("placing the operators needs a placement (a cluster)")
    with paused_gc():
        module = build_module(graph)
        if verify:
            module.verify()
        if level != "agent":
            run_passes(module, [LowerAgentToOps()], verify=verify)
    return module if level != "placed" else place(module, placement, verify=verify)


def place(module: ModuleOp, placement: Placement, *, verify: bool = True) -> ModuleOp:
    """Apply a placement to a lowered module: affinities, transfers, stages."""
    with paused_gc():
        passes = [AssignAffinity(placement), MaterializeTransfers(), ClusterByDevice()]
        run_passes(module, passes, verify=verify)
    return module


def compile_plan(graph: AgentGraph, placement: Placement, *, verify: bool = True) -> ExecutablePlan:
    """The whole pipeline: the plan the runtime executes."""
    module = lower(graph, "placed", placement, verify=verify)
    with paused_gc():
        return emit_plan(module, graph)


def print_generic(module: ModuleOp) -> str:
    """MLIR's generic form: what xDSL and upstream MLIR (iree-opt) both parse."""
    stream = io.StringIO()
    Printer(stream=stream, print_generic_format=True).print_op(module)
    return stream.getvalue() + "\n"


__all__ = [
    "CompileError",
    "ExecutablePlan",
    "Placement",
    "compile_plan",
    "emit_plan",
    "lower",
    "paused_gc",
    "place",
    "print_generic",
]
