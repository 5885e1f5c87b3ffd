"""Placement: exact MILP, a fast heuristic, and the baselines they are compared with."""

from typing import Literal

from .baselines import Baseline, baselines
from .heuristic import (
    cheapest_assignment,
    fastest_assignment,
    homogeneous_assignment,
    solve_heuristic,
    solve_min_latency_heuristic,
)
from .milp import solve_milp, solve_min_latency
from .problem import Edge, Infeasible, Option, PlacementProblem, Solution, within_sla

# Up to here the MILP answers agent graphs in well under a second (benchmarks/planner_quality.py);
# dense random DAGs of this size can take HiGHS tens of seconds, so "auto" bounds it.
MILP_MAX_TASKS, MILP_MAX_POOLS, MILP_MAX_OPTIONS = 30, 10, 400
AUTO_MILP_SECONDS = 5.0


def solve(
    problem: PlacementProblem,
    solver: Literal["auto", "milp", "heuristic"] = "auto",
    objective: Literal["tco", "latency"] = "tco",
) -> Solution:
    """The cheapest placement meeting the SLA ("tco"), or the fastest one, the cheapest among
    equally fast ("latency"). "auto" runs the heuristic, and on small problems (at most 30 tasks
    and 10 pools, or 400 task-pool pairs) the exact MILP for at most 5 s, keeping the better
    (the MILP's, unless its time ran out first). "tco" raises `Infeasible` when no placement
    meets the SLA (the heuristic: none it found); "latency" returns the fastest whatever the
    SLA, its `sla_met` saying whether it holds."""
    exact = {"tco": solve_milp, "latency": solve_min_latency}
    heuristic = {"tco": solve_heuristic, "latency": solve_min_latency_heuristic}
    if solver not in ("auto", "milp", "heuristic") or objective not in exact:
        raise ValueError(f"unknown solver {solver!r} or objective {objective!r}")
    if solver == "milp":
        return exact[objective](problem)
    if solver == "heuristic":
        return heuristic[objective](problem)
    small = len(problem.tasks) <= MILP_MAX_TASKS and len(problem.pools) <= MILP_MAX_POOLS
    if not (small or len(problem.tasks) * len(problem.pools) <= MILP_MAX_OPTIONS):
        return heuristic[objective](problem)
    try:
        found = heuristic[objective](problem)
    except Infeasible:  # the heuristic found none; the MILP decides (and proves it)
        return exact[objective](problem, time_limit_s=AUTO_MILP_SECONDS)
    try:
        best = exact[objective](problem, time_limit_s=AUTO_MILP_SECONDS)
    except RuntimeError:  # HiGHS's time ran out before it had a placement
        return found
    if objective == "tco":
        return min((best, found), key=lambda s: (not s.sla_met, s.cost_usd))
    return min((best, found), key=lambda s: (s.latency_s, s.cost_usd))


__all__ = [
    "Baseline",
    "Edge",
    "Infeasible",
    "Option",
    "PlacementProblem",
    "Solution",
    "baselines",
    "cheapest_assignment",
    "fastest_assignment",
    "homogeneous_assignment",
    "solve",
    "solve_heuristic",
    "solve_milp",
    "solve_min_latency",
    "solve_min_latency_heuristic",
    "within_sla",
]
