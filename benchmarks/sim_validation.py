"""The simulator against the real embedded engine on the same small multi-turn workload
(issue 8, item 5): do the KV policies rank the same, and how far off is the simulated JCT?

The workload: programs of several turns (random token prompts that grow turn by turn with
the model's own output), short and long tool calls, arrivals close together, on a KV pool
small enough that holding a lease displaces others. It runs
- on the real engine (`LLMEngine`, dummy weights of SmolLM2-135M's shape, this CPU), driven
  on a virtual clock: each engine step advances it by the step's measured wall time, a tool
  call advances it by its duration without sleeping (the idle engine is stepped every
  `idle_tick`, as its async loop does while leases live);
- in the simulator configured alike: the same model, device `host-cpu` (this machine's probed
  figures), block size, KV pool size, token budget and sequence limit.
Each policy's mean JCT on both; Kendall's tau of the two rankings (target >= 0.9) and the
relative JCT error per policy. Median of `--repeats` real runs (the CPU is shared).

    python benchmarks/sim_validation.py [--repeats 1]

Writes benchmarks/results/sim_validation.json.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from hetagent import policies
from hetagent.backends.sim.engine import EngineConfig
from hetagent.backends.sim.simulator import Config, Route, Server, Simulation
from hetagent.backends.sim.traces import Program, Trace, Turn

RESULTS = Path(__file__).parent / "results" / "sim_validation.json"
MODEL = "smollm2-135m"
BLOCK = 16
NUM_BLOCKS = 40  # 640 tokens: about three programs' context
BUDGET, SEQS = 256, 32
IDLE_TICK = 0.05
TARGET_TAU = 0.9
POLICIES = [  # (label, kv policy, its options, scheduling)
    ("evict", "evict", {}, "fcfs"),
    ("fixed-ttl-0.2s", "fixed-ttl", {"seconds": 0.2}, "program-fcfs"),
    ("fixed-ttl-1s", "fixed-ttl", {"seconds": 1.0}, "program-fcfs"),
    ("fixed-ttl-5s", "fixed-ttl", {"seconds": 5.0}, "program-fcfs"),
]


def workload(seed: int = 0, programs: int = 6) -> Trace:
    rng = random.Random(seed)
    out = []
    for i in range(programs):
        turns = []
        for t in range(4):
            last = t == 3
            tool = None if last else rng.choice(["quick", "slow"])
            seconds = 0.0 if last else (0.05 if tool == "quick" else 1.5) * rng.uniform(0.5, 1.5)
            turns.append(Turn(rng.randint(80, 140) if t == 0 else rng.randint(10, 30),
                              rng.randint(6, 14), tool, seconds))  # fmt: skip
        out.append(Program(f"p{i}", i * 0.05, tuple(turns)))
    return Trace(tuple(out))


def run_real(trace: Trace, kv: str, options: dict, sched: str, seed: int = 0) -> dict[str, float]:
    from hetagent.backends.local.engine.batch import SamplingParams
    from hetagent.backends.local.engine.engine import LLMEngine
    from hetagent.backends.local.engine.models import load
    from hetagent.backends.local.engine.request import Hints

    clock = [0.0]
    engine = LLMEngine(
        load(f"dummy:{MODEL}"),
        num_blocks=NUM_BLOCKS,
        block_size=BLOCK,
        scheduling=sched,
        kv_retention=kv,
        kv_retention_options=options or None,
        max_num_batched_tokens=BUDGET,
        max_num_seqs=SEQS,
        clock=lambda: clock[0],
        ignore_eos=True,
    )
    rng = random.Random(seed)
    vocab = engine.config.vocab_size
    contexts: dict[str, list[int]] = {}
    by_request: dict[str, tuple[Program, int]] = {}
    outputs: dict[str, list[int]] = {}
    done: dict[str, float] = {}
    seq = itertools.count()
    events: list[tuple[float, int, Program, int]] = [
        (p.arrival, next(seq), p, 0) for p in trace.programs
    ]
    heapq.heapify(events)

    def submit(p: Program, i: int) -> None:
        turn = p.turns[i]
        tokens = contexts.setdefault(p.id, [])
        tokens.extend(rng.randrange(vocab) for _ in range(turn.input))
        rid = f"{p.id}@{i}"
        hints = Hints(
            program_id=p.id,
            turn=i + 1,
            last_turn=i == len(p.turns) - 1,
            tool=turn.tool,
            tool_seconds=turn.tool_seconds if turn.tool else None,
        )
        params = SamplingParams(max_tokens=turn.output)
        engine.add_request(list(tokens), params, hints, request_id=rid)
        by_request[rid] = (p, i)
        outputs[rid] = []

    while events or engine.has_unfinished():
        while events and events[0][0] <= clock[0]:
            _, _, p, i = heapq.heappop(events)
            submit(p, i)
        if engine.has_unfinished():
            started = time.perf_counter()
            results = engine.step()
            clock[0] += time.perf_counter() - started
            for out in results:
                outputs[out.request_id].extend(out.new_token_ids)
                if not out.finished:
                    continue
                p, i = by_request[out.request_id]
                contexts[p.id].extend(outputs[out.request_id])
                if i == len(p.turns) - 1:
                    done[p.id] = clock[0] - p.arrival
                else:
                    heapq.heappush(
                        events, (clock[0] + p.turns[i].tool_seconds, next(seq), p, i + 1)
                    )
        else:
            nxt = events[0][0]
            if engine.kv.leases:  # the async loop re-decides leases every idle tick
                clock[0] = min(nxt, clock[0] + IDLE_TICK)
                engine.step()
            else:
                clock[0] = nxt
    return {"jct_mean_s": statistics.fmean(done.values()), "programs": len(done)}


def run_sim(trace: Trace, kv: str, options: dict, sched: str) -> dict[str, float]:
    server = Server("cpu", "host-cpu", MODEL, 1, 1)
    engine = EngineConfig(block_size=BLOCK, max_num_batched_tokens=BUDGET, max_num_seqs=SEQS,
                          num_blocks=NUM_BLOCKS, idle_tick=IDLE_TICK)  # fmt: skip
    config = Config(
        [server],
        {MODEL: Route(server.key)},
        lambda: policies.get("scheduling", sched),
        lambda e: policies.get("kv_retention", kv, **options),
        default_model=MODEL,
        engine=engine,
    )
    m = Simulation(trace, config).run()
    return {"jct_mean_s": m.summary()["jct_mean_s"], "programs": m.completed}


def kendall_tau(a: list[float], b: list[float]) -> float:
    pairs = list(itertools.combinations(range(len(a)), 2))
    score = sum(
        (1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
        for i, j in pairs
    )
    return score / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    trace = workload()
    rows: dict[str, Any] = {}
    for label, kv, options, sched in POLICIES:
        real = [run_real(trace, kv, options, sched)["jct_mean_s"] for _ in range(args.repeats)]
        sim = run_sim(trace, kv, options, sched)["jct_mean_s"]
        rows[label] = {"real_jct_mean_s": statistics.median(real), "real_runs": real,
                       "sim_jct_mean_s": sim}  # fmt: skip
        rows[label]["jct_error"] = sim / rows[label]["real_jct_mean_s"] - 1
        print(f"{label:16} real {rows[label]['real_jct_mean_s']:7.3f} s   sim {sim:7.3f} s   "
              f"error {100 * rows[label]['jct_error']:+6.1f}%")  # fmt: skip
    labels = list(rows)
    tau = kendall_tau([rows[x]["real_jct_mean_s"] for x in labels],
                      [rows[x]["sim_jct_mean_s"] for x in labels])  # fmt: skip
    result = {
        "workload": f"{len(trace.programs)} programs x 4 turns, {MODEL} (dummy weights) on this "
        f"CPU, {NUM_BLOCKS} KV blocks of {BLOCK}",
        "policies": rows,
        "kendall_tau": tau,
        "target_tau": TARGET_TAU,
        "meets_target": tau >= TARGET_TAU,
        "mean_abs_jct_error": statistics.fmean(abs(r["jct_error"]) for r in rows.values()),
        "repeats": args.repeats,
    }
    print(f"Kendall tau {tau:.2f} (target >= {TARGET_TAU}); "
          f"mean |JCT error| {100 * result['mean_abs_jct_error']:.1f}%")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
