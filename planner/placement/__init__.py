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

# Up to here the MILP answers agent graphs in well under a second (benchmarks/planner_quality.py;
# dense random DAGs of this size can take HiGHS tens of seconds)
MILP_MAX_TASKS, MILP_MAX_POOLS, MILP_MAX_OPTIONS = 30, 10, 400


def solve(
    problem: PlacementProblem,
    solver: Literal["auto", "milp", "heuristic"] = "auto",
    objective: Literal["tco", "latency"] = "tco",
) -> Solution:
    """The cheapest placement meeting the SLA ("tco"), or the fastest one, the cheapest among
    equally fast ("latency"). "auto" runs the exact MILP on small problems (at most 30 tasks
    and 10 pools, or 400 task-pool pairs) and the heuristic on the rest. "tco" raises
    `Infeasible` when no placement meets the SLA (the heuristic: none it found); "latency"
    returns the fastest whatever the SLA, its `sla_met` saying whether it holds."""
    if solver == "auto":
        small = len(problem.tasks) <= MILP_MAX_TASKS and len(problem.pools) <= MILP_MAX_POOLS
        options = len(problem.tasks) * len(problem.pools)
        solver = "milp" if small or options <= MILP_MAX_OPTIONS else "heuristic"
    solvers = {
        ("milp", "tco"): solve_milp,
        ("milp", "latency"): solve_min_latency,
        ("heuristic", "tco"): solve_heuristic,
        ("heuristic", "latency"): solve_min_latency_heuristic,
    }
    if (solver, objective) not in solvers:
        raise ValueError(f"unknown solver {solver!r} or objective {objective!r}")
    return solvers[solver, objective](problem)


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
