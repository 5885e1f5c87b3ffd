"""`kv`: the lifetime of a program's KV cache. A ReAct loop opens a lease before its first turn
and releases it after its last, so the cache can stay resident across tool calls (the runtime's
`kv_retention` policy decides whether it really does); `transfer` moves a cache between pools."""

from xdsl.dialects.builtin import IntegerAttr, StringAttr
from xdsl.ir import Dialect
from xdsl.irdl import attr_def, irdl_op_definition, operand_def, opt_attr_def, result_def

from hetagent.compiler.dialects.base import HetOp, distinct_pools, same_model
from hetagent.compiler.dialects.llm import KVType


@irdl_op_definition
class LeaseOp(HetOp):
    """Open a program's lease: an empty sequence its turns extend and keep between tool calls."""

    name = "kv.lease"

    model = attr_def(StringAttr)
    kv = result_def(KVType)

    def check(self) -> None:
        same_model(self, self.kv.type)


@irdl_op_definition
class TransferOp(HetOp):
    """Move a KV cache from the pool that produced it to the pool that uses it next."""

    name = "kv.transfer"

    model = attr_def(StringAttr)
    source = attr_def(StringAttr)
    target = attr_def(StringAttr)
    bytes = opt_attr_def(IntegerAttr)
    kv_in = operand_def(KVType)
    kv = result_def(KVType)

    def check(self) -> None:
        same_model(self, self.kv_in.type, self.kv.type)
        distinct_pools(self)


@irdl_op_definition
class ReleaseOp(HetOp):
    """Free a KV cache (its blocks may stay in the engine's prefix cache until evicted)."""

    name = "kv.release"

    model = attr_def(StringAttr)
    kv = operand_def(KVType)

    def check(self) -> None:
        same_model(self, self.kv.type)


Kv = Dialect("kv", [LeaseOp, TransferOp, ReleaseOp], [])
