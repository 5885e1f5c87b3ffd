"""The exact placement: a MILP solved by HiGHS (through `scipy.optimize.milp`).

Read it next to `shared/research/placement-tco.md` ("SLA over the DAG"). For every task t and
every pool p that can run it, x[t,p] = 1 when t runs on p; s[t] is t's start time. For every edge
e = (u, v) and pools (p, q) between which it costs transfer time T[e,p,q] or money C[e,p,q],
z[e,p,q] = 1 when u runs on p and v on q:

    minimize    Σ_t Σ_p cost[t,p] x[t,p] + Σ_e Σ_p,q C[e,p,q] z[e,p,q]
    subject to  Σ_p x[t,p] = 1                                    for every task     (assignment)
                z[e,p,q] ≥ x[u,p] + x[v,q] - 1                    for every e, p, q  (transfer)
                s[v] ≥ s[u] + Σ_p lat[u,p] x[u,p] + Σ_p,q T[e,p,q] z[e,p,q]          (precedence)
                s[t] + Σ_p lat[t,p] x[t,p] ≤ SLA                  for every sink     (SLA)
                x ∈ {0,1},  0 ≤ z ≤ 1,  s ≥ 0

z may stay continuous: T and C are never negative, so z is pushed down onto its bound, which is
x[u,p]·x[v,q] when x is integral. (The transportation form, Σ_q z[e,p,q] = x[u,p] and
Σ_p z[e,p,q] = x[v,q], relaxes tighter but solved no faster with HiGHS on our benchmarks.) Like
`evaluate`, T and C include p = q where the problem says moving within a pool costs something.
`solve_min_latency` replaces the objective with a makespan M ≥ every sink's finish.

Seconds are divided by the SLA (or the fastest placement's latency) and dollars by the dearest
option, so HiGHS's absolute tolerances act as relative ones, set tight (TOLERANCES). A
placement HiGHS still accepts within its tolerance but `evaluate` rejects is cut off by a
no-good row (Σ x over its choices ≤ tasks - 1) and the MILP solved again.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from .heuristic import fastest_assignment
from .problem import Infeasible, PlacementProblem, Solution, within_sla

# HiGHS's defaults (1e-6, 1e-7) let a sink finish ppm past the SLA, which `evaluate` (1e-9)
# rejects; at 1e-9 HiGHS calls some SLAs that the fastest placement meets exactly infeasible.
# In between, neither showed in ~3,000 random cases; the fallbacks below cover the rest.
TOLERANCES = {"mip_feasibility_tolerance": 1e-8, "primal_feasibility_tolerance": 1e-9}
MIP_REL_GAP = 1e-6  # "exact": HiGHS's default 1e-4 lets brute force beat it on near-ties
RETRIES = 5  # placements HiGHS may return just over the SLA before giving up on the SLA row


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """HiGHS's C++ core can print to the process's stdout (file descriptor 1) whatever `disp`
    says; that would corrupt `hetagent plan --json`. Send it to stderr while it runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve_milp(problem: PlacementProblem, time_limit_s: float = 60) -> Solution:
    """The cheapest placement that meets the SLA (the cheapest at all without one).

    Raises `Infeasible` with the best achievable latency and its critical path when no
    placement meets the SLA. If the time limit stops HiGHS, its best placement so far.
    """
    problem.check_placeable()
    if not problem.tasks:
        return problem.evaluate({})
    sla = problem.sla_seconds
    solution = _min_cost(problem, sla, time_limit_s)
    if solution is not None:
        return solution
    fastest = solve_min_latency(problem, time_limit_s)
    if fastest.sla_met:  # HiGHS's tolerance, at an SLA that only the fastest placements meet
        return fastest
    raise Infeasible.sla_missed(sla, fastest, proven=True)


def solve_min_latency(problem: PlacementProblem, time_limit_s: float = 60) -> Solution:
    """The fastest placement; among the fastest, the cheapest (a second, cost-only solve)."""
    problem.check_placeable()
    if not problem.tasks:
        return problem.evaluate({})
    model = _Formulation(problem, time_scale=_all_fastest_latency(problem), timed=True)
    M = model.var(upper=math.inf)
    for task in model.sinks:
        model.row(model.finish(task) | {M: -1.0}, upper=0.0)  # makespan: M ≥ every sink's finish
    fastest = model.solve({M: 1.0}, time_limit_s)
    if fastest is None:
        raise RuntimeError("HiGHS found no placement although every task has an option")
    cheapest = _min_cost(problem, fastest.latency_s, time_limit_s)
    if cheapest is not None and within_sla(cheapest.latency_s, fastest.latency_s):
        return cheapest
    return fastest


def _min_cost(problem: PlacementProblem, sla: float | None, time_limit_s: float) -> Solution | None:
    """The cheapest placement within `sla` seconds as `evaluate` sees it; None if HiGHS finds
    the SLA infeasible, or keeps returning placements just over it (cut off one by one by
    no-good rows)."""
    if sla is None:  # no SLA: start times and precedence rows would only slow HiGHS down
        return _Formulation(problem, time_scale=1.0, timed=False).solve_cost(time_limit_s)
    model = _Formulation(problem, time_scale=sla if sla > 0 else 1.0, timed=True)
    for task in model.sinks:
        model.row(model.finish(task), upper=sla / model.time_scale)  # SLA, at every sink
    for _ in range(RETRIES):
        solution = model.solve_cost(time_limit_s)
        if solution is None or within_sla(solution.latency_s, sla):
            return solution
        chosen = [model.x[t, p] for t, p in solution.assignment.items()]
        model.row(dict.fromkeys(chosen, 1.0), upper=len(chosen) - 1)  # no-good: not this one
    return None


def _all_fastest_latency(problem: PlacementProblem) -> float:
    """A time scale for the latency objective: every task on its fastest option."""
    return problem.evaluate(fastest_assignment(problem)).latency_s or 1.0


@dataclass
class _Formulation:
    """The variables and rows above, in scaled units; callers add the SLA or makespan rows."""

    problem: PlacementProblem
    time_scale: float  # seconds per model time unit
    timed: bool  # start times and precedence rows (needed only for an SLA or a makespan)
    x: dict[tuple[str, str], int] = field(default_factory=dict)  # (task, pool) -> column
    s: dict[str, int] = field(default_factory=dict)  # task -> column
    z: dict[int, dict[tuple[str, str], int]] = field(default_factory=dict)  # edge -> (p, q) ->
    T: dict[int, dict[tuple[str, str], float]] = field(default_factory=dict)  # edge -> (p, q) ->
    sinks: list[str] = field(default_factory=list)
    cost: dict[int, float] = field(default_factory=dict)  # column -> scaled $
    integer: list[bool] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    rows: list[tuple[dict[int, float], float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        problem, options = self.problem, self.problem.options
        dearest = max(o.cost_usd for t in problem.tasks for o in options[t].values())
        cost_scale = dearest if dearest > 0 else 1.0
        for t in problem.tasks:
            for p, option in options[t].items():
                self.x[t, p] = self.var(upper=1.0, integer=True)
                self.cost[self.x[t, p]] = option.cost_usd / cost_scale
        for i, e in enumerate(problem.edges):
            u, v = e.source, e.target
            pairs = [(p, q) for p in options[u] for q in options[v]]
            T = {pq: problem.edge_seconds(e, *pq) / self.time_scale for pq in pairs}
            C = {pq: problem.edge_cost_usd(e, *pq) / cost_scale for pq in pairs}
            if min(T.values()) < 0 or min(C.values()) < 0:
                raise ValueError(f"negative transfer time or cost on {u} -> {v}")
            z = self.z[i] = {pq: self.var(upper=1.0) for pq in pairs if T[pq] or C[pq]}
            self.T[i] = T
            for p, q in z:
                self.cost[z[p, q]] = C[p, q]
                # transfer: z is 1 when u runs on p and v on q
                self.row({z[p, q]: 1.0, self.x[u, p]: -1.0, self.x[v, q]: -1.0}, lower=-1.0)
        for t in problem.tasks:
            self.row({self.x[t, p]: 1.0 for p in options[t]}, 1, 1)  # assignment: one pool each
        if not self.timed:
            return
        self.s = {t: self.var(upper=math.inf) for t in problem.tasks}
        for i, e in enumerate(problem.edges):
            z, T = self.z[i], self.T[i]
            transfer = {z[pq]: -T[pq] for pq in z if T[pq]}
            # precedence: v starts once u has finished and u's output has reached v's pool
            self.row({self.s[e.target]: 1.0} | self.finish(e.source, -1.0) | transfer, lower=0.0)
        has_successor = {e.source for e in problem.edges}
        self.sinks = [t for t in problem.tasks if t not in has_successor]

    def var(self, upper: float, integer: bool = False) -> int:
        """A new column in [0, upper]."""
        self.integer.append(integer)
        self.upper.append(upper)
        return len(self.upper) - 1

    def row(self, coeffs: dict[int, float], lower: float = -math.inf, upper: float = math.inf):
        """lower ≤ Σ coeffs · columns ≤ upper."""
        self.rows.append((coeffs, lower, upper))

    def finish(self, task: str, sign: float = 1.0) -> dict[int, float]:
        """s[t] + Σ_p lat[t,p] x[t,p] (times `sign`), in model time units."""
        options = self.problem.options[task]
        lat = {self.x[task, p]: sign * o.latency_s / self.time_scale for p, o in options.items()}
        return {self.s[task]: sign} | lat

    def solve_cost(self, time_limit_s: float) -> Solution | None:
        return self.solve(self.cost, time_limit_s)

    def solve(self, objective: dict[int, float], time_limit_s: float) -> Solution | None:
        """HiGHS's placement for this objective, as `evaluate` sees it (None: infeasible)."""
        n = len(self.upper)
        c = np.zeros(n)
        c[list(objective)] = list(objective.values())
        entries = [
            (r, col, val) for r, (row, _, _) in enumerate(self.rows) for col, val in row.items()
        ]
        rows, cols, vals = zip(*entries, strict=True)
        matrix = coo_array((vals, (rows, cols)), shape=(len(self.rows), n)).tocsr()
        with warnings.catch_warnings(), _stdout_to_stderr():
            # scipy warns that it passes the tolerances on verbatim
            warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
            result = milp(
                c,
                integrality=np.array(self.integer, dtype=int),
                bounds=Bounds(np.zeros(n), np.array(self.upper)),
                constraints=LinearConstraint(
                    matrix, [r[1] for r in self.rows], [r[2] for r in self.rows]
                ),
                options={"time_limit": time_limit_s, "mip_rel_gap": MIP_REL_GAP, "disp": False}
                | TOLERANCES,
            )
        if result.x is None:
            if result.status == 2:  # proven infeasible
                return None
            raise RuntimeError(f"HiGHS stopped without a placement: {result.message}")
        options, x = self.problem.options, result.x
        chosen = {
            t: max(options[t], key=lambda p, t=t: x[self.x[t, p]]) for t in self.problem.tasks
        }
        return self.problem.evaluate(chosen)
