"""`hw`: the device pools of a placement, and the affinity attribute that puts an op on one.

As in IREE's device affinities, placement is data on the ops (`hw.affinity = #hw.affinity<"pool">`)
and the pools are declared in the module (`hw.pool`), so later passes and the plan read both."""

from functools import cache

from xdsl.dialects.builtin import IntegerAttr, StringAttr
from xdsl.ir import Dialect, Operation, ParametrizedAttribute
from xdsl.irdl import IRDLOperation, attr_def, irdl_attr_definition, irdl_op_definition
from xdsl.utils.exceptions import VerifyException

AFFINITY = "hw.affinity"  # the attribute that places an op
STAGE = "hw.stage"  # the attribute cluster-by-device sets


def pool_of(op: Operation | None) -> str | None:
    """The pool an op was placed on, or None."""
    attr = None if op is None else op.attributes.get(AFFINITY)
    return None if attr is None else attr.pool.data


@irdl_attr_definition
class AffinityAttr(ParametrizedAttribute):
    """Names the `hw.pool` an op runs on."""

    name = "hw.affinity"
    pool: StringAttr


@cache  # attributes are immutable; building one is not cheap
def affinity(pool: str) -> AffinityAttr:
    return AffinityAttr(StringAttr(pool))


@irdl_op_definition
class PoolOp(IRDLOperation):
    """A pool of identical devices that ops can be placed on."""

    name = "hw.pool"

    sym_name = attr_def(StringAttr)
    device = attr_def(StringAttr)
    count = attr_def(IntegerAttr)

    def verify_(self) -> None:
        if self.count.value.data < 1:
            raise VerifyException(f"hw.pool {self.sym_name.data!r}: count must be >= 1")


Hw = Dialect("hw", [PoolOp], [AffinityAttr])
