"""What the solvers are compared with: one device type for everything, the cheapest device per
operator, and the per-task SLA of Asgar et al. (2025), each judged end to end by `evaluate`."""

from __future__ import annotations

from dataclasses import dataclass

from .heuristic import cheapest_assignment, homogeneous_assignment
from .problem import Infeasible, PlacementProblem, Solution


@dataclass(frozen=True)
class Baseline:
    name: str  # "homogeneous:<pool>", "cheapest-per-op" or "per-task-sla"
    solution: Solution | None  # None: the baseline has no placement (reason says why)
    reason: str


def baselines(problem: PlacementProblem) -> list[Baseline]:
    """Every pool that can run all tasks alone, then cheapest-per-op, then per-task-sla."""
    problem.check_placeable()
    found = [_homogeneous(problem, pool) for pool in problem.pools]
    found.append(_judged(problem, "cheapest-per-op", cheapest_assignment(problem), "SLA ignored"))
    found.append(_per_task_sla(problem))
    return [baseline for baseline in found if baseline is not None]


def _homogeneous(problem: PlacementProblem, pool: str) -> Baseline | None:
    """All tasks on `pool` (host tasks where they can run); None when some cannot run there."""
    assignment = homogeneous_assignment(problem, pool)
    if assignment is None:
        return None
    return _judged(problem, f"homogeneous:{pool}", assignment, f"every task on {pool}")


def _per_task_sla(problem: PlacementProblem) -> Baseline:
    """The paper's formulation: min Σ cost s.t. t_i ≤ T_SLA for each task on its own, so each
    task takes its cheapest option within the SLA; paths and transfers are not looked at."""
    try:
        assignment = cheapest_assignment(problem, max_latency_s=problem.sla_seconds)
    except Infeasible as error:
        return Baseline("per-task-sla", None, str(error))
    return _judged(problem, "per-task-sla", assignment, "each task alone within the SLA")


def _judged(problem: PlacementProblem, name: str, assignment: dict, how: str) -> Baseline:
    """The placement evaluated end to end, the reason saying how it fares against the SLA."""
    solution = problem.evaluate(assignment)
    if problem.sla_seconds is None:
        verdict = "no SLA"
    elif solution.sla_met:
        verdict = f"meets the {problem.sla_seconds:.6g} s SLA end to end"
    else:
        verdict = (
            f"misses the {problem.sla_seconds:.6g} s SLA end to end ({solution.latency_s:.6g} s "
            f"along {' -> '.join(solution.critical_path)})"
        )
    return Baseline(name, solution, f"{how}: {verdict}")
