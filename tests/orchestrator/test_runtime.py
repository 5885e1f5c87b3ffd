"""The runtime's mechanics: dataflow, loops, retries, timeouts, cancellation, isolation."""

import asyncio
import json

import pytest

from hetagent.backends.base import ToolResult
from hetagent.orchestrator.runtime import InputError

LOOP = """
  inputs:
    question: {type: string}
  nodes:
    - name: solve
      type: agent
      model: tiny
      instructions: Solve it.
      prompt: ${inputs.question}
      tools: [python]
      maxTurns: 3
      maxTokens: 64
  outputs:
    answer: ${nodes.solve.outputs.text}
    turns: ${nodes.solve.outputs.turns}
"""

FAN = """
  nodes:
    - name: left
      type: tool
      tool: python
      args: {code: "print('left')"}
    - name: right
      type: tool
      tool: python
      args: {code: "print('right')"}
    - name: join
      type: transform
      template: "${nodes.left.outputs.stdout} + ${nodes.right.outputs.stdout}"
    - name: say
      type: llm
      model: tiny
      messages:
        - {role: user, content: "Repeat: ${nodes.join.outputs.text}"}
      maxTokens: 16
      retry: {maxAttempts: 2, backoffSeconds: 0}
  outputs:
    joined: ${nodes.join.outputs.text}
    said: ${nodes.say.outputs.text}
"""

SLOW_TOOL = """
  nodes:
    - name: wait
      type: tool
      tool: shell
      args: {command: sleep}
      timeoutSeconds: TIMEOUT
  outputs:
    out: ${nodes.wait.outputs.text}
"""


def replies(*texts):
    """A model that says these, one per call."""
    queue = list(texts)
    return lambda call: queue.pop(0)


async def test_a_react_loop_runs_the_tool_the_model_asks_for_until_it_answers(
    compile, runtime_for, scripted
):
    call = json.dumps({"tool": "python", "arguments": {"code": "print(6 * 7)"}})
    backend = scripted(
        reply=replies(call, json.dumps({"answer": "42"})),
        run_tool=lambda c: ToolResult(True, "42\n", exit_code=0, stdout="42\n"),
    )
    runtime = runtime_for(backend)

    result = await runtime.run(compile(LOOP), {"question": "What is 6 x 7?"})

    assert result.status == "succeeded", result.error
    assert result.outputs == {"answer": "42", "turns": 2}
    (tool,) = backend.tools
    assert tool.tool == "python" and tool.arguments == {"code": "print(6 * 7)"}
    second = backend.chats[1]
    assert second.hints.turn == 2 and second.hints.program == f"{result.run_id}/solve"
    assert second.messages[-1]["content"] == "Observation:\n42\n"
    assert second.response_schema is not None  # tool choice is constrained
    assert backend.released == [f"{result.run_id}/solve"]  # the loop's KV lease ends with it
    assert backend.announced == [(f"{result.run_id}/solve", "python")]  # the engine was told


async def test_a_malformed_or_unknown_tool_call_is_an_error_observation_not_a_crash(
    compile, runtime_for, scripted
):
    unknown = json.dumps({"tool": "rm", "arguments": {}})
    backend = scripted(reply=replies("{not json", unknown, json.dumps({"answer": "sorry"})))
    runtime = runtime_for(backend)

    result = await runtime.run(compile(LOOP), {"question": "q"})

    assert result.outputs == {"answer": "sorry", "turns": 3}
    assert backend.tools == []
    observations = [c.messages[-1]["content"] for c in backend.chats[1:]]
    assert "not valid JSON" in observations[0]
    assert "there is no tool 'rm'" in observations[1]


async def test_a_loop_that_never_answers_stops_at_max_turns(compile, runtime_for, scripted):
    call = json.dumps({"tool": "python", "arguments": {"code": "print(1)"}})
    backend = scripted(reply=lambda c: call)
    runtime = runtime_for(backend)

    result = await runtime.run(compile(LOOP), {"question": "q"})

    assert result.status == "succeeded"
    assert result.outputs["turns"] == 3 and result.outputs["answer"].startswith("[no answer")
    assert len(backend.tools) == 2  # the third turn's call is not run: no turn would read it
    # an engine that honours the schema could not have asked for a tool on the last turn
    (last_choice,) = backend.chats[-1].response_schema["anyOf"]
    assert set(last_choice["properties"]) == {"answer"}


async def test_independent_branches_run_concurrently_and_the_join_sees_both(
    compile, runtime_for, scripted
):
    started = {"left": asyncio.Event(), "right": asyncio.Event()}

    async def run_tool(call):
        side = "left" if "left" in call.arguments["code"] else "right"
        started[side].set()
        other = started["right" if side == "left" else "left"]
        await asyncio.wait_for(
            other.wait(), 30
        )  # each waits for the other: only concurrency ends it
        return ToolResult(True, side, exit_code=0, stdout=side)

    backend = scripted(reply=lambda call: call.messages[0]["content"], run_tool=run_tool)
    result = await runtime_for(backend).run(compile(FAN), {})

    assert result.status == "succeeded", result.error
    assert result.outputs == {"joined": "left + right", "said": "Repeat: left + right"}


async def test_a_failed_llm_call_is_retried_as_the_node_says(compile, runtime_for, scripted):
    failures = []

    def flaky(call):
        if not failures:
            failures.append(call.key)
            raise RuntimeError("engine restarted")
        return "fine"

    backend = scripted(reply=flaky, run_tool=lambda c: ToolResult(True, "x", 0, stdout="x"))
    result = await runtime_for(backend).run(compile(FAN), {})

    assert result.status == "succeeded" and result.outputs["said"] == "fine"
    (say,) = [s for s in result.steps if s.key == "say"]
    assert say.attempt == 2 and say.status == "succeeded"


async def test_a_step_past_its_timeout_fails_the_run_naming_the_step(
    compile, runtime_for, scripted
):
    async def forever(call):
        await asyncio.Event().wait()

    runtime = runtime_for(scripted(run_tool=forever))
    result = await runtime.run(compile(SLOW_TOOL.replace("TIMEOUT", "0.05")), {})

    assert result.status == "failed"
    assert result.error == "step wait ran past its 0.05 s timeout"


async def test_a_crashing_tool_fails_its_run_and_no_other(compile, runtime_for, scripted):
    def crash(call):
        if call.arguments.get("command") == "sleep":
            raise OSError("tool process died (signal 11)")
        return ToolResult(True, "fine", 0, stdout="fine")

    runtime = runtime_for(scripted(run_tool=crash, reply=lambda c: "fine"))
    crashing = await runtime.submit(compile(SLOW_TOOL.replace("TIMEOUT", "5"), "crashing"), {})
    healthy = await runtime.submit(compile(FAN, "healthy"), {})

    crashed, fine = await runtime.wait(crashing), await runtime.wait(healthy)

    assert crashed.status == "failed"
    assert "wait" in crashed.error and "signal 11" in crashed.error
    assert fine.status == "succeeded"


async def test_a_cancelled_run_stops_and_says_so(compile, runtime_for, scripted):
    entered = asyncio.Event()

    async def block(call):
        entered.set()
        await asyncio.Event().wait()

    runtime = runtime_for(scripted(run_tool=block))
    run = await runtime.submit(compile(SLOW_TOOL.replace("TIMEOUT", "60")), {})
    await entered.wait()

    assert await runtime.cancel(run)
    assert runtime.result(run).status == "cancelled"
    assert not await runtime.cancel(run)  # already over


async def test_a_run_submitted_twice_under_one_id_runs_once(compile, runtime_for, scripted):
    calls = []

    async def count(call):
        calls.append(call.key)
        return ToolResult(True, "done", exit_code=0)

    runtime = runtime_for(scripted(run_tool=count))
    plan = compile(SLOW_TOOL.replace("TIMEOUT", "60"))
    first = await runtime.submit(plan, {}, run_id="agentrun-uid-1")
    again = await runtime.submit(plan, {}, run_id="agentrun-uid-1")
    assert first == again == "agentrun-uid-1"
    result = await runtime.wait(first)
    assert result.status == "succeeded", result.error
    assert calls == ["wait.exec"]


async def test_inputs_are_checked_against_the_agent(compile, runtime_for, scripted):
    runtime, plan = runtime_for(scripted()), compile(LOOP)
    with pytest.raises(InputError, match="input 'question' is required"):
        await runtime.submit(plan, {})
    with pytest.raises(InputError, match="unknown input 'q'; test-agent takes question"):
        await runtime.submit(plan, {"q": "x"})


async def test_a_run_leaves_a_trace_of_genai_spans_and_step_metrics(compile, runtime_for, scripted):
    call = json.dumps({"tool": "python", "arguments": {"code": "print(1)"}})
    backend = scripted(reply=replies(call, json.dumps({"answer": "1"})))
    runtime = runtime_for(backend)

    result = await runtime.run(compile(LOOP), {"question": "q"})

    names = [s.name for s in runtime.telemetry.finished_spans()]
    assert names.count("chat smollm2-135m") == 2
    assert {"invoke_workflow test-agent", "invoke_agent solve", "execute_tool python"} <= set(names)
    assert result.trace_id and len(result.trace_id) == 32
    metrics = runtime.telemetry.metrics_text().decode()
    assert 'hetagent_steps_total{kind="call",pool="cpu",status="succeeded"} 2.0' in metrics


async def test_a_failed_run_lets_its_kv_go(compile, runtime_for, scripted):
    def broken(call):
        raise RuntimeError("engine lost")

    backend = scripted(reply=broken)
    result = await runtime_for(backend).run(compile(LOOP), {"question": "q"})

    assert result.status == "failed" and "engine lost" in result.error
    assert backend.released == [f"{result.run_id}/solve"]


async def test_a_tool_node_whose_tool_could_not_run_fails_and_is_retried(
    compile, runtime_for, scripted
):
    calls = []

    def flaky(call):
        calls.append(call)
        if len(calls) == 1:
            return ToolResult(
                False, "[error] ZeroDivisionError", exit_code=1, error="ZeroDivisionError"
            )
        return ToolResult(True, "ok", exit_code=0, stdout="ok")

    retried = SLOW_TOOL.replace("TIMEOUT", "5\n      retry: {maxAttempts: 2, backoffSeconds: 0}")
    result = await runtime_for(scripted(run_tool=flaky)).run(compile(retried), {})

    assert result.status == "succeeded" and len(calls) == 2
