"""KV retention policies on the real engine: a multi-turn agent workload that does not fit.

Several programs run concurrently on one embedded engine (SmolLM2-135M on the CPU). Each turn
sends the whole conversation so far plus a new observation, decodes a short reply, then the
program "runs a tool" (a pause drawn from a heavy-tailed mix: mostly short, some long) before its
next turn. The engine's KV pool is sized so that not every program's context fits at once, so
what a policy holds, demotes or drops decides how much prefill is recomputed and how long
programs wait. Per policy, against `evict` (vLLM's behaviour) in the same run: mean and p95 job
completion time and the prompt tokens recomputed (prompt tokens minus those found in the cache).
Medians over repeats. Writes benchmarks/results/kv_policies_real.json.

    python benchmarks/kv_policies_real.py [--programs 6] [--turns 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

from hetagent.backends.local.engine.batch import SamplingParams
from hetagent.backends.local.engine.engine import AsyncLLMEngine, LLMEngine
from hetagent.backends.local.engine.models import load
from hetagent.backends.local.engine.request import Hints

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "kv_policies_real.json"
POLICIES = ("evict", "fixed-ttl", "continuum", "continuum-preview", "lease")
WORDS = ["the", "tool", "returned", "a", "listing", "of", "files", "with", "sizes", "and", "owners"]


def tool_seconds(rng: random.Random) -> float:
    """Agent tool durations are mostly short with a long tail (kv-leases.md): 70% 0.1-0.5 s,
    25% 0.5-2 s, 5% 3-5 s."""
    draw = rng.random()
    if draw < 0.70:
        return rng.uniform(0.1, 0.5)
    if draw < 0.95:
        return rng.uniform(0.5, 2.0)
    return rng.uniform(3.0, 5.0)


def workload(programs: int, turns: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": f"p{i}",
            "start": rng.uniform(0.0, 1.0),
            "system": f"You are agent {i}. " + " ".join(rng.choices(WORDS, k=100)),
            "observations": [" ".join(rng.choices(WORDS, k=60)) for _ in range(turns)],
            "tools": [tool_seconds(rng) for _ in range(turns)],
        }
        for i in range(programs)
    ]


async def run_program(engine: AsyncLLMEngine, program: dict, reply_tokens: int) -> float:
    await asyncio.sleep(program["start"])
    started = time.perf_counter()
    messages = [{"role": "system", "content": program["system"]}]
    turns = len(program["observations"])
    for turn, (observation, pause) in enumerate(
        zip(program["observations"], program["tools"], strict=True), start=1
    ):
        messages.append({"role": "user", "content": observation})
        last = turn == turns
        hints = Hints(
            program_id=program["id"],
            turn=turn,
            last_turn=last,
            tool=None if last else "bash",
            tool_seconds=None if last else pause,
        )
        params = SamplingParams(max_tokens=reply_tokens, temperature=0.0)
        text = []
        async for out in engine.generate(messages=messages, params=params, hints=hints):
            text.append(out.text)
        messages.append({"role": "assistant", "content": "".join(text)})
        if not last:
            await asyncio.sleep(pause)  # the tool runs; the program is away
    return time.perf_counter() - started


async def one_policy(loaded, policy: str, programs: list[dict], kv_mb: float, reply: int):
    engine = LLMEngine(loaded, kv_memory_mb=kv_mb, kv_retention=policy, ignore_eos=True)
    running = AsyncLLMEngine(engine)
    running.start()
    try:
        jct = await asyncio.gather(*(run_program(running, p, reply) for p in programs))
    finally:
        running.shutdown()
    counters = engine.counters
    return {
        "jct_mean_s": statistics.mean(jct),
        "jct_p95_s": sorted(jct)[max(0, round(0.95 * len(jct)) - 1)],
        "prompt_tokens": counters.prompt_tokens,
        "recomputed_prompt_tokens": counters.prompt_tokens - counters.cached_prompt_tokens,
        "preemptions": counters.preemptions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=6)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--reply-tokens", type=int, default=12)
    parser.add_argument("--kv-memory-mb", type=float, default=48.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    loaded = load("smollm2-135m")
    programs = workload(args.programs, args.turns, args.seed)
    runs: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
    for _ in range(args.repeats):
        for policy in POLICIES:  # interleaved, so drift on a shared machine hits all alike
            runs[policy].append(
                asyncio.run(
                    one_policy(loaded, policy, programs, args.kv_memory_mb, args.reply_tokens)
                )
            )
    summary = {
        policy: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for policy, results in runs.items()
    }
    base = summary["evict"]
    for figures in summary.values():
        figures["jct_mean_vs_evict"] = round(figures["jct_mean_s"] / base["jct_mean_s"], 3)
        figures["jct_p95_vs_evict"] = round(figures["jct_p95_s"] / base["jct_p95_s"], 3)
        figures["recomputed_vs_evict"] = round(
            figures["recomputed_prompt_tokens"] / max(1, base["recomputed_prompt_tokens"]), 3
        )
    result = {
        "benchmark": "kv_policies_real",
        "baseline": "evict (free at request end, as vLLM), same workload, same run",
        "model": "smollm2-135m",
        "programs": args.programs,
        "turns": args.turns,
        "kv_memory_mb": args.kv_memory_mb,
        "repeats": args.repeats,
        "policies": summary,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
