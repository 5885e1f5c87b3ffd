"""What every hetagent op shares: an `id` (the name placement uses) and the AgentGraph `node`
it came from; and the conversions between Python values and MLIR attributes.

Op data lives in attributes, not properties: upstream MLIR dialects loaded from IRDL (our
upstream check) reject properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar, Self

from xdsl.dialects.builtin import (
    ArrayAttr,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    f64,
    i1,
    i64,
)
from xdsl.ir import Attribute, SSAValue
from xdsl.irdl import IRDLOperation, attr_def
from xdsl.utils.exceptions import VerifyException


def to_attr(value: Any) -> Attribute:
    """A Python value as an MLIR attribute (str, int, float, bool, list of those)."""
    if isinstance(value, Attribute):
        return value
    if isinstance(value, list | tuple):
        return ArrayAttr([to_attr(item) for item in value])
    return _scalar_attr(type(value), value)


@lru_cache(maxsize=65536)
def _scalar_attr(kind: type, value: Any) -> Attribute:
    """Attributes are immutable, so equal scalars share one (building them is not cheap).
    Bounded: op ids are unique, and a server compiles many graphs."""
    if kind is bool:
        return IntegerAttr(int(value), i1)
    if kind is int:
        return IntegerAttr(value, i64)
    if kind is float:
        return FloatAttr(value, f64)
    if kind is str:
        return StringAttr(value)
    raise TypeError(f"no attribute for {kind.__name__} {value!r}")


def from_attr(attr: Attribute) -> Any:
    """An MLIR attribute as a plain Python value (the inverse of `to_attr`)."""
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, IntegerAttr):
        value = attr.value.data
        return bool(value) if attr.type == i1 else value
    if isinstance(attr, FloatAttr):
        return attr.value.data
    if isinstance(attr, ArrayAttr):
        return [from_attr(item) for item in attr.data]
    return str(attr)


class HetOp(IRDLOperation):
    """Base of hetagent's ops."""

    id = attr_def(StringAttr)
    node = attr_def(StringAttr)

    # Attributes that must be positive integers when present; checked by `verify_`.
    POSITIVE: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def make(
        cls,
        operands: Sequence[SSAValue | Sequence[SSAValue] | None] = (),
        result_types: Sequence[Attribute] = (),
        **attributes: Any,
    ) -> Self:
        """Build the op from Python values: `PrefillOp.make([tokens, None], [kv], id=..., ...)`.

        Operands follow the op's operand definitions (a list for a variadic one, None for an
        absent optional one). Built without IRDL's argument checks, which dominate the cost
        of lowering large graphs; `verify()` checks the result."""
        flat: list[SSAValue] = []
        for operand in operands:
            if isinstance(operand, SSAValue):
                flat.append(operand)
            elif operand is not None:
                flat.extend(operand)
        converted = {key: to_attr(value) for key, value in attributes.items() if value is not None}
        return cls.create(operands=flat, result_types=result_types, attributes=converted)

    def attr(self, key: str) -> Any:
        """An attribute as a Python value, or None when absent."""
        value = self.attributes.get(key)
        return None if value is None else from_attr(value)

    def verify_(self) -> None:
        for key in self.POSITIVE:
            value = self.attr(key)
            if value is not None and value < 1:
                raise VerifyException(
                    f"{self.name} {self.attr('id')!r}: {key} must be >= 1, got {value}"
                )
        self.check()

    def check(self) -> None:
        """Op-specific checks; raise VerifyException naming the op and what is wrong."""


def distinct_pools(op: HetOp) -> None:
    """A transfer moves between two different pools."""
    if op.attr("source") == op.attr("target"):
        raise VerifyException(
            f"{op.name} {op.attr('id')!r}: source and target are both {op.attr('source')!r}"
        )


def same_model(op: HetOp, *types: Attribute) -> None:
    """Every model-typed value of an op is of the op's model."""
    model = op.attr("model")
    for attr_type in types:
        typed = getattr(attr_type, "model", None)
        if typed is not None and typed.data != model:
            raise VerifyException(
                f"{op.name} {op.attr('id')!r}: a value of model {typed.data!r} "
                f"used by an op of model {model!r}"
            )
