"""The placement problem, independent of how its numbers were obtained.

A DAG of tasks (the compiler's placeable operators); for every task the pools it can run on, each
with a latency and a cost per request; for every edge the bytes it carries, which cost transfer
time when its two tasks are on different pools. A placement picks one pool per task; it meets the
SLA when the longest path (task latencies plus transfer times on pool-crossing edges) is within
`sla_seconds`. Operators inside a ReAct loop appear once, with their latency already multiplied
by the loop's p95 turn count and their cost by its expected turn count (the loop unrolled).

Solvers (`milp`, `heuristic`) and baselines take a `PlacementProblem` and return a `Solution`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Relative slack on the SLA: a float sum of latencies can overshoot an SLA it meets exactly.
SLA_TOLERANCE = 1e-9


def within_sla(latency_s: float, sla_seconds: float | None) -> bool:
    """The one SLA test every solver and `evaluate` share, so they never disagree on a tie."""
    return sla_seconds is None or latency_s <= sla_seconds * (1 + SLA_TOLERANCE)


@dataclass(frozen=True)
class Option:
    """Running one task on one pool."""

    latency_s: float  # on the critical path (loops: x p95 turns)
    cost_usd: float  # per request (loops: x expected turns)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    bytes: float  # moved each time the edge is crossed, when the tasks are on different pools
    crossings: float = 1.0  # on the critical path: p95 turns when both ends are in one loop


@dataclass(frozen=True)
class PlacementProblem:
    tasks: tuple[str, ...]  # in a topological order
    pools: tuple[str, ...]
    options: Mapping[str, Mapping[str, Option]]  # task -> pool -> option (feasible ones only)
    edges: tuple[Edge, ...]
    # seconds to move `bytes` from one pool to another (0 within a pool)
    transfer_seconds: Callable[[str, str, float], float]
    sla_seconds: float | None = None  # end to end; None: no SLA, cheapest wins
    # Tasks the cluster's host CPUs run wherever the model runs (tool calls, templates): a
    # single-pool baseline keeps them on their cheapest pool.
    host_tasks: frozenset[str] = frozenset()
    # $ per request of moving bytes between pools (network is usually priced in the pools' hours)
    transfer_cost_usd: Callable[[str, str, float], float] = field(default=lambda a, b, n: 0.0)

    def edge_seconds(self, edge: Edge, source_pool: str, target_pool: str) -> float:
        """The edge's transfers on the critical path: each crossing pays the link's latency."""
        return edge.crossings * self.transfer_seconds(source_pool, target_pool, edge.bytes)

    def edge_cost_usd(self, edge: Edge, source_pool: str, target_pool: str) -> float:
        return edge.crossings * self.transfer_cost_usd(source_pool, target_pool, edge.bytes)

    def check_placeable(self) -> None:
        """Raises `Infeasible` naming the tasks no pool can run: then no placement exists at all."""
        stranded = [task for task in self.tasks if not self.options.get(task)]
        if stranded:
            raise Infeasible(f"no pool can run {', '.join(stranded)}")

    def evaluate(self, assignment: Mapping[str, str]) -> Solution:
        """Latency (longest path) and cost of an assignment; `sla_met` against the SLA."""
        finish: dict[str, float] = {}
        critical: dict[str, str | None] = {}
        incoming: dict[str, list[Edge]] = {task: [] for task in self.tasks}
        for edge in self.edges:
            incoming[edge.target].append(edge)
        cost = 0.0
        for task in self.tasks:
            pool = assignment[task]
            option = self.options[task][pool]
            start, before = 0.0, None
            for edge in incoming[task]:
                source_pool = assignment[edge.source]
                ready = finish[edge.source] + self.edge_seconds(edge, source_pool, pool)
                cost += self.edge_cost_usd(edge, source_pool, pool)
                if ready > start:
                    start, before = ready, edge.source
            finish[task] = start + option.latency_s
            critical[task] = before
            cost += option.cost_usd
        last = max(finish, key=finish.__getitem__) if finish else None
        path = []
        while last is not None:
            path.append(last)
            last = critical[last]
        latency = max(finish.values(), default=0.0)
        met = within_sla(latency, self.sla_seconds)
        return Solution(dict(assignment), latency, cost, met, tuple(reversed(path)))


@dataclass(frozen=True)
class Solution:
    assignment: dict[str, str]  # task -> pool
    latency_s: float
    cost_usd: float
    sla_met: bool
    critical_path: tuple[str, ...]


class Infeasible(Exception):
    """No placement meets the SLA; carries the fastest placement found (latency, path)."""

    def __init__(self, message: str, fastest: Solution | None = None):
        super().__init__(message)
        self.fastest = fastest

    @classmethod
    def sla_missed(cls, sla_seconds: float, fastest: Solution, proven: bool) -> Infeasible:
        """Says how far off the SLA is and which path to shorten: the user's next move."""
        path = " -> ".join(f"{task}@{fastest.assignment[task]}" for task in fastest.critical_path)
        best = "best achievable" if proven else "fastest found (heuristic)"
        return cls(
            f"no placement meets the {sla_seconds:.6g} s SLA: {best} latency is "
            f"{fastest.latency_s:.6g} s, critical path {path}",
            fastest,
        )
