"""How fast the simulator runs: simulated events per second of wall time.

Workload: a claude-code trace (bursty arrivals) on four H100 replicas of Llama-3.1-8B with the
fixed-ttl lease policy and program-level FCFS, so every mechanism is exercised (chunked prefill,
prefix reuse, leases consulted every step, preemption, idle ticks).

An *event* is an arrival, a turn, a tool return, an idle lease tick or one engine step (one
iteration of continuous batching). Runs of pure decode steps with nothing to admit are resolved
in closed form as one heap event (`EngineConfig.max_span_steps`); the baseline, measured in the
same run, is the same simulator with one heap event per engine step (`max_span_steps=1`), whose
results must match to within the span approximation. Medians of `--repeats` runs.

    python benchmarks/sim_speed.py [--programs 300] [--repeats 3]

Writes benchmarks/results/sim_speed.json. Target: >= 100,000 events/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from hetagent import policies
from hetagent.backends.sim import traces
from hetagent.backends.sim.engine import EngineConfig
from hetagent.backends.sim.simulator import Config, Route, Server, Simulation

RESULTS = Path(__file__).parent / "results" / "sim_speed.json"
TARGET_EVENTS_PER_S = 100_000
MODEL = "llama-3.1-8b"


def config(engine: EngineConfig) -> Config:
    server = Server("h100", "h100", MODEL, 1, 4)
    return Config(
        [server],
        {MODEL: Route(server.key)},
        lambda: policies.get("scheduling", "program-fcfs"),
        lambda e: policies.get("kv_retention", "fixed-ttl", seconds=2.0),
        default_model=MODEL,
        engine=engine,
    )


def measure(trace: traces.Trace, engine: EngineConfig, repeats: int) -> dict:
    walls, summary = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        metrics = Simulation(trace, config(engine)).run()
        walls.append(time.perf_counter() - start)
        summary = metrics.summary()
    wall = statistics.median(walls)
    return {
        "wall_s": wall,
        "events": summary["events"],
        "heap_events": summary["heap_events"],
        "engine_steps": summary["engine_steps"],
        "events_per_s": summary["events"] / wall,
        "heap_events_per_s": summary["heap_events"] / wall,
        "simulated_s": summary["makespan_s"],
        "simulated_s_per_wall_s": summary["makespan_s"] / wall,
        "jct_mean_s": summary["jct_mean_s"],
        "jct_p99_s": summary["jct_p99_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=0.15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trace = traces.generate(
        "claude-code", args.programs, rate=args.rate, arrival="bursty", seed=0, model=MODEL
    )
    spans = measure(trace, EngineConfig(), args.repeats)
    steps = measure(trace, EngineConfig(max_span_steps=1), args.repeats)
    result = {
        "workload": f"claude-code x{args.programs} @ {args.rate}/s bursty, 4 x H100 {MODEL}, "
        "fixed-ttl 2 s, program-fcfs",
        "simulator": spans,
        "baseline_one_heap_event_per_step": steps,
        "speedup_vs_baseline": steps["wall_s"] / spans["wall_s"],
        "mean_jct_difference_vs_baseline": spans["jct_mean_s"] / steps["jct_mean_s"] - 1,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": spans["events_per_s"] >= TARGET_EVENTS_PER_S,
        "repeats": args.repeats,
    }
    print(f"{'':34}{'events/s':>12}{'heap ev/s':>12}{'sim s/wall s':>14}{'JCT mean':>10}")
    for name, r in (("simulator (decode spans)", spans), ("baseline (event per step)", steps)):
        print(
            f"{name:34}{r['events_per_s']:>12,.0f}{r['heap_events_per_s']:>12,.0f}"
            f"{r['simulated_s_per_wall_s']:>14,.0f}{r['jct_mean_s']:>10.1f}"
        )
    print(f"speedup {result['speedup_vs_baseline']:.1f}x; target >= {TARGET_EVENTS_PER_S:,} "
          f"events/s: {'met' if result['meets_target'] else 'NOT met'}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
