"""Agents end to end on a local Ray: SmolLM2 in engine actors, real tools in the pool's tool
executor, a real index in the retrieval actor; KV moved between pools through the object store;
a cancelled run aborting its engine request; tool failures and a killed executor as step errors
that leave the backend serving."""

import asyncio
import json
from pathlib import Path

import pytest
import ray

import hetagent
from hetagent.backends.local.engine.models import cached_path
from hetagent.backends.ray.placement import pool_label, pool_resource
from hetagent.compiler import compile_plan, lower
from hetagent.compiler.placement import Placement, Pool, placed_ops
from hetagent.orchestrator.runtime import RunOptions, Runtime
from hetagent.orchestrator.telemetry import Telemetry

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples/agents/quickstart.yaml"
RAG_BASE = ROOT / "examples/agents"
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
TOOLS = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: tools}
spec:
  nodes:
    - {name: write, type: tool, tool: files.write, args: {path: note.txt, content: "hello"}}
    - {name: read, type: tool, tool: files.read, args: {path: FILE}, dependsOn: [write]}
  outputs:
    text: ${nodes.read.outputs.text}
"""
HOLD = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: hold}
spec:
  nodes:
    - name: hold
      type: tool
      tool: shell
      args: {command: "while [ ! -e GATE ]; do sleep 0.05; done"}
      timeoutSeconds: 300
  outputs:
    text: ${nodes.hold.outputs.text}
"""
COUNT = "Count from 1 to 1000, one number per line."
needs_smollm2 = pytest.mark.skipif(
    not cached_path("smollm2-135m").exists(),
    reason="SmolLM2 is not in the model cache: hetagent models pull smollm2-135m",
)


def test_a_local_ray_offers_each_pool_as_a_resource_and_a_node_label(local_ray):
    resources = ray.cluster_resources()
    (node,) = [n for n in ray.nodes() if n["Alive"]]
    for pool in ("cpu", "a", "b"):
        assert resources[pool_resource(pool)] == 1.0
        assert node["Labels"][pool_label(pool)] == "true"
    assert local_ray.owns_ray


def on_pool(graph, pool: str):
    """The graph's plan with every operator placed by hand on one host-cpu pool `pool`."""
    ops = [op.attr("id") for op in placed_ops(lower(graph, "ops"))]
    return compile_plan(graph, Placement((Pool(pool, "host-cpu", 1),), dict.fromkeys(ops, pool)))


@needs_smollm2
async def test_the_quickstart_retrieves_loops_and_answers_on_ray(ray_backend, store, compile_agent):
    graph = hetagent.load(QUICKSTART)
    policies = graph.spec.policies.model_dump(by_alias=True, exclude_none=True)
    rt = Runtime(ray_backend(policies), store, Telemetry.in_memory())
    plan = compile_agent(QUICKSTART)

    result = await rt.run(plan, {}, RunOptions(base_dir=QUICKSTART.parent))

    assert result.status == "succeeded", result.error
    assert isinstance(result.outputs["answer"], str) and result.outputs["answer"]
    assert 1 <= result.outputs["turns"] <= 3
    steps = {s.key: s for s in result.steps}
    assert steps["lookup"].details["documents"] == 2  # k: 2, from the real index
    first = steps["solve.turn@1"].details
    assert first["prompt_tokens"] > 100 and first["output_tokens"] > 0
    # the engine ran in a named actor on the plan's pool, with the agent's policies
    (key,) = rt.backend.engines
    assert key[0] == "cpu" and key[3:] == ("continuum", "program-fcfs")
    actor = ray.get_actor(
        f"engine/cpu/0/smollm2-135m-{_digest(key[2], 64)}/continuum/program-fcfs",
        namespace="hetagent",
    )
    (row,) = await actor.stats.remote()
    assert row["kv_blocks"] > 0
    while not rt.backend.stats():  # the dashboard's view fills in the background
        await asyncio.sleep(0.01)
    (shown,) = rt.backend.stats()
    assert shown["pool"] == "cpu" and shown["replica"] == 0 and shown["kv_blocks"] > 0
    await rt.close()


@needs_smollm2
async def test_the_rag_example_answers_from_its_manual_on_ray(ray_backend, store, tmp_path):
    """rag-qa as written, but answered by SmolLM2 (its Llama does not fit this machine), briefly,
    and with time to build its index."""
    text = (ROOT / "examples/agents/rag-qa.yaml").read_text()
    text = text.replace("id: llama-3.1-8b", "id: smollm2-135m\n      weights: {format: gguf}")
    text = text.replace("maxTokens: 300", "maxTokens: 16")
    text = text.replace("expectedOutputTokens: 150", "expectedOutputTokens: 16")
    text = text.replace("timeoutSeconds: 2\n", "timeoutSeconds: 120\n")
    text = text.replace("timeoutSeconds: 20\n", "timeoutSeconds: 120\n")
    path = tmp_path / "rag-qa.yaml"
    path.write_text(text)
    graph = hetagent.load(path)  # placed by hand: its SLO was set for the Llama on GPUs
    plan = on_pool(graph, "cpu")
    rt = Runtime(ray_backend({"scheduling": "program-fcfs"}), store, Telemetry.in_memory())

    result = await rt.run(
        plan, {"question": "How do I descale the machine?"}, RunOptions(base_dir=RAG_BASE)
    )

    assert result.status == "succeeded", result.error
    assert result.outputs["answer"].strip()
    sources = result.outputs["sources"]
    assert len(sources) == 4 and all(d["source"].endswith(".md") for d in sources)
    assert {s.kind for s in result.steps} == {"retrieve", "call"}
    await rt.close()


async def test_an_engine_that_cannot_load_its_model_fails_the_step_with_its_reason(
    ray_backend, store, tmp_path
):
    path = tmp_path / "unknown.yaml"
    path.write_text(ANSWER.replace("{format: gguf}", "{format: gguf, path: no-such.gguf}"))
    graph = hetagent.load(path)
    plan = on_pool(graph, "a")
    rt = Runtime(ray_backend(), store, Telemetry.in_memory())

    failed = await rt.run(plan, {})

    assert failed.status == "failed"
    assert failed.error.startswith("LLM call answer") and "no-such.gguf" in failed.error
    assert "\n" not in failed.error and "Traceback" not in failed.error
    await rt.close()


@needs_smollm2
async def test_prefill_on_one_pool_and_decode_on_another_moves_the_kv_through_the_object_store(
    ray_backend, store, tmp_path
):
    """Also: engines are named actors, so another backend on the cluster finds them."""
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
    rt = Runtime(ray_backend(), store, Telemetry.in_memory())

    one = await rt.run(together, {})
    two = await rt.run(split, {})

    assert one.status == two.status == "succeeded", (one.error, two.error)
    assert two.outputs == one.outputs  # greedy: the same answer either way
    assert "paris" in one.outputs["text"].lower()
    (call,) = [s for s in two.steps if s.kind == "call"]
    assert call.details["transfer_bytes"] > 0 and call.details["transfer_s"] > 0
    assert call.details["prefill_pool"] == "a" and call.details["decode_pool"] == "b"
    assert {key[0] for key in rt.backend.engines} == {"a", "b"}
    assert json.dumps(call.details)

    # the prefill engine hands back a reference into the object store, not the bytes
    prefill = next(a for k, a in rt.backend.engines.items() if k[0] == "a")
    from hetagent.backends.base import ChatCall, Hints, ModelSpec

    probe = ChatCall(
        "probe", ModelSpec("smollm2-135m", "gguf"), [{"role": "user", "content": "Hi there"}],
        8, 0.0, Hints("probe"), "a", "b",
    )  # fmt: skip
    first, kv = await prefill.prefill.remote(probe)
    assert isinstance(kv, list) and isinstance(kv[0], ray.ObjectRef)
    assert len(await kv[0]) > 0 and first.output_tokens == 1
    await rt.close()

    # another backend (another driver would do the same) finds the engines by name
    again = Runtime(ray_backend(), store, Telemetry.in_memory())
    assert (await again.run(together, {})).outputs == one.outputs
    (reused,) = again.backend.engines.values()
    assert await reused.pid.remote() == await prefill.pid.remote()
    await again.close()


@needs_smollm2
async def test_a_cancelled_run_aborts_its_llm_call_on_the_engine_actor(
    ray_backend, store, tmp_path
):
    path = tmp_path / "count.yaml"
    path.write_text(
        ANSWER.replace("What is the capital of France? Answer in one word.", COUNT).replace(
            "maxTokens: 12", "maxTokens: 2000"
        )
    )
    graph = hetagent.load(path)
    plan = on_pool(graph, "a")
    rt = Runtime(ray_backend(), store, Telemetry.in_memory())

    run_id = await rt.submit(plan, {})
    while not rt.backend.engines:  # polling for the state, not timing
        await asyncio.sleep(0.02)
    (engine,) = rt.backend.engines.values()
    while not any(row["running"] for row in await engine.stats.remote()):
        await asyncio.sleep(0.02)
    (before,) = (await engine.counters.remote()).values()
    await rt.cancel(run_id)
    while any(row["running"] or row["waiting"] for row in await engine.stats.remote()):
        await asyncio.sleep(0.02)
    (after,) = (await engine.counters.remote()).values()

    assert store.get_run(run_id).status == "cancelled"
    assert after["finished"].get("abort", 0) == before["finished"].get("abort", 0) + 1
    assert after["finished"].get("length", 0) == before["finished"].get("length", 0)
    await rt.close()


async def test_a_tool_that_fails_fails_its_step_and_the_backend_serves_the_next_run(
    ray_backend, store, compile_agent
):
    rt = Runtime(ray_backend(), store, Telemetry.in_memory())
    broken = compile_agent(TOOLS.replace("FILE", "missing.txt"), "broken")
    working = compile_agent(TOOLS.replace("FILE", "note.txt"), "working")

    failed = await rt.run(broken, {})
    succeeded = await rt.run(working, {})

    assert failed.status == "failed"
    assert "read.exec" in failed.error and "missing.txt" in failed.error
    assert succeeded.status == "succeeded", succeeded.error
    assert succeeded.outputs["text"] == "hello"
    steps = {s.key: s.pool for s in succeeded.steps}
    assert steps == {"write.exec": "cpu", "read.exec": "cpu"}
    await rt.close()


async def test_a_tool_executor_killed_mid_call_is_a_step_error_and_the_next_call_runs(
    ray_backend, store, compile_agent, tmp_path
):
    gate = tmp_path / "gate"
    rt = Runtime(ray_backend(), store, Telemetry.in_memory())
    hold = compile_agent(HOLD.replace("GATE", str(gate)), "hold")
    working = compile_agent(TOOLS.replace("FILE", "note.txt"), "working")

    run_id = await rt.submit(hold, {})
    while "cpu" not in rt.backend.tool_actors:  # the executor is up and has the call
        await asyncio.sleep(0.02)  # polling for that, not timing
    executor = rt.backend.tool_actors["cpu"]
    pid = await executor.pid.remote()
    ray.kill(executor, no_restart=False)  # the executor's process dies; Ray restarts it
    killed = await rt.wait(run_id)
    after = await rt.run(working, {})

    assert killed.status == "failed"
    assert "hold.exec" in killed.error and "tool executor on pool cpu died" in killed.error
    assert "\n" not in killed.error
    assert after.status == "succeeded", after.error
    assert await rt.backend.tool_actors["cpu"].pid.remote() != pid  # a new executor process
    await rt.close()


async def test_a_pool_the_cluster_does_not_offer_is_a_step_error_naming_the_resource(
    ray_backend, store, tmp_path
):
    path = tmp_path / "tools.yaml"
    path.write_text(TOOLS.replace("FILE", "note.txt"))
    graph = hetagent.load(path)
    elsewhere = on_pool(graph, "gpu")
    rt = Runtime(ray_backend(), store, Telemetry.in_memory())

    result = await rt.run(elsewhere, {})

    assert result.status == "failed"
    assert "pool 'gpu'" in result.error and "hetagent_pool_gpu" in result.error
    await rt.close()


def _digest(weights: str, kv_memory_mb: float) -> str:
    import hashlib

    return hashlib.sha1(f"{weights}|{kv_memory_mb}".encode()).hexdigest()[:10]
