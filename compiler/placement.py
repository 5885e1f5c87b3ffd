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
# `agent.continue` where its reply was produced, transfers where they deliver.
FOLLOWERS = (kv.LeaseOp, kv.ReleaseOp, kv.TransferOp, data.TransferOp, agent.ContinueOp)
# Ops that run a model: on an accelerator if the cluster has one.
MODEL_OPS = (llm.TokenizeOp, llm.PrefillOp, llm.DecodeOp, llm.DetokenizeOp, retr.EmbedOp)


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


def trivial_placement(
    module: ModuleOp, pools: tuple[Pool, ...], accelerators: set[str]
) -> Placement:
    """Model ops on the first accelerator pool, everything else on the first other pool.

    A stand-in so `hetagent compile --emit placed|plan` works before the planner lands; the
    planner's SLA- and cost-aware placement replaces it (issue 4).
    """
    if not pools:
        raise ValueError("a placement needs at least one pool")
    fast = next((p.name for p in pools if p.name in accelerators), pools[0].name)
    general = next((p.name for p in pools if p.name not in accelerators), pools[0].name)
    assignment = {
        op.attr("id"): fast if isinstance(op, MODEL_OPS) else general for op in placed_ops(module)
    }
    return Placement(pools, assignment)
