"""materialize-transfers: make every move between pools an explicit op."""

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

from hetagent.compiler.dataflow import producer
from hetagent.compiler.dialects import data, kv, llm
from hetagent.compiler.dialects.agent import is_react_loop
from hetagent.compiler.dialects.base import HetOp
from hetagent.compiler.dialects.hw import AFFINITY, affinity, pool_of


@dataclass(frozen=True)
class MaterializeTransfers(ModulePass):
    """Inserts `kv.transfer` where a KV cache is used on another pool than the one that
    produced it (prefill and decode of one call placed apart, or a loop's next turn), and
    `data.transfer` on every other edge that crosses pools.

    A value a loop carries lives, between turns, where its back edge produces it; a loop's
    initial value produced elsewhere moves there before the loop starts."""

    name = "materialize-transfers"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        moved: dict[tuple[int, str, int], SSAValue] = {}  # (value, pool, block): one move each
        for consumer in list(op.walk()):
            if is_react_loop(consumer):
                for index, value in enumerate(consumer.operands):
                    home = pool_of(producer(consumer.before_region.block.args[index]))
                    _move(consumer, index, value, home, moved)
                continue
            if not isinstance(consumer, HetOp) or isinstance(
                consumer, kv.TransferOp | data.TransferOp
            ):
                continue
            for index, value in enumerate(consumer.operands):
                _move(consumer, index, value, pool_of(consumer), moved)


def _move(
    consumer: Operation, index: int, value: SSAValue, target: str | None, moved: dict
) -> None:
    """Make `consumer` read `value` on `target`, inserting a transfer before it if needed."""
    source = pool_of(producer(value))
    if target is None or source is None or source == target:
        return
    key = (id(value), target, id(consumer.parent_block()))
    if key not in moved:
        node = consumer.attributes.get("node") or consumer.attributes.get("agent.node")
        kind = kv.TransferOp if isinstance(value.type, llm.KVType) else data.TransferOp
        model = {"model": value.type.model} if kind is kv.TransferOp else {}
        consumer_id = consumer.attributes.get("id") or consumer.attributes.get("agent.id")
        move = kind.make(
            [value],
            [value.type],
            id=f"{consumer_id.data}.in{index}.transfer",
            node=node,
            source=source,
            target=target,
            **model,
        )
        move.attributes[AFFINITY] = affinity(target)
        consumer.parent_block().insert_op_before(move, consumer)
        moved[key] = move.results[0]
    consumer.operands[index] = moved[key]


__all__ = ["MaterializeTransfers"]
