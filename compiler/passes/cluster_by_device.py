"""cluster-by-device: group operators into per-pool stages."""

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from hetagent.compiler.dialects import data, kv
from hetagent.compiler.dialects.base import HetOp, to_attr
from hetagent.compiler.dialects.hw import STAGE
from hetagent.compiler.passes.assign_affinity import pool_of


@dataclass(frozen=True)
class ClusterByDevice(ModulePass):
    """Numbers stages (`hw.stage`): a stage is a connected group of operators of one block on
    one pool, so it runs without leaving its device; transfers sit between stages."""

    name = "cluster-by-device"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        parent: dict[int, int] = {}

        def find(key: int) -> int:
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        staged = [
            o
            for o in op.walk()
            if isinstance(o, HetOp)
            and pool_of(o)
            and not isinstance(o, kv.TransferOp | data.TransferOp)
        ]
        for o in staged:
            parent[id(o)] = id(o)
        for o in staged:
            for value in o.operands:
                source = value.owner
                if (
                    id(source) in parent
                    and source.parent is o.parent
                    and pool_of(source) == pool_of(o)
                ):
                    parent[find(id(source))] = find(id(o))
        numbers: dict[int, int] = {}
        for o in staged:
            o.attributes[STAGE] = to_attr(numbers.setdefault(find(id(o)), len(numbers)))
