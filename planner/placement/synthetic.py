"""Random placement problems, for the tests and the planner_quality benchmark."""

from __future__ import annotations

import random

from hetagent.planner.placement.problem import Edge, Option, PlacementProblem


def random_problem(
    rng: random.Random, *, tasks: int, pools: int, density: tuple[float, float] = (0.1, 0.5)
) -> PlacementProblem:
    """A random DAG: pools with a speed and a price (faster is dearer, not always), some tasks
    unable to run on some pools, and transfer time (and, half the time, money) per byte and pool
    pair; the edge density is drawn from `density`. No SLA: callers set one."""
    names = tuple(f"t{i}" for i in range(tasks))
    pool_names = tuple(f"p{k}" for k in range(pools))
    speed = {p: rng.uniform(0.5, 4.0) for p in pool_names}
    price = {p: speed[p] ** rng.uniform(1.0, 2.0) * rng.uniform(0.7, 1.3) for p in pool_names}
    options = {}
    for task in names:
        work = rng.uniform(1, 10)
        runnable = [p for p in pool_names if rng.random() < 0.8] or [rng.choice(pool_names)]
        options[task] = {p: Option(work / speed[p], work / speed[p] * price[p]) for p in runnable}
    edge_density = rng.uniform(*density)
    edges = tuple(
        Edge(names[i], names[j], rng.uniform(0, 10))
        for j in range(len(names))
        for i in range(j)
        if rng.random() < edge_density
    )
    link = {
        (a, b): 0.0 if a == b else rng.uniform(0.02, 0.3) for a in pool_names for b in pool_names
    }
    money = rng.choice([0.0, 0.02])
    return PlacementProblem(
        names,
        pool_names,
        options,
        edges,
        transfer_seconds=lambda a, b, size: link[a, b] * size,
        transfer_cost_usd=lambda a, b, size: 0.0 if a == b else money * size,
    )
