"""How close the placement heuristic comes to the exact MILP, and how fast both are.

Two families of random graphs (<= 30 tasks, <= 10 pools), each SLA drawn between the fastest
placement's latency (the MILP's) and the cheapest-per-op placement's; graphs whose cheapest
placement is also the fastest (nothing to trade) are drawn again:

- agent: agent DAGs on pools of catalog devices (planner/catalog/devices.csv, every device with
  a rent price; each pool's price jittered 0.6-1.4x per provider). LLM calls (prefill bound by
  compute, then decode bound by bandwidth, on the devices whose memory holds the model), tool
  calls (CPU pools only) and retrievals (anywhere), each step reading one or two earlier ones.
  Latency is the planner's cost model (planner/costmodel.py, efficiency priors), cost is latency
  times the pool's $/s over the batch the request shares; KV caches cross pools at 200 Gb/s.
- stress: dense random DAGs whose transfers take as long as the tasks and sometimes cost money,
  with speed and price loosely correlated: the hard case for a local search.

Prints the heuristic's cost gap to the MILP optimum and both solve times per family, then the
heuristic alone on --large agent graphs of 1,000 tasks over 20 pools (median of --runs each).
Writes benchmarks/results/planner_quality.json (top-level figures: the agent family).
Targets: median gap <= 2 %, max <= 5 %, 1,000 tasks in under 1 s.

    python benchmarks/planner_quality.py [--instances 60] [--large 3] [--runs 3] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

from hetagent.planner.catalog import load_catalog
from hetagent.planner.costmodel import CostModel
from hetagent.planner.placement import (
    Edge,
    Infeasible,
    Option,
    PlacementProblem,
    Solution,
    cheapest_assignment,
    solve_heuristic,
    solve_milp,
    solve_min_latency,
    solve_min_latency_heuristic,
)
from hetagent.planner.placement.synthetic import random_problem
from hetagent.planner.workload import Work, kv_bytes_per_token, mean_context

RESULTS = Path(__file__).parent / "results" / "planner_quality.json"
CATALOG = load_catalog()
DEVICES = [d for d in CATALOG.devices.values() if d.rent_usd_per_hour and d.bf16_tflops]
MODELS = [
    CATALOG.models[m] for m in ("llama-3.2-3b", "llama-3.1-8b", "qwen2.5-32b", "llama-3.1-70b")
]
COST_MODEL = CostModel(CATALOG)  # the planner's roofline and efficiency priors
LINK_BYTES_S, LINK_FIXED_S = 25e9, 50e-6  # 200 Gb/s between pools
DECODE_BATCH = 16  # requests sharing a decode step (and its device-hours)


def make_pools(count: int, rng: random.Random) -> list[tuple[str, object, float]]:
    """(name, device, $/s): distinct devices first, then the same devices again; every pool's
    price is the catalog's times 0.6-1.4 (providers, discounts), so no device wins everywhere."""
    cpus = [d for d in DEVICES if d.kind == "cpu"]
    chosen = [rng.choice(cpus)]  # tools need a CPU pool
    others = [d for d in DEVICES if d is not chosen[0]]
    rng.shuffle(others)
    chosen += others[: count - 1]
    while len(chosen) < count:
        chosen.append(rng.choice(DEVICES))
    pools, seen = [], {}
    for device in chosen:
        seen[device.id] = seen.get(device.id, 0) + 1
        name = device.id if seen[device.id] == 1 else f"{device.id}-{seen[device.id]}"
        pools.append((name, device, device.rent_usd_per_hour * rng.uniform(0.6, 1.4) / 3600))
    return pools


def llm_options(model, prompt: int, output: int, pools) -> tuple[dict, dict]:
    """Prefill and decode options on the pools one device of which holds the model and the KV
    of a full decode batch; latencies from the planner's cost model."""
    prefill, decode = {}, {}
    context = mean_context(prompt, output)
    for name, device, dollars_s in pools:
        if (
            COST_MODEL.min_devices(
                model, device, batch=DECODE_BATCH, context=prompt + output, limit=1
            )
            is None
        ):
            continue
        seconds = COST_MODEL.prefill(model, device, prompt).seconds
        prefill[name] = Option(seconds, seconds * dollars_s)
        timing = COST_MODEL.decode_step(model, device, context, batch=DECODE_BATCH)
        seconds = output * timing.seconds
        decode[name] = Option(seconds, seconds * dollars_s / DECODE_BATCH)
    return prefill, decode


def make_problem(tasks_wanted: int, pool_count: int, rng: random.Random) -> PlacementProblem:
    """A random agent graph of about `tasks_wanted` tasks (no SLA yet)."""
    pools = make_pools(pool_count, rng)
    tasks: list[str] = []
    options: dict[str, dict[str, Option]] = {}
    edges: list[Edge] = []
    outputs: list[str] = []  # each step's last task, which later steps read
    while len(tasks) < tasks_wanted:
        prefill: dict[str, Option] = {}
        reads = sorted(set(rng.sample(outputs[-20:], min(len(outputs[-20:]), rng.randint(1, 2)))))
        kind = rng.choices(["llm", "tool", "retrieve"], [5, 3, 2])[0]
        step = f"s{len(outputs)}"
        if kind == "llm" and len(tasks) + 2 <= tasks_wanted:
            model = rng.choice(MODELS)
            prompt, output = rng.randint(200, 4000), rng.randint(20, 800)
            prefill, decode = llm_options(model, prompt, output, pools)
        if kind == "llm" and not prefill:  # no room for two tasks, or no pool holds the model
            kind = "tool"
        if kind == "llm":
            options[f"{step}.prefill"], options[f"{step}.decode"] = prefill, decode
            tasks += [f"{step}.prefill", f"{step}.decode"]
            kv = kv_bytes_per_token(model) * prompt
            edges.append(Edge(f"{step}.prefill", f"{step}.decode", kv))
            first, last = f"{step}.prefill", f"{step}.decode"
        elif kind == "tool":
            wait, work = rng.uniform(0.02, 1.0), rng.uniform(0.005, 0.2)
            options[step] = {
                name: Option(wait + work, (wait + work) * dollars_s / (device.cores or 32))
                for name, device, dollars_s in pools
                if device.kind == "cpu"
            }
            tasks.append(step)
            first = last = step
        else:
            index_bytes = rng.uniform(0.5, 20) * 1e9
            options[step] = {}
            for name, device, dollars_s in pools:
                scan = Work(flops=0.0, bytes=index_bytes)
                t = COST_MODEL.time(scan, device, "decode").seconds
                options[step][name] = Option(t, t * dollars_s)
            tasks.append(step)
            first = last = step
        edges += [Edge(source, first, rng.uniform(1e3, 64e3)) for source in reads]
        outputs.append(last)

    def transfer_seconds(a: str, b: str, size: float) -> float:
        return 0.0 if a == b else LINK_FIXED_S + size / LINK_BYTES_S

    return PlacementProblem(
        tuple(tasks), tuple(p[0] for p in pools), options, tuple(edges), transfer_seconds
    )


def with_sla(
    problem: PlacementProblem, fastest_s: float, rng: random.Random
) -> PlacementProblem | None:
    """The SLA somewhere between the fastest placement's latency and the cheapest-per-op one's;
    None when the cheapest is already the fastest (no trade-off to make)."""
    cheapest_s = problem.evaluate(cheapest_assignment(problem)).latency_s
    if cheapest_s <= fastest_s * (1 + 1e-6):
        return None
    sla = fastest_s + rng.uniform(0.05, 0.95) * (cheapest_s - fastest_s)
    return replace(problem, sla_seconds=sla)


def timed(solve, problem: PlacementProblem) -> tuple[Solution | None, float]:
    """(solution or None if Infeasible, seconds)."""
    start = time.perf_counter()
    try:
        result = solve(problem)
    except Infeasible:
        result = None
    return result, time.perf_counter() - start


def stress_problem(tasks_wanted: int, pool_count: int, rng: random.Random) -> PlacementProblem:
    """A dense random DAG with transfers as slow as the tasks (see the module docstring)."""
    return random_problem(rng, tasks=tasks_wanted, pools=pool_count, density=(0.1, 0.4))


def versus_milp(make, count: int, seed: int) -> dict:
    """Heuristic vs MILP on `count` graphs of up to 30 tasks and 10 pools with a trade-off."""
    rng = random.Random(seed)
    gaps, milp_times, heuristic_times, skipped, missed = [], [], [], 0, 0
    while len(milp_times) < count:
        problem = make(rng.randint(4, 30), rng.randint(2, 10), rng)
        problem = with_sla(problem, solve_min_latency(problem).latency_s, rng)
        if problem is None:
            skipped += 1
            continue
        exact, milp_s = timed(solve_milp, problem)
        found, heuristic_s = timed(solve_heuristic, problem)
        milp_times.append(milp_s)
        heuristic_times.append(heuristic_s)
        if found is None:
            missed += 1
        else:
            gaps.append(100 * (found.cost_usd - exact.cost_usd) / exact.cost_usd)
    return {
        "instances": count,
        "skipped_no_tradeoff": skipped,
        "heuristic_infeasible": missed,  # the MILP met the SLA, the heuristic gave up
        "median_gap_pct": statistics.median(gaps),
        "max_gap_pct": max(gaps),
        "within_2pct": sum(gap <= 2 for gap in gaps),
        "within_5pct": sum(gap <= 5 for gap in gaps),
        "milp_median_seconds": statistics.median(milp_times),
        "milp_max_seconds": max(milp_times),
        "heuristic_median_seconds": statistics.median(heuristic_times),
        "heuristic_max_seconds": max(heuristic_times),
    }


def large_instances(count: int, runs: int, seed: int) -> dict:
    """The heuristic alone on 1,000-task agent graphs over 20 pools (SLA from its own fastest)."""
    rng = random.Random(seed + 1)
    seconds, costs = [], []
    while len(seconds) < count:
        problem = make_problem(1000, 20, rng)
        problem = with_sla(problem, solve_min_latency_heuristic(problem).latency_s, rng)
        if problem is None:
            continue
        times = [timed(solve_heuristic, problem) for _ in range(runs)]
        seconds.append(statistics.median(t for _, t in times))
        found, cheapest = times[0][0], problem.evaluate(cheapest_assignment(problem))
        costs.append(None if found is None else round(found.cost_usd / cheapest.cost_usd, 3))
    return {
        "graphs": count,
        "runs": runs,
        "heuristic_seconds_1000_ops": statistics.median(seconds),
        "heuristic_seconds_each": [round(s, 3) for s in seconds],
        "cost_vs_cheapest_per_op": costs,  # None: the heuristic found no placement in the SLA
    }


def rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=60, help="graphs per family")
    parser.add_argument("--large", type=int, default=3, help="1,000-task graphs")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    agent = versus_milp(make_problem, args.instances, args.seed)
    stress = versus_milp(stress_problem, args.instances, args.seed)
    large = large_instances(args.large, args.runs, args.seed)
    results = rounded(agent | {"stress": stress} | large)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{'family':<8}{'graphs':>7}{'gap median':>12}{'gap max':>9}{'<=2 %':>7}{'<=5 %':>7}"
        f"{'gave up':>9}{'MILP s median/max':>19}{'heuristic s median/max':>24}"
    )
    for name, r in (("agent", agent), ("stress", stress)):
        milp_s = f"{r['milp_median_seconds']:.4f}/{r['milp_max_seconds']:.3f}"
        heuristic_s = f"{r['heuristic_median_seconds']:.4f}/{r['heuristic_max_seconds']:.3f}"
        print(
            f"{name:<8}{r['instances']:>7}{r['median_gap_pct']:>10.2f} %{r['max_gap_pct']:>7.2f} %"
            f"{r['within_2pct']:>7}{r['within_5pct']:>7}{r['heuristic_infeasible']:>9}"
            f"{milp_s:>19}{heuristic_s:>24}"
        )
    print(
        f"1,000 tasks x 20 pools, heuristic: {large['heuristic_seconds_1000_ops']:.3f} s "
        f"(median of {args.large} graphs, each the median of {args.runs} runs: "
        f"{large['heuristic_seconds_each']})"
    )


if __name__ == "__main__":
    main()
