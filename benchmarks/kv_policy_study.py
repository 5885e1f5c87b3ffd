"""KV retention policies across agent traces and loads, in the simulator (issue 8, item 6).

Policies x traces {swe, claude-code, bfcl} x load {low, medium, high} x seeds, Llama-3.1-8B on a
pool of two H100s. Load is the number of programs in flight (closed loop, as Continuum's own
evaluation runs 64 concurrent agents): low fits every program's KV in memory with room to spare,
medium about fills it, high is twice that. Each run has `PROGRAMS_PER_SLOT` x concurrency
programs. Each KV policy runs with the scheduler it comes
with: `evict` with per-request FCFS (vLLM), `fixed-ttl` (2 s, Continuum's flat pin) with
program FCFS, `continuum` with Continuum's scheduler when registered (else program FCFS).
`lease` and the `oracle` (true tool durations; simulator only) run with continuum's scheduler,
so that their ratios measure the KV policy alone; `lease-plas` is lease with PLAS (Autellix's
least attained service), the pairing the research brief suggests.
Ratios are against `continuum` measured in the same run; a policy the registry does not have
yet (`hetagent.policies`) is reported as missing rather than run.

Also measured: sustainable programs/s at the same SLA (the highest rate at which 90% of swe
programs finish within 3x their unloaded time, by bisection), pinned-idle memory x time (all
of it, the target's measure, and the part while a request waited for memory), the
degradation when tool-duration tails double, and the gap to `evict` at low load.

    python benchmarks/kv_policy_study.py [--seeds 5] [--quick]

Writes benchmarks/results/kv_policy_study.json.
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

from hetagent import policies
from hetagent.backends.sim import traces
from hetagent.backends.sim.config import retention_policy
from hetagent.backends.sim.oracle import Oracle
from hetagent.backends.sim.simulator import Config, Route, Server, Simulation
from hetagent.policies import kv_retention, scheduling

RESULTS = Path(__file__).parent / "results" / "kv_policy_study.json"
MODEL = "llama-3.1-8b"
REPLICAS = 2
# programs in flight; two H100 replicas hold ~860k tokens of KV: ~60 swe programs (~14k tokens
# each on average), ~25 claude-code (~35k), ~280 bfcl (~3k)
LOADS: dict[str, dict[str, int]] = {
    "swe": {"low": 16, "medium": 64, "high": 128},
    "claude-code": {"low": 8, "medium": 32, "high": 64},
    "bfcl": {"low": 64, "medium": 256, "high": 512},
}
PROGRAMS_PER_SLOT = 3
TAIL_RATE = 0.3  # swe programs/s for the tail-doubling runs: queueing, below saturation
SLA_SLOWDOWN = 3.0  # a program meets its SLA within 3x its unloaded completion time
SLA_SHARE = 0.9  # a rate is sustainable while 90% of programs meet it
TARGETS = {
    "mean_jct_ratio": 0.85,  # lease/continuum, medium and high load
    "p99_jct_ratio": 0.75,
    "sustainable_rate_ratio": 1.2,
    "pinned_idle_ratio": 0.5,
    "tail_doubling_degradation": 0.10,
    "low_load_vs_evict": 0.02,
}


def _sched(preferred: str) -> str:
    return preferred if preferred in scheduling.POLICIES else "program-fcfs"


def candidates() -> list[dict[str, Any]]:
    """The policies to compare: (label, kv name, kv options, scheduling name)."""
    lease_sched = _sched("continuum")
    return [
        {"label": "evict", "kv": "evict", "options": {}, "sched": "fcfs"},
        {"label": "fixed-ttl", "kv": "fixed-ttl", "options": {"seconds": 2.0},
         "sched": "program-fcfs"},
        {"label": "continuum", "kv": "continuum", "options": {}, "sched": _sched("continuum")},
        {"label": "continuum-preview", "kv": "continuum-preview", "options": {},
         "sched": _sched("continuum")},
        {"label": "lease", "kv": "lease", "options": {}, "sched": lease_sched},
        {"label": "lease-plas", "kv": "lease", "options": {}, "sched": _sched("plas")},
        {"label": "oracle", "kv": "oracle", "options": {}, "sched": lease_sched},
    ]  # fmt: skip


def available(c: dict[str, Any]) -> str | None:
    """None if the policy can be built, else why not."""
    if c["kv"] == Oracle.name:
        return None
    if c["kv"] not in kv_retention.POLICIES:
        return f"kv_retention policy {c['kv']!r} is not registered in hetagent.policies yet"
    try:
        policies.get("kv_retention", c["kv"], **c["options"])
    except (TypeError, ValueError) as exc:
        return f"{c['kv']} with {c['options']}: {exc}"
    return None


def config(c: dict[str, Any]) -> Config:
    server = Server("h100", "h100", MODEL, 1, REPLICAS)

    def retention(engine):
        return retention_policy(c["kv"], c["options"], engine)

    return Config(
        [server],
        {MODEL: Route(server.key)},
        lambda: policies.get("scheduling", c["sched"]),
        retention,
        default_model=MODEL,
        tell_true_tool_seconds=c["kv"] == Oracle.name,
        usd_per_device_second={"h100": 0.0},
    )


def run(c: dict[str, Any], kind: str, programs: int, seed: int, *, rate: float | None = None,
        concurrency: int | None = None, tail_scale: float = 1.0) -> dict[str, Any]:  # fmt: skip
    trace = traces.generate(
        kind, programs, rate=rate, concurrency=concurrency, seed=seed, model=MODEL,
        tail_scale=tail_scale,
    )  # fmt: skip
    return Simulation(trace, config(c)).run().summary(slowdown=SLA_SLOWDOWN)


KEYS = ("jct_mean_s", "jct_p99_s", "sla_attainment", "pinned_idle_gb_s", "pinned_contended_gb_s",
        "kv_hit_rate", "reprefill_tokens", "preemptions", "throughput_programs_per_s")  # fmt: skip


def cell(c: dict[str, Any], kind: str, concurrency: int, seeds: int, per_slot: int,
         tail_scale: float = 1.0) -> dict[str, float]:  # fmt: skip
    """Means over seeds (p99 too: the mean of each seed's p99)."""
    runs = [
        run(c, kind, per_slot * concurrency, s, concurrency=concurrency, tail_scale=tail_scale)
        for s in range(seeds)
    ]
    return {k: statistics.fmean(r[k] for r in runs) for k in KEYS}


def sustainable_rate(c: dict[str, Any], seeds: int, programs: int, steps: int) -> float:
    """The highest swe arrival rate at which SLA_SHARE of programs meet the SLA (bisection on
    a log scale between 0.02 and 5 programs/s)."""
    lo, hi = math.log(0.02), math.log(5.0)

    def ok(rate: float) -> bool:
        return all(
            run(c, "swe", programs, s, rate=rate)["sla_attainment"] >= SLA_SHARE
            for s in range(seeds)
        )

    if not ok(math.exp(lo)):
        return 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(math.exp(mid)) else (lo, mid)
    return math.exp(lo)


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer programs, 2 seeds (CI)")
    args = parser.parse_args()
    seeds = 2 if args.quick else args.seeds
    per_slot = 2 if args.quick else PROGRAMS_PER_SLOT
    started = time.perf_counter()

    policy_rows = candidates()
    missing = {c["label"]: why for c in policy_rows if (why := available(c))}
    active = [c for c in policy_rows if c["label"] not in missing]
    baseline = "continuum" if "continuum" not in missing else "evict"

    grid: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for kind, loads in LOADS.items():
        for load, concurrency in loads.items():
            for c in active:
                result = cell(c, kind, concurrency, seeds, per_slot)
                grid.setdefault(kind, {}).setdefault(load, {})[c["label"]] = result
                print(
                    f"{kind:12} {load:7} {c['label']:18} JCT mean {result['jct_mean_s']:8.1f} s"
                    f"  p99 {result['jct_p99_s']:8.1f} s"
                    f"  SLA {100 * result['sla_attainment']:5.1f}%"
                    f"  pinned {result['pinned_idle_gb_s']:9.1f} GB*s",
                    file=sys.stderr,
                )

    ratios: dict[str, Any] = {}
    for kind, loads in grid.items():
        for load, cells in loads.items():
            base = cells[baseline]
            ratios.setdefault(kind, {})[load] = {
                label: {
                    "mean_jct_ratio": ratio(r["jct_mean_s"], base["jct_mean_s"]),
                    "p99_jct_ratio": ratio(r["jct_p99_s"], base["jct_p99_s"]),
                    "pinned_idle_ratio": ratio(r["pinned_idle_gb_s"], base["pinned_idle_gb_s"]),
                    "pinned_contended_ratio": ratio(
                        r["pinned_contended_gb_s"], base["pinned_contended_gb_s"]
                    ),
                }
                for label, r in cells.items()
            }

    result: dict[str, Any] = {
        "setup": {
            "model": MODEL,
            "pool": f"{REPLICAS} x h100 (one replica each)",
            "concurrency": LOADS,
            "programs_per_slot": per_slot,
            "seeds": seeds,
            "sla": f"JCT <= {SLA_SLOWDOWN} x unloaded JCT",
            "policies": {
                c["label"]: {"kv": c["kv"], "options": c["options"], "sched": c["sched"]}
                for c in policy_rows
            },
        },
        "missing_policies": missing,
        "baseline": baseline,
        "grid": grid,
        f"ratios_vs_{baseline}": ratios,
        "targets": TARGETS,
    }

    if "lease" in missing or "continuum" in missing:
        result["lease_vs_continuum"] = {
            "mean_jct_ratio": None,
            "p99_jct_ratio": None,
            "reason": "; ".join(missing.get(x, "") for x in ("lease", "continuum") if x in missing),
        }
    else:
        lease = {c["label"]: c for c in active}["lease"]
        cont = {c["label"]: c for c in active}["continuum"]
        pressured = [(k, lo) for k in grid for lo in ("medium", "high")]
        mean_r = geomean([ratios[k][lo]["lease"]["mean_jct_ratio"] for k, lo in pressured])
        p99_r = geomean([ratios[k][lo]["lease"]["p99_jct_ratio"] for k, lo in pressured])
        pinned_r = geomean([ratios[k][lo]["lease"]["pinned_idle_ratio"] for k, lo in pressured])
        contended_r = geomean(
            [ratios[k][lo]["lease"]["pinned_contended_ratio"] for k, lo in pressured]
        )
        low_vs_evict = max(
            grid[k]["low"]["lease"]["jct_mean_s"] / grid[k]["low"]["evict"]["jct_mean_s"] - 1
            for k in grid
        )
        # open loop at a fixed rate (closed loop would lighten the load as tools get longer),
        # measured as slowdown against each program's unloaded time (which doubled tails raise)
        tails: dict[str, Any] = {}
        for label, c in (("lease", lease), ("continuum", cont)):
            slowdowns = {}
            for scale in (1.0, 2.0):
                runs = [
                    run(c, "swe", 100 * per_slot, s, rate=TAIL_RATE, tail_scale=scale)
                    for s in range(seeds)
                ]
                slowdowns[scale] = statistics.fmean(r["jct_slowdown_mean"] for r in runs)
            tails[label] = {
                "rate": TAIL_RATE,
                "mean_slowdown": slowdowns[1.0],
                "mean_slowdown_tails_doubled": slowdowns[2.0],
                "degradation": slowdowns[2.0] / slowdowns[1.0] - 1,
            }
        steps = 4 if args.quick else 6
        bisect_seeds = min(seeds, 2)
        rates = {
            label: sustainable_rate(c, bisect_seeds, 100 * per_slot, steps)
            for label, c in (("lease", lease), ("continuum", cont))
        }
        result["lease_vs_continuum"] = {
            "mean_jct_ratio": mean_r,
            "p99_jct_ratio": p99_r,
            "pinned_idle_ratio": pinned_r,
            # no target: the part of the pinned memory x time while a request waited for memory
            "pinned_contended_ratio": contended_r,
            "sustainable_rate": rates,
            "sustainable_rate_ratio": ratio(rates["lease"], rates["continuum"]),
            "tail_doubling": tails,
            "low_load_vs_evict": low_vs_evict,
            "over": "geometric mean over {swe, claude-code, bfcl} x {medium, high}",
        }
        met = result["lease_vs_continuum"]
        result["targets_met"] = {
            "mean_jct_ratio": mean_r is not None and mean_r <= TARGETS["mean_jct_ratio"],
            "p99_jct_ratio": p99_r is not None and p99_r <= TARGETS["p99_jct_ratio"],
            "sustainable_rate_ratio": (met["sustainable_rate_ratio"] or 0)
            >= TARGETS["sustainable_rate_ratio"],
            "pinned_idle_ratio": pinned_r is not None and pinned_r <= TARGETS["pinned_idle_ratio"],
            "tail_doubling_degradation": tails["lease"]["degradation"]
            <= TARGETS["tail_doubling_degradation"],
            "low_load_vs_evict": low_vs_evict <= TARGETS["low_load_vs_evict"],
        }
    result["wall_s"] = time.perf_counter() - started
    _print(result, baseline)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


def _print(result: dict[str, Any], baseline: str) -> None:
    ratios = result[f"ratios_vs_{baseline}"]
    print(f"mean JCT / p99 JCT relative to {baseline} (same run):")
    for kind, loads in ratios.items():
        for load, cells in loads.items():
            row = "  ".join(
                f"{label} {r['mean_jct_ratio']:.2f}/{r['p99_jct_ratio']:.2f}"
                for label, r in cells.items()
                if r["mean_jct_ratio"] is not None and r["p99_jct_ratio"] is not None
            )
            print(f"  {kind:12} {load:7} {row}")
    if result["missing_policies"]:
        for label, why in result["missing_policies"].items():
            print(f"  not run: {label}: {why}")
    print("lease_vs_continuum:", json.dumps(result["lease_vs_continuum"], default=str)[:400])


if __name__ == "__main__":
    main()
