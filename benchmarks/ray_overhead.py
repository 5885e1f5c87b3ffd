"""What the Ray backend costs per step, against the local backend and raw Ray, in one run.

The workload is a chain of tool steps whose tool is instant (`files.write`, appending a few
bytes in the run's workspace, in the executor's own process: no sandboxed subprocess, no
model), so what is timed is orchestration: the runtime, its checkpoints, and for Ray the actor
call per step. Measured, each the median of several repeats, on a local Ray (2 CPUs) started
once for the whole benchmark:

1. `local_us_per_step`: the chain on the local backend (the baseline: the same runtime, tools in
   this process);
2. `ray_us_per_step`: the same chain on the Ray backend (one tool-executor actor call a step);
3. `ray_task_us_per_step`: a chain of no-op Ray tasks (`f.remote(previous)`), the floor of one
   Ray task per step; `ray_actor_call_us_per_step`: a chain of no-op async-actor calls, the
   floor of what the Ray backend does per step;
4. concurrent runs/s: `concurrent` runs of a short chain submitted at once, on each backend.

Writes benchmarks/results/ray_overhead.json.

    python benchmarks/ray_overhead.py [--steps 50] [--concurrent 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "ray_overhead.json"


def chain_plan(steps: int, workdir: Path):
    """A chain of instant tool steps (each after the one before), placed on the pool `cpu`."""
    from runtime_overhead import chain_plan as chain  # this folder is on the script's path

    call = "tool: files.write, args: {path: log, content: 'x', append: true}"
    return chain(steps, workdir, call=call)


async def per_step(runtime, plan, steps: int, repeats: int) -> float:
    """Microseconds per step of one run of the chain, median of `repeats` runs (after one to
    warm up: imports, the store's tables, the executor)."""
    result = await runtime.run(plan, {})
    assert result.status == "succeeded", result.error
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = await runtime.run(plan, {})
        samples.append((time.perf_counter() - started) / steps * 1e6)
        assert result.status == "succeeded", result.error
    return statistics.median(samples)


async def runs_per_second(runtime, plan, count: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        ids = [await runtime.submit(plan, {}) for _ in range(count)]
        results = [await runtime.wait(run_id) for run_id in ids]
        samples.append(count / (time.perf_counter() - started))
        assert {r.status for r in results} == {"succeeded"}, {r.error for r in results}
    return statistics.median(samples)


async def measure_backend(make, args, workdir: Path, name: str) -> dict[str, float]:
    from hetagent.orchestrator.runtime import Runtime
    from hetagent.orchestrator.store import RunStore

    runtime = Runtime(make(), RunStore(f"sqlite:///{workdir / f'{name}.db'}"), owner=name)
    try:
        alone = await per_step(runtime, chain_plan(args.steps, workdir), args.steps, args.repeats)
        short = chain_plan(args.short_steps, workdir)
        rate = await runs_per_second(runtime, short, args.concurrent, max(1, args.repeats // 2))
    finally:
        await runtime.close()
    return {"us_per_step": alone, "runs_per_s": rate}


def ray_floors(steps: int, repeats: int) -> tuple[float, float]:
    """A chain of no-op Ray tasks, and of no-op async-actor calls: microseconds per step."""
    import ray

    @ray.remote(num_cpus=0)
    def step(previous: str) -> str:
        return "ok"

    @ray.remote(num_cpus=0)
    class Echo:
        async def step(self, previous: str) -> str:
            return "ok"

    echo = Echo.remote()
    ray.get([step.remote("warm"), echo.step.remote("warm")])

    def chain(call) -> float:
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            value = "start"
            for _ in range(steps):
                value = ray.get(call(value))  # each step waits for the one before
            samples.append((time.perf_counter() - started) / steps * 1e6)
        return statistics.median(samples)

    tasks = chain(step.remote)
    actor_calls = chain(echo.step.remote)
    ray.kill(echo)
    return tasks, actor_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--short-steps", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ["HETAGENT_WORKSPACES"] = str(workdir / "workspaces")  # before Ray starts
        from hetagent.backends.local.backend import LocalBackend
        from hetagent.backends.ray.backend import RayBackend

        load_before = os.getloadavg()[0]
        ray_backend = RayBackend(pools={"cpu": 1})
        started = time.perf_counter()
        ray_backend.connect()
        ray_start_s = time.perf_counter() - started
        try:
            local = asyncio.run(measure_backend(LocalBackend, args, workdir, "local"))
            # each runtime gets its own backend on the one Ray (the runtime closes it)
            on_ray = asyncio.run(
                measure_backend(lambda: RayBackend(pools={"cpu": 1}), args, workdir, "ray")
            )
            task_us, actor_us = ray_floors(args.steps, args.repeats)
        finally:
            asyncio.run(ray_backend.close())
        load_after = os.getloadavg()[0]
    result = {
        "benchmark": "ray_overhead",
        "baseline": "the local backend (same runtime, tools in process), measured in this run",
        "local_us_per_step": round(local["us_per_step"], 1),
        "ray_us_per_step": round(on_ray["us_per_step"], 1),
        "ray_overhead_us_per_step": round(on_ray["us_per_step"] - local["us_per_step"], 1),
        "ray_vs_local_ratio": round(on_ray["us_per_step"] / local["us_per_step"], 2),
        "ray_task_us_per_step": round(task_us, 1),
        "ray_actor_call_us_per_step": round(actor_us, 1),
        "ray_vs_task_floor_ratio": round(on_ray["us_per_step"] / task_us, 2),
        "local_runs_per_s": round(local["runs_per_s"], 1),
        "ray_runs_per_s": round(on_ray["runs_per_s"], 1),
        "ray_vs_local_runs_ratio": round(on_ray["runs_per_s"] / local["runs_per_s"], 2),
        "ray_start_s": round(ray_start_s, 2),
        "steps": args.steps,
        "concurrent_runs": args.concurrent,
        "concurrent_run_steps": args.short_steps,
        "repeats": args.repeats,
        "load_avg_1m": [round(load_before, 2), round(load_after, 2)],
        "cpus": os.cpu_count(),
        "notes": "Each step is a `files.write` tool call (instant, in the executor's process), "
        "checkpointed before the next step acts. ray_* steps are one tool-executor actor call "
        "each on a local Ray; floors are chains of no-op Ray tasks / async-actor calls awaited "
        "one after the other. runs_per_s: concurrent runs of a short chain, submitted at once.",
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
