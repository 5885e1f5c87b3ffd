"""A real plan run by the real runtime on the simulator backend (scaled real time)."""

import asyncio
from pathlib import Path

import pytest

import hetagent
from hetagent.backends.base import ChatCall, Hints, ModelSpec, ToolCall
from hetagent.backends.sim.backend import SimBackend
from hetagent.backends.sim.config import PolicySpec

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_quickstart_plan_runs_to_completion_on_the_simulator(tmp_path):
    from hetagent.compiler import compile_plan
    from hetagent.orchestrator.runtime import Runtime
    from hetagent.orchestrator.store import RunStore
    from hetagent.planner.plan import plan_agent

    graph = hetagent.load(EXAMPLES / "agents" / "quickstart.yaml")
    cluster = hetagent.load(EXAMPLES / "clusters" / "mixed-generations.yaml")
    plan = compile_plan(graph, plan_agent(graph, cluster).placement)

    async def main():
        backend = SimBackend(cluster, speedup=1000.0, output_tokens=32)
        runtime = Runtime(backend, RunStore(f"sqlite:///{tmp_path / 'runs.db'}"))
        try:
            return await runtime.run(plan, {})
        finally:
            await backend.close()

    result = asyncio.run(main())
    assert result.status == "succeeded", result.error


def test_second_turn_of_a_program_reuses_its_held_kv():
    cluster = hetagent.load(EXAMPLES / "clusters" / "h100-only.yaml")
    model = ModelSpec("llama-3.1-8b")

    def call(turn: int, text: str) -> ChatCall:
        hints = Hints("run-1", turn, tool="bash", tool_seconds=0.5)
        messages = [{"role": "user", "content": text}]
        return ChatCall(f"solve.turn@{turn}", model, messages, 8, 0.0, hints, "h100", "h100")

    async def main():
        backend = SimBackend(cluster, PolicySpec("fixed-ttl", "program-fcfs"), speedup=1000.0)
        try:
            first = await backend.chat(call(1, "x" * 4000))
            await backend.tool(ToolCall("t", "bash", {}, Path("."), "h100"))
            second = await backend.chat(call(2, "x" * 4400))
            return first, second
        finally:
            await backend.close()

    first, second = asyncio.run(main())
    assert first.cached_tokens == 0
    assert second.cached_tokens >= first.prompt_tokens - 16
    assert second.ttft_s < first.ttft_s


def test_unknown_pool_is_a_clear_error():
    from hetagent.backends.sim.simulator import SimulationError

    cluster = hetagent.load(EXAMPLES / "clusters" / "h100-only.yaml")
    with pytest.raises(SimulationError, match="no pool a100"):
        asyncio.run(SimBackend(cluster).start(["a100"]))
