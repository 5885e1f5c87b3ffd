"""assign-affinity: put every operator on the pool a placement chose for it."""

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from hetagent.compiler.dataflow import producer
from hetagent.compiler.dialects import agent, kv, llm
from hetagent.compiler.dialects.base import to_attr
from hetagent.compiler.dialects.hw import AFFINITY, PoolOp, affinity, pool_of
from hetagent.compiler.errors import CompileError
from hetagent.compiler.placement import Placement, placed_ops


@dataclass(frozen=True)
class AssignAffinity(ModulePass):
    """Declares the placement's pools (`hw.pool`) and sets `hw.affinity` on every operator.

    A loop's `kv.lease` goes where the cache stays between turns (the pool of the decode that
    extends it last), a `kv.release` where the cache was last produced, an `agent.continue`
    where its reply was produced; `llm.tokenize` where its prompt is prefilled and
    `llm.detokenize` where its tokens were decoded."""

    name = "assign-affinity"

    placement: Placement | None = None

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.placement is None:
            raise CompileError("assign-affinity needs a placement")
        known = {pool.name for pool in self.placement.pools}
        missing = []
        for placed in placed_ops(op):
            pool = self.placement.assignment.get(placed.attr("id"))
            if pool is None:
                missing.append(placed.attr("id"))
            elif pool not in known:
                raise CompileError(f"placement puts {placed.attr('id')!r} on unknown pool {pool!r}")
            else:
                placed.attributes[AFFINITY] = affinity(pool)
        if missing:
            raise CompileError(f"placement has no pool for: {', '.join(missing)}")
        for follower in op.walk():
            if isinstance(follower, kv.LeaseOp):
                (use,) = follower.kv.uses  # the loop's initial value of its carried cache
                carried = use.operation.before_region.block.args[use.index]
                pool = pool_of(producer(carried))
            elif isinstance(follower, kv.ReleaseOp):
                pool = pool_of(producer(follower.kv))
            elif isinstance(follower, agent.ContinueOp):
                pool = pool_of(producer(follower.reply))
            elif isinstance(follower, llm.TokenizeOp):
                (use,) = follower.out.uses
                pool = pool_of(use.operation)
            elif isinstance(follower, llm.DetokenizeOp):
                pool = pool_of(producer(follower.generated))
            else:
                continue
            if pool is not None:
                follower.attributes[AFFINITY] = affinity(pool)
        declarations = [
            PoolOp(
                attributes={
                    "sym_name": to_attr(pool.name),
                    "device": to_attr(pool.device),
                    "count": to_attr(pool.count),
                }
            )
            for pool in self.placement.pools
        ]
        body = op.body.block
        if body.first_op is None:
            body.add_ops(declarations)
        else:
            body.insert_ops_before(declarations, body.first_op)
