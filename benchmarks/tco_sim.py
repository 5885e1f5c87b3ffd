"""The planner's promise under queueing: each example agent's plan, fleet-sized for its traffic,
simulated against the all-H100 plan and the best single-device-type plan (issue 8, item 6).

For every example agent (examples/agents/*.yaml):
- ours: `plan_agent` on examples/clusters/mixed-generations.yaml;
- all-H100: `plan_agent` on examples/clusters/h100-only.yaml;
- best single type: `plan_agent` on each pool type of the mixed cluster alone (same prices), the
  one whose fleet costs least per hour.
Each is run with the fleet its plan sizes for the agent's declared traffic (replicas per
server from `plan.fleet`), on a trace of the agent's own programs (`agent_traces.from_agent`:
the planner's token counts and tool durations, the declared arrival rate and burstiness), with
kv=fixed-ttl and program-fcfs. Reported: SLA attainment (JCT <= spec.slo.p95LatencySeconds;
target >= 99% for ours), the fleet's TCO per program over the simulated period and its ratio
to ours, and the planner's modelled $/request next to it. Medians over seeds.

    python benchmarks/tco_sim.py [--programs 300] [--seeds 3]

Writes benchmarks/results/tco_sim.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import hetagent
from hetagent.backends.sim.agent_traces import from_agent
from hetagent.backends.sim.config import PolicySpec, agent_on_cluster
from hetagent.backends.sim.simulator import Simulation
from hetagent.planner.plan import PlanError, plan_agent
from hetagent.spec import Cluster

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results" / "tco_sim.json"
MIXED = ROOT / "examples/clusters/mixed-generations.yaml"
H100 = ROOT / "examples/clusters/h100-only.yaml"
POLICY = PolicySpec("fixed-ttl", "program-fcfs", (("seconds", 2.0),))
TARGET_SLA = 0.99
SINGLE_TYPE_DEVICES = 64  # a single-type cluster large enough for any example's fleet


def single_type_clusters(mixed: Cluster) -> list[Cluster]:
    out = []
    for pool in mixed.spec.pools:
        spec = mixed.spec.model_copy(
            update={"pools": [pool.model_copy(update={"count": SINGLE_TYPE_DEVICES})], "links": []}
        )
        out.append(
            mixed.model_copy(
                update={
                    "spec": spec,
                    "metadata": mixed.metadata.model_copy(update={"name": f"only-{pool.name}"}),
                }
            )
        )
    return out


def simulate(graph, cluster: Cluster, plan, programs: int, seeds: int) -> dict[str, Any]:
    config = agent_on_cluster(graph, cluster, POLICY, plan=plan)
    sla = graph.spec.slo.p95_latency_seconds if graph.spec.slo else None
    runs = []
    for seed in range(seeds):
        metrics = Simulation(from_agent(graph, programs, seed=seed), config).run()
        summary = metrics.summary(sla_seconds=sla)
        hours = summary["makespan_s"] / 3600
        completed = summary["completed"]
        summary["fleet_usd_per_program"] = (
            plan.fleet.usd_per_hour * hours / completed if completed else math.inf
        )
        runs.append(summary)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {
        "cluster": cluster.metadata.name,
        "fleet_usd_per_hour": plan.fleet.usd_per_hour,
        "fleet": {f.pool: dict(f.replicas) for f in plan.fleet.pools if f.devices_needed},
        "modelled_usd_per_request": plan.usd_per_request_at_fleet,
        "sla_seconds": sla,
        "sla_attainment": med("sla_attainment"),
        "jct_p50_s": med("jct_p50_s"),
        "jct_p95_s": med("jct_p95_s"),
        "jct_p99_s": med("jct_p99_s"),
        "simulated_usd_per_program": med("fleet_usd_per_program"),
        "failed_programs": med("failed"),
        "errors": runs[0]["errors"][:3],
        "utilization": runs[0]["utilization"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--agents", nargs="*", default=None, help="names (default: all)")
    args = parser.parse_args()
    started = time.perf_counter()
    mixed, h100 = hetagent.load(MIXED), hetagent.load(H100)
    agents = sorted((ROOT / "examples/agents").glob("*.yaml"))
    if args.agents:
        agents = [a for a in agents if a.stem in args.agents]
    results: dict[str, Any] = {}
    for path in agents:
        graph = hetagent.load(path)
        entry: dict[str, Any] = {}
        try:
            ours = plan_agent(graph, mixed)
            entry["ours"] = simulate(graph, mixed, ours, args.programs, args.seeds)
            try:
                entry["all_h100"] = simulate(
                    graph, h100, plan_agent(graph, h100), args.programs, args.seeds
                )
            except PlanError as exc:
                entry["all_h100"] = {"infeasible": str(exc)}
            singles = []
            for cluster in single_type_clusters(mixed):
                try:
                    singles.append((plan_agent(graph, cluster), cluster))
                except PlanError as exc:
                    entry.setdefault("single_type_infeasible", {})[cluster.metadata.name] = str(exc)
            plan, cluster = min(singles, key=lambda pc: pc[0].fleet.usd_per_hour)
            entry["best_single_type"] = simulate(graph, cluster, plan, args.programs, args.seeds)
        except Exception as exc:  # one agent failing is reported, the others still run
            entry["error"] = f"{type(exc).__name__}: {exc}"
            results[path.stem] = entry
            print(f"{path.stem}: {entry['error']}", file=sys.stderr)
            continue
        base = entry["ours"]["simulated_usd_per_program"]
        line = f"{path.stem:14} ours SLA {100 * entry['ours']['sla_attainment']:5.1f}%"
        line += f" ${base:.5f}/program"
        for key in ("all_h100", "best_single_type"):
            other = entry[key]
            if "infeasible" in other:
                line += f" | {key}: infeasible"
                continue
            ratio = other["simulated_usd_per_program"] / base
            other["tco_ratio_vs_ours"] = ratio if math.isfinite(ratio) else None
            line += f" | {key} ({other['cluster']}) x{ratio:.2f}"
            line += f" SLA {100 * other['sla_attainment']:5.1f}%"
        entry["ours"]["meets_sla_target"] = entry["ours"]["sla_attainment"] >= TARGET_SLA
        results[path.stem] = entry
        print(line)
    out = {
        "setup": {
            "programs": args.programs,
            "seeds": args.seeds,
            "policy": POLICY.label,
            "target_sla_attainment": TARGET_SLA,
        },
        "agents": results,
        "wall_s": time.perf_counter() - started,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(_finite(out), indent=2) + "\n")


def _finite(value: Any) -> Any:
    """JSON has no infinity: a fleet that completed nothing has no cost per program (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    main()
