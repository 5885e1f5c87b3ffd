"""assign-affinity: put every operator on the pool a placement chose for it."""

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from hetagent.compiler.dataflow import consumers, producer
from hetagent.compiler.dialects import kv
from hetagent.compiler.dialects.base import to_attr
from hetagent.compiler.dialects.hw import AFFINITY, PoolOp, affinity
from hetagent.compiler.frontend import CompileError
from hetagent.compiler.placement import Placement, placed_ops


def pool_of(op: Operation | None) -> str | None:
    """The pool an op was placed on, or None."""
    attr = None if op is None else op.attributes.get(AFFINITY)
    return None if attr is None else attr.pool.data


@dataclass(frozen=True)
class AssignAffinity(ModulePass):
    """Declares the placement's pools (`hw.pool`) and sets `hw.affinity` on every operator.

    A `kv.lease` goes where its cache is first extended, a `kv.release` where the cache was
    last produced."""

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
                pool = next(filter(None, map(pool_of, consumers(follower.kv))), None)
            elif isinstance(follower, kv.ReleaseOp):
                pool = pool_of(producer(follower.kv))
            else:
                continue
            if pool is not None:
                follower.attributes[AFFINITY] = affinity(pool)
        declarations = [
            PoolOp(
                attributes={
                    key: to_attr(value) for key, value in vars(pool).items() if key != "name"
                }
                | {"sym_name": to_attr(pool.name)}
            )
            for pool in self.placement.pools
        ]
        body = op.body.block
        if body.first_op is None:
            body.add_ops(declarations)
        else:
            body.insert_ops_before(declarations, body.first_op)
