"""A placement: which pool each operator runs on. The planner computes one; the compiler applies it.

Placement keys are op ids (`answer.prefill`, `lookup.search`). Some ops need no entry because
they go where the data they manage is (see `FOLLOWERS`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from xdsl.dialects.builtin import ModuleOp

from hetagent.compiler.dialects import agent, data, kv, llm, retr
from hetagent.compiler.dialects.base import HetOp

# Ops that follow their data: a KV lease and release go where the cache is held, a loop's
# `agent.continue` where its reply was produced, transfers where they deliver; the engine that
# prefills tokenizes, and the engine that decodes detokenizes.
FOLLOWERS = (
    kv.LeaseOp,
    kv.ReleaseOp,
    kv.TransferOp,
    data.TransferOp,
    agent.ContinueOp,
    llm.TokenizeOp,
    llm.DetokenizeOp,
)
# Ops that run a model (the rest run on host CPUs).
MODEL_OPS = (llm.PrefillOp, llm.DecodeOp, retr.EmbedOp)


@dataclass(frozen=True)
class Pool:
    name: str
    device: str
    count: int


@dataclass(frozen=True)
class Placement:
    """Pools and the pool of every placed op (by op id)."""

    pools: tuple[Pool, ...]
    assignment: Mapping[str, str] = field(default_factory=dict)


def placed_ops(module: ModuleOp) -> Iterator[HetOp]:
    """The ops a placement must assign: every hetagent op but the followers."""
    for op in module.walk():
        if isinstance(op, HetOp) and not isinstance(op, FOLLOWERS):
            yield op
