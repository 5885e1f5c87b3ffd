"""What the runtime itself costs per operator, against one Ray task per operator.

Three measurements, in one run, with backends that answer at once (tools and LLM calls return
immediately), so only the runtime's own work is timed:

1. a chain of tool steps run alone: microseconds per step, each one checkpointed (durable:
   the runtime commits before a tool acts, so a chain commits at every step); and a chain of
   template steps, which are not checkpointed: the dispatch alone;
2. the same chain as many concurrent programs: microseconds per step when checkpoints of
   many runs share a commit;
3. the same chain as one Ray task per step (`f.remote(previous)`, a local Ray with 2 CPUs),
   the baseline;
4. 10,000 concurrent programs whose tool calls complete on an event the benchmark sets once
   all are in flight (no sleeps): completion and peak RSS.

Medians of several repeats. Writes benchmarks/results/runtime_overhead.json.

    python benchmarks/runtime_overhead.py [--steps 100] [--programs 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import hetagent
from hetagent.backends.base import ChatResult, ToolResult
from hetagent.compiler import compile_plan
from hetagent.orchestrator.runtime import Runtime
from hetagent.orchestrator.store import RunStore
from hetagent.planner.plan import plan_agent

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "runtime_overhead.json"
LOCAL = HERE.parent / "examples/clusters/local.yaml"
TARGETS = {"us_per_op": 20.0, "ray_ratio": 50.0, "peak_rss_mb_10k": 2048.0}


class InstantBackend:
    """Answers every call at once; a tool may wait for `gate` (the 10,000-program test)."""

    name = "instant"

    def __init__(self, gate: asyncio.Event | None = None, expect: int = 0):
        self.gate, self.expect = gate, expect
        self.waiting = 0
        self.all_waiting = asyncio.Event()

    async def start(self, pools):
        pass

    async def close(self):
        pass

    async def chat(self, call):
        return ChatResult("ok", prompt_tokens=1, output_tokens=1)

    async def release(self, program, model, pool):
        pass

    async def retrieve(self, call):
        return []

    async def tool(self, call):
        if self.gate is not None:
            self.waiting += 1
            if self.waiting == self.expect:
                self.all_waiting.set()
            await self.gate.wait()
        return ToolResult(True, "ok", exit_code=0, stdout="ok")


def chain_plan(
    steps: int, workdir: Path, kind: str = "tool", call: str = "tool: shell, args: {command: step}"
):
    """A chain of tool steps (each `call`, after the one before), or of template steps (each
    reading the one before)."""
    if kind == "tool":
        nodes = [
            f"    - {{name: t{i}, type: tool, {call}"
            + (f", dependsOn: [t{i - 1}]" if i else "")
            + "}"
            for i in range(steps)
        ]
    else:
        nodes = [
            f"    - {{name: t{i}, type: transform, template: 'x"
            + (f"${{nodes.t{i - 1}.outputs.text}}" if i else "")
            + "'}"
            for i in range(steps)
        ]
    text = (
        "apiVersion: hetagent.dev/v1alpha1\nkind: AgentGraph\nmetadata: {name: chain}\n"
        "spec:\n  nodes:\n" + "\n".join(nodes) + "\n  outputs:\n"
        f"    out: ${{nodes.t{steps - 1}.outputs.text}}\n"
    )
    path = workdir / f"{kind}-chain.yaml"
    path.write_text(text)
    graph, cluster = hetagent.load(path), hetagent.load(LOCAL)
    return compile_plan(graph, plan_agent(graph, cluster).placement)


async def time_alone(plan, steps: int, workdir: Path, repeats: int) -> float:
    runtime = Runtime(InstantBackend(), RunStore(f"sqlite:///{workdir / 'alone.db'}"))
    await runtime.run(plan, {})  # warm up: imports, the store's tables
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = await runtime.run(plan, {})
        samples.append((time.perf_counter() - started) / steps * 1e6)
        assert result.status == "succeeded", result.error
    return statistics.median(samples)


async def time_concurrent(plan, steps: int, programs: int, workdir: Path, repeats: int) -> float:
    runtime = Runtime(InstantBackend(), RunStore(f"sqlite:///{workdir / 'many.db'}"))
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        ids = [await runtime.submit(plan, {}) for _ in range(programs)]
        results = [await runtime.wait(run_id) for run_id in ids]
        samples.append((time.perf_counter() - started) / (steps * programs) * 1e6)
        assert {r.status for r in results} == {"succeeded"}
    return statistics.median(samples)


def time_ray(steps: int, repeats: int) -> float:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:

        @ray.remote
        def step(previous: str) -> str:
            return "ok"

        ray.get(step.remote("warm"))
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            value = "start"
            for _ in range(steps):
                value = step.remote(value)  # each step reads the one before it
            ray.get(value)
            samples.append((time.perf_counter() - started) / steps * 1e6)
        return statistics.median(samples)
    finally:
        ray.shutdown()


async def many_programs(count: int, workdir: Path) -> dict:
    plan = chain_plan(2, workdir)
    gate = asyncio.Event()
    backend = InstantBackend(gate, expect=count)
    runtime = Runtime(backend, RunStore(f"sqlite:///{workdir / 'programs.db'}"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    ids = [await runtime.submit(plan, {}) for _ in range(count)]
    await backend.all_waiting.wait()  # every program is inside its first tool call
    in_flight = backend.waiting
    gate.set()
    results = [await runtime.wait(run_id) for run_id in ids]
    return {
        "programs": count,
        "in_flight_at_once": in_flight,
        "completed": sum(r.status == "succeeded" for r in results),
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--programs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        plan = chain_plan(args.steps, workdir)
        alone = asyncio.run(time_alone(plan, args.steps, workdir, args.repeats))
        templates = chain_plan(args.steps, workdir, kind="template")
        dispatch = asyncio.run(time_alone(templates, args.steps, workdir, args.repeats))
        concurrent = asyncio.run(
            time_concurrent(plan, args.steps, args.concurrent, workdir, max(1, args.repeats // 2))
        )
        ray_us = time_ray(args.steps, args.repeats)
        programs = asyncio.run(many_programs(args.programs, workdir))
    result = {
        "benchmark": "runtime_overhead",
        "baseline": "one Ray task per step (ray.remote chain, local Ray, 2 CPUs)",
        "us_per_op": round(alone, 1),
        "us_per_op_concurrent": round(concurrent, 1),
        "dispatch_us_per_op": round(dispatch, 1),
        "concurrent_runs": args.concurrent,
        "ray_us_per_op": round(ray_us, 1),
        "ray_ratio": round(ray_us / alone, 2),
        "ray_ratio_concurrent": round(ray_us / concurrent, 2),
        "concurrent_programs": programs["completed"],
        "peak_rss_mb": programs["peak_rss_mb"],
        "programs": programs,
        "steps": args.steps,
        "repeats": args.repeats,
        "targets": TARGETS,
        "notes": "us_per_op: a chain of tool steps run alone, every step checkpointed to SQLite "
        "(WAL) before the next tool acts; us_per_op_concurrent: many runs share each commit; "
        "dispatch_us_per_op: a chain of template steps (not checkpointed): the interpreter alone.",
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
