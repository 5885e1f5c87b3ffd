"""What every hetagent op shares: an `id` (the name placement uses) and the AgentGraph `node`
it came from; and the conversions between Python values and MLIR attributes.

Op data lives in attributes, not properties: upstream MLIR dialects loaded from IRDL (our
upstream check) reject properties.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    if isinstance(value, bool):
        return IntegerAttr(int(value), i1)
    if isinstance(value, int):
        return IntegerAttr(value, i64)
    if isinstance(value, float):
        return FloatAttr(value, f64)
    if isinstance(value, str):
        return StringAttr(value)
    if isinstance(value, list | tuple):
        return ArrayAttr([to_attr(item) for item in value])
    raise TypeError(f"no attribute for {type(value).__name__} {value!r}")


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
        """Build the op from Python values: `PrefillOp.make([tokens, None], [kv], id=..., ...)`."""
        converted = {key: to_attr(value) for key, value in attributes.items() if value is not None}
        return cls(
            operands=[[] if o is None else o for o in operands],
            result_types=list(result_types),
            attributes=converted,
        )

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
