"""Placement: the MILP is exact, the heuristic is close and never gives up early, an unmeetable
SLA says how far off it is, and the baselines are judged end to end."""

import itertools
import random
import statistics
from dataclasses import replace

import pytest

from hetagent.planner.placement import (
    Edge,
    Infeasible,
    Option,
    PlacementProblem,
    Solution,
    baselines,
    cheapest_assignment,
    solve,
    solve_heuristic,
    solve_milp,
    solve_min_latency,
    synthetic,
)


def paper_example(transfer_s: float = 0.010, sla_s: float | None = 0.120) -> PlacementProblem:
    """Asgar et al. (2025): prefill 1000 / decode 500 tokens. All on the fast device 105 ms,
    $0.11; prefill fast + decode on the cheap device + 10 ms KV transfer 120 ms, $0.095; all
    cheap 160 ms."""
    options = {
        "prefill": {"fast": Option(0.025, 0.040), "cheap": Option(0.075, 0.015)},
        "decode": {"fast": Option(0.080, 0.070), "cheap": Option(0.085, 0.055)},
    }
    return PlacementProblem(
        tasks=("prefill", "decode"),
        pools=("fast", "cheap"),
        options=options,
        edges=(Edge("prefill", "decode", 131e6),),
        transfer_seconds=lambda a, b, size: 0.0 if a == b else transfer_s,
        sla_seconds=sla_s,
    )


def chain(latency_s: dict[str, float], cost: dict[str, float], n: int, sla_s: float):
    """n tasks in a row, each with the same options; transfers free."""
    tasks = tuple(f"step{i}" for i in range(n))
    options = {t: {p: Option(latency_s[p], cost[p]) for p in latency_s} for t in tasks}
    edges = tuple(Edge(a, b, 1e3) for a, b in itertools.pairwise(tasks))
    return PlacementProblem(tasks, tuple(latency_s), options, edges, lambda a, b, size: 0.0, sla_s)


def random_problem(rng: random.Random, max_tasks: int, max_pools: int) -> PlacementProblem:
    tasks, pools = rng.randint(1, max_tasks), rng.randint(1, max_pools)
    return synthetic.random_problem(rng, tasks=tasks, pools=pools)


def every_placement(problem: PlacementProblem) -> list[Solution]:
    choices = [list(problem.options[t]) for t in problem.tasks]
    return [
        problem.evaluate(dict(zip(problem.tasks, pools, strict=True)))
        for pools in itertools.product(*choices)
    ]


# --- the MILP --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(25))
def test_milp_finds_the_cheapest_placement_brute_force_finds(seed: int) -> None:
    rng = random.Random(seed)
    problem = random_problem(rng, max_tasks=6, max_pools=3)
    placements = every_placement(problem)
    fastest = min(s.latency_s for s in placements)
    slowest = max(s.latency_s for s in placements)
    problem = replace(problem, sla_seconds=rng.uniform(fastest, slowest))
    best = min((s for s in every_placement(problem) if s.sla_met), key=lambda s: s.cost_usd)

    found = solve_milp(problem)

    assert found.sla_met
    assert found.cost_usd == pytest.approx(best.cost_usd, rel=1e-6)


def test_prefill_on_the_fast_pool_and_decode_on_the_cheap_pool_wins_when_the_sla_allows() -> None:
    found = solve_milp(paper_example())

    assert found.assignment == {"prefill": "fast", "decode": "cheap"}
    assert found.latency_s == pytest.approx(0.120)
    assert found.cost_usd == pytest.approx(0.095)
    assert found.sla_met


def test_a_slow_kv_transfer_keeps_prefill_and_decode_on_one_pool() -> None:
    found = solve_milp(paper_example(transfer_s=0.030))  # the split would take 140 ms

    assert found.assignment == {"prefill": "fast", "decode": "fast"}
    assert found.cost_usd == pytest.approx(0.110)


@pytest.mark.parametrize("solver", ["milp", "heuristic"])
def test_a_transfer_inside_a_loop_pays_the_link_every_turn(solver) -> None:
    # the split alone is 120 ms with one 10 ms crossing; over 3 turns of a loop it crosses 3
    # times (140 ms > the SLA), so both tasks stay on the fast pool
    looped = paper_example()
    looped = replace(looped, edges=(replace(looped.edges[0], crossings=3),))
    split = looped.evaluate({"prefill": "fast", "decode": "cheap"})
    assert split.latency_s == pytest.approx(0.025 + 3 * 0.010 + 0.085)
    assert solve(looped, solver=solver).assignment == {"prefill": "fast", "decode": "fast"}


def test_without_an_sla_the_cheapest_placement_wins() -> None:
    found = solve_milp(paper_example(sla_s=None))

    assert found.assignment == {"prefill": "cheap", "decode": "cheap"}
    assert found.latency_s == pytest.approx(0.160)


def test_an_unmeetable_sla_names_the_best_achievable_latency_and_its_critical_path() -> None:
    with pytest.raises(Infeasible) as raised:
        solve_milp(paper_example(sla_s=0.100))

    message = str(raised.value)
    assert "best achievable latency is 0.105 s" in message
    assert "prefill@fast -> decode@fast" in message
    assert raised.value.fastest.latency_s == pytest.approx(0.105)
    assert raised.value.fastest.critical_path == ("prefill", "decode")


@pytest.mark.parametrize("solver", ["milp", "heuristic"])
def test_the_latency_objective_picks_the_cheapest_of_the_fastest_placements(solver: str) -> None:
    problem = paper_example()
    twin = {"prefill": Option(0.025, 0.030), "decode": Option(0.080, 0.060)}  # fast, cheaper
    options = {task: {**problem.options[task], "twin": twin[task]} for task in problem.tasks}
    problem = replace(problem, pools=("fast", "cheap", "twin"), options=options)

    found = solve(problem, solver=solver, objective="latency")

    assert found.assignment == {"prefill": "twin", "decode": "twin"}
    assert found.latency_s == pytest.approx(0.105)


def lone_tasks(sla_s: float | None, **options: dict[str, Option]) -> PlacementProblem:
    """Tasks without edges."""
    pools = tuple(dict.fromkeys(p for by_pool in options.values() for p in by_pool))
    return PlacementProblem(tuple(options), pools, options, (), lambda a, b, size: 0.0, sla_s)


SLOW_AND_CHEAP = {"a": Option(1.0, 2.0), "b": Option(3.0, 1.0)}


@pytest.mark.parametrize("solver", [solve_milp, solve_heuristic])
def test_a_single_task_takes_its_cheapest_option_within_the_sla(solver) -> None:
    assert solver(lone_tasks(2.0, only=SLOW_AND_CHEAP)).assignment == {"only": "a"}
    assert solver(lone_tasks(None, only=SLOW_AND_CHEAP)).assignment == {"only": "b"}


@pytest.mark.parametrize("solver", [solve_milp, solve_heuristic])
def test_tasks_without_edges_are_placed_independently(solver) -> None:
    problem = lone_tasks(3.0, x=SLOW_AND_CHEAP, y={"b": Option(3.0, 1.0)})

    assert solver(problem).assignment == {"x": "b", "y": "b"}


@pytest.mark.parametrize("solver", [solve_milp, solve_heuristic])
def test_an_empty_problem_places_nothing(solver) -> None:
    assert solver(lone_tasks(1.0)) == Solution({}, 0.0, 0.0, True, ())


@pytest.mark.parametrize("solver", [solve_milp, solve_heuristic])
def test_a_task_no_pool_can_run_makes_the_problem_infeasible(solver) -> None:
    problem = paper_example()
    problem = replace(problem, options={**problem.options, "decode": {}})

    with pytest.raises(Infeasible, match="no pool can run decode"):
        solver(problem)


# --- the heuristic ---------------------------------------------------------------------------


def test_the_heuristic_meets_the_sla_whenever_the_milp_does_at_nearly_its_cost() -> None:
    rng = random.Random(2026)
    gaps = []
    for _ in range(60):
        problem = random_problem(rng, max_tasks=12, max_pools=4)
        fastest = solve_min_latency(problem).latency_s
        cheapest = problem.evaluate(cheapest_assignment(problem)).latency_s
        problem = replace(problem, sla_seconds=rng.uniform(fastest, max(fastest, cheapest)))
        exact = solve_milp(problem)

        found = solve_heuristic(problem)  # raises Infeasible if it gives up

        assert found.sla_met
        assert found.cost_usd >= exact.cost_usd * (1 - 1e-9)
        gaps.append((found.cost_usd - exact.cost_usd) / exact.cost_usd)
    assert statistics.median(gaps) <= 0.01
    assert sum(gap <= 0.05 for gap in gaps) >= 0.9 * len(gaps)


def test_auto_on_a_small_problem_is_as_cheap_as_the_milp() -> None:
    rng = random.Random(7)
    for _ in range(10):
        problem = random_problem(rng, max_tasks=12, max_pools=4)
        fastest = solve_min_latency(problem).latency_s
        problem = replace(problem, sla_seconds=fastest * rng.uniform(1.0, 1.5))

        found = solve(problem, solver="auto")

        assert found.sla_met
        assert found.cost_usd == pytest.approx(solve_milp(problem).cost_usd, rel=1e-9)


def test_the_heuristic_splits_prefill_and_decode_like_the_milp() -> None:
    assert solve_heuristic(paper_example()).assignment == {"prefill": "fast", "decode": "cheap"}


def test_the_heuristic_raises_infeasible_with_the_fastest_placement_it_found() -> None:
    with pytest.raises(Infeasible, match=r"0\.105 s, critical path prefill@fast -> decode@fast"):
        solve_heuristic(paper_example(sla_s=0.100))


def test_the_heuristic_places_a_thousand_tasks_on_twenty_pools_within_the_sla() -> None:
    rng = random.Random(7)
    pools = tuple(f"p{k}" for k in range(20))
    speed = {p: rng.uniform(0.5, 4.0) for p in pools}
    tasks = tuple(f"t{i}" for i in range(1000))
    options = {}
    for task in tasks:
        work = rng.uniform(0.01, 1.0)
        options[task] = {p: Option(work / speed[p], work * speed[p] ** 0.5) for p in pools}
    edges = tuple(
        Edge(tasks[rng.randrange(max(0, i - 30), i)], tasks[i], rng.uniform(0, 1))
        for i in range(1, 1000)
    )
    problem = PlacementProblem(
        tasks, pools, options, edges, lambda a, b, size: 0.0 if a == b else 0.01 * size
    )
    cheapest = problem.evaluate(cheapest_assignment(problem))
    fastest = solve(problem, objective="latency")  # auto: the heuristic at this size
    problem = replace(problem, sla_seconds=(fastest.latency_s + cheapest.latency_s) / 2)

    found = solve(problem)

    assert found.sla_met
    assert cheapest.cost_usd <= found.cost_usd < fastest.cost_usd


# --- the baselines ---------------------------------------------------------------------------


def test_a_homogeneous_baseline_is_absent_for_a_pool_that_cannot_run_some_task() -> None:
    problem = paper_example()
    problem = replace(problem, options={**problem.options, "decode": {"fast": Option(0.08, 0.07)}})

    names = [baseline.name for baseline in baselines(problem)]

    assert "homogeneous:fast" in names
    assert "homogeneous:cheap" not in names


def test_homogeneous_baselines_report_a_missed_sla_honestly() -> None:
    found = {baseline.name: baseline for baseline in baselines(paper_example())}

    assert found["homogeneous:fast"].solution.sla_met
    all_cheap = found["homogeneous:cheap"]
    assert all_cheap.solution is not None
    assert not all_cheap.solution.sla_met
    assert "misses the 0.12 s SLA" in all_cheap.reason


def test_cheapest_per_op_ignores_the_sla() -> None:
    found = {baseline.name: baseline for baseline in baselines(paper_example())}["cheapest-per-op"]

    assert found.solution.assignment == {"prefill": "cheap", "decode": "cheap"}
    assert not found.solution.sla_met


def test_per_task_sla_misses_the_end_to_end_sla_on_a_chain_where_each_task_alone_meets_it() -> None:
    problem = chain({"fast": 0.03, "cheap": 0.05}, {"fast": 2.0, "cheap": 1.0}, n=3, sla_s=0.10)

    per_task = {b.name: b for b in baselines(problem)}["per-task-sla"].solution

    assert set(per_task.assignment.values()) == {"cheap"}  # 50 ms each is within 100 ms
    assert per_task.latency_s == pytest.approx(0.15)
    assert not per_task.sla_met
    assert solve_milp(problem).sla_met  # while a placement that meets it exists


def test_per_task_sla_has_no_placement_when_a_task_alone_is_too_slow_everywhere() -> None:
    problem = chain({"fast": 0.03, "cheap": 0.05}, {"fast": 2.0, "cheap": 1.0}, n=3, sla_s=0.02)

    per_task = {b.name: b for b in baselines(problem)}["per-task-sla"]

    assert per_task.solution is None
    assert "no pool runs step0 within 0.02 s" in per_task.reason
