"""A process running agent runs, for the crash-resume test: `start N` submits N runs, `resume`
continues the unfinished ones. Its tools append `run step` to a side-effect file; the `hold`
step waits for a gate file first, so the test can kill the process while every run is in it."""

import asyncio
import sys
from pathlib import Path

import hetagent
from hetagent.backends.base import ChatResult, ToolResult
from hetagent.compiler import compile_plan
from hetagent.orchestrator.runtime import Runtime
from hetagent.orchestrator.store import RunStore
from hetagent.planner.plan import plan_agent


class SideEffectBackend:
    name = "side-effects"

    def __init__(self, effects: Path, gate: Path):
        self.effects, self.gate = effects, gate

    async def start(self, pools):
        pass

    async def close(self):
        pass

    async def chat(self, call):
        return ChatResult("summary", prompt_tokens=5, output_tokens=1)

    async def release(self, program, model, pool):
        pass

    async def retrieve(self, call):
        return []

    async def tool(self, call):
        step = call.arguments["command"]
        if step == "hold":
            while not self.gate.exists():  # the test opens the gate after the kill
                await asyncio.sleep(0.01)
        with self.effects.open("a") as effects:
            effects.write(f"{call.program.split('/')[0]} {step}\n")  # program: run/node
        return ToolResult(True, step, exit_code=0, stdout=step)


async def main(mode: str, agent: Path, db: str, effects: Path, gate: Path, runs: int) -> None:
    graph, cluster = hetagent.load(agent), hetagent.load(sys.argv[7])
    plan = compile_plan(graph, plan_agent(graph, cluster).placement)
    runtime = Runtime(SideEffectBackend(effects, gate), RunStore(db), owner=mode)
    if mode == "start":
        ids = [await runtime.submit(plan, {}) for _ in range(runs)]
    else:
        ids = await runtime.resume()
    for run_id in ids:
        await runtime.wait(run_id)
    print(" ".join(ids), flush=True)


if __name__ == "__main__":
    mode, agent, db, effects, gate, runs = sys.argv[1:7]
    asyncio.run(main(mode, Path(agent), db, Path(effects), Path(gate), int(runs)))
