"""The compiler's passes, one module each, runnable by their kebab-case names."""

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from hetagent.compiler.passes.assign_affinity import AssignAffinity
from hetagent.compiler.passes.cluster_by_device import ClusterByDevice
from hetagent.compiler.passes.lower_agent_to_ops import LowerAgentToOps
from hetagent.compiler.passes.materialize_transfers import MaterializeTransfers

PASSES: dict[str, type[ModulePass]] = {
    p.name: p for p in (LowerAgentToOps, AssignAffinity, MaterializeTransfers, ClusterByDevice)
}


def run_passes(
    module: ModuleOp, passes: list[ModulePass], ctx: Context | None = None, *, verify: bool = True
) -> None:
    """Apply passes in order (verifying the module after each, unless told not to)."""
    from hetagent.compiler.dialects import make_context

    ctx = ctx or make_context()
    for module_pass in passes:
        module_pass.apply(ctx, module)
        if verify:
            module.verify()


__all__ = [
    "PASSES",
    "AssignAffinity",
    "ClusterByDevice",
    "LowerAgentToOps",
    "MaterializeTransfers",
    "run_passes",
]
