"""materialize-transfers: make every move between pools an explicit op."""

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import SSAValue
from xdsl.passes import ModulePass

from hetagent.compiler.dataflow import producer
from hetagent.compiler.dialects import data, kv, llm
from hetagent.compiler.dialects.base import HetOp
from hetagent.compiler.dialects.hw import AFFINITY
from hetagent.compiler.passes.assign_affinity import pool_of


@dataclass(frozen=True)
class MaterializeTransfers(ModulePass):
    """Inserts `kv.transfer` where a KV cache is used on another pool than the one that
    produced it (prefill and decode of one call placed apart, or a loop's next turn), and
    `data.transfer` on every other edge that crosses pools."""

    name = "materialize-transfers"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        # One move per value, target pool and block: later readers in the block reuse it.
        moved: dict[tuple[int, str, int], SSAValue] = {}
        for consumer in list(op.walk()):
            target = pool_of(consumer)
            if target is None or not isinstance(consumer, HetOp):
                continue
            if isinstance(consumer, kv.TransferOp | data.TransferOp):
                continue
            for index, value in enumerate(consumer.operands):
                source = pool_of(producer(value))
                if source is None or source == target:
                    continue
                key = (id(value), target, id(consumer.parent_block()))
                if key in moved:
                    consumer.operands[index] = moved[key]
                    continue
                transfer_id = f"{consumer.attr('id')}.in{index}.transfer"
                if isinstance(value.type, llm.KVType):
                    move = kv.TransferOp.make(
                        [value],
                        [value.type],
                        id=transfer_id,
                        node=consumer.attr("node"),
                        model=value.type.model.data,
                        source=source,
                        target=target,
                    )
                else:
                    move = data.TransferOp.make(
                        [value],
                        [value.type],
                        id=transfer_id,
                        node=consumer.attr("node"),
                        source=source,
                        target=target,
                    )
                move.attributes[AFFINITY] = consumer.attributes[AFFINITY]
                consumer.parent_block().insert_op_before(move, consumer)
                consumer.operands[index] = moved[key] = move.results[0]
