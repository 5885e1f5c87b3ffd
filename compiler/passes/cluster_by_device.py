"""cluster-by-device: group operators into per-pool stages."""

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from hetagent.compiler.dialects import data, kv
from hetagent.compiler.dialects.base import HetOp, to_attr
from hetagent.compiler.dialects.hw import STAGE, pool_of

MOVES = (kv.TransferOp, data.TransferOp)


@dataclass(frozen=True)
class ClusterByDevice(ModulePass):
    """Numbers stages (`hw.stage`): a stage is the operators of one block on one pool at one
    level, where an operator's level is the number of pool changes on the longest path to it
    within its block (a loop counts as a change). So every edge between stages goes forward and
    stages form a DAG; the transfers between them belong to no stage."""

    name = "cluster-by-device"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        numbers: dict[tuple[int, str, int], int] = {}  # (block, pool, level) -> stage
        levels: dict[int, dict[int, tuple[str, int]]] = {}  # block -> op -> (pool, level)
        floors: dict[int, int] = {}  # block -> the level after its last loop
        highest: dict[int, int] = {}  # block -> the highest level so far
        for o in op.walk():  # program order, entering loops where they stand
            block = id(o.parent_block())
            level = levels.setdefault(block, {})
            if o.regions:  # a loop: what follows it in its block comes after all before it
                floors[block] = highest.get(block, -1) + 1
                continue
            pool = pool_of(o)
            if pool is None or not isinstance(o, HetOp) or isinstance(o, MOVES):
                continue
            here = floors.get(block, 0)
            for value in o.operands:
                source = value.owner
                while isinstance(source, MOVES):  # look through transfers
                    source = source.operands[0].owner
                if id(source) in level:
                    source_pool, source_level = level[id(source)]
                    here = max(here, source_level + (source_pool != pool))
            level[id(o)] = (pool, here)
            highest[block] = max(highest.get(block, 0), here)
            o.attributes[STAGE] = to_attr(numbers.setdefault((block, pool, here), len(numbers)))
