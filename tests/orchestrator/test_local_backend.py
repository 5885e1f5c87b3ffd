"""Agents run end to end on the local backend: SmolLM2 on the CPU, real tools, a real index."""

import json
from pathlib import Path

import pytest

import hetagent
from hetagent.backends.local.backend import LocalBackend
from hetagent.backends.local.engine.models import cached_path
from hetagent.compiler import compile_plan, lower
from hetagent.compiler.placement import Placement, Pool, placed_ops
from hetagent.orchestrator.runtime import RunOptions, Runtime
from hetagent.orchestrator.store import RunStore
from hetagent.orchestrator.telemetry import Telemetry
from hetagent.planner.plan import plan_agent

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples/agents/quickstart.yaml"
ANSWER = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: answer}
spec:
  models:
    tiny: {id: smollm2-135m, weights: {format: gguf}}
  nodes:
    - name: answer
      type: llm
      model: tiny
      messages: [{role: user, content: "What is the capital of France? Answer in one word."}]
      maxTokens: 12
  outputs:
    text: ${nodes.answer.outputs.text}
"""

pytestmark = pytest.mark.skipif(
    not cached_path("smollm2-135m").exists(),
    reason="SmolLM2 is not in the model cache: hetagent models pull smollm2-135m",
)


@pytest.fixture
def runtime(tmp_path):
    made = []

    def make(policies=None) -> Runtime:
        runtime = Runtime(
            LocalBackend(policies or {}, kv_memory_mb=64),
            RunStore(f"sqlite:///{tmp_path / 'runs.db'}"),
            Telemetry.in_memory(),
        )
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        for engine in runtime.backend.engines.values():
            engine.shutdown()


async def test_the_quickstart_retrieves_loops_and_answers_on_this_machine(runtime):
    graph = hetagent.load(QUICKSTART)
    plan = compile_plan(
        graph, plan_agent(graph, hetagent.load(ROOT / "examples/clusters/local.yaml")).placement
    )
    rt = runtime(graph.spec.policies.model_dump(by_alias=True, exclude_none=True))

    result = await rt.run(plan, {}, RunOptions(base_dir=QUICKSTART.parent))

    assert result.status == "succeeded", result.error
    assert isinstance(result.outputs["answer"], str) and result.outputs["answer"]
    assert 1 <= result.outputs["turns"] <= 3
    steps = {s.key: s for s in result.steps}
    assert steps["lookup"].details["documents"] == 2  # k: 2, from the real index
    first = steps["solve.turn@1"].details
    assert first["prompt_tokens"] > 100 and first["output_tokens"] > 0
    # the reply was decoded under the action schema: it parses as one
    chats = [s for s in rt.telemetry.finished_spans() if s.name == "chat smollm2-135m"]
    assert len(chats) == result.outputs["turns"]


async def test_prefill_on_one_pool_and_decode_on_another_moves_the_kv_and_says_the_same(
    runtime, tmp_path
):
    path = tmp_path / "answer.yaml"
    path.write_text(ANSWER)
    graph = hetagent.load(path)
    pools = (Pool("a", "host-cpu", 1), Pool("b", "host-cpu", 1))
    ops = [op.attr("id") for op in placed_ops(lower(graph, "ops"))]
    together = compile_plan(graph, Placement(pools, dict.fromkeys(ops, "a")))
    split = compile_plan(
        graph,
        Placement(pools, {op: "b" if op.endswith(("decode", "detokenize")) else "a" for op in ops}),
    )
    assert [t.kind for t in split.transfers] == ["kv"]

    rt = runtime()
    one = await rt.run(together, {})
    two = await rt.run(split, {})

    assert one.status == two.status == "succeeded", (one.error, two.error)
    assert two.outputs == one.outputs  # greedy: the same answer either way
    assert "paris" in one.outputs["text"].lower()
    (call,) = [s for s in two.steps if s.kind == "call"]
    assert call.details["transfer_bytes"] > 0
    assert call.details["prefill_pool"] == "a" and call.details["decode_pool"] == "b"
    assert {key[0] for key in rt.backend.engines} == {"a", "b"}
    assert json.dumps(call.details)  # the details are stored as JSON
