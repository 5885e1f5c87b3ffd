"""A backend whose answers each test scripts, to check the runtime's own mechanics (the real
local backend is tested end to end elsewhere), and plans compiled from small agents."""

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import hetagent
from hetagent.backends.base import ChatCall, ChatResult, RetrievedDocument, ToolCall, ToolResult
from hetagent.compiler import compile_plan
from hetagent.orchestrator.runtime import Runtime
from hetagent.orchestrator.store import RunStore
from hetagent.orchestrator.telemetry import Telemetry
from hetagent.planner.plan import plan_agent

ROOT = Path(__file__).parents[2]
LOCAL = ROOT / "examples/clusters/local.yaml"
HEADER = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: NAME}
spec:
  models:
    tiny: {id: smollm2-135m, weights: {format: gguf}}
  slo: {p95LatencySeconds: 600}
"""


class ScriptedBackend:
    """Answers chat calls with `reply(call)` and tool calls with `run_tool(call)`; both may be
    async (to block until a test says so) and may raise (a failing engine or tool)."""

    name = "scripted"

    def __init__(self, reply: Callable | None = None, run_tool: Callable | None = None):
        self.reply = reply or (lambda call: "ok")
        self.run_tool = run_tool or (lambda call: ToolResult(True, "done", exit_code=0))
        self.chats: list[ChatCall] = []
        self.tools: list[ToolCall] = []
        self.released: list[str] = []
        self.announced: list[tuple[str, str]] = []

    async def start(self, pools):
        self.pools = pools

    async def close(self):
        pass

    async def chat(self, call: ChatCall) -> ChatResult:
        self.chats.append(call)
        text = self.reply(call)
        if asyncio.iscoroutine(text):
            text = await text
        return ChatResult(text, prompt_tokens=10, output_tokens=5)

    async def release(self, program, model, pool):
        self.released.append(program)

    async def tool(self, call: ToolCall) -> ToolResult:
        self.tools.append(call)
        result = self.run_tool(call)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def retrieve(self, call):
        return [RetrievedDocument(f"about {call.query}", "notes.md", 0.9)]

    async def announce_tool(self, program, model, pool, tool, seconds):
        self.announced.append((program, tool))

    async def tool_schemas(self, tools):
        code = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}
        return {name: code for name in tools}


def compile_agent(text: str, tmp_path: Path, name: str = "test-agent"):
    """The plan of an agent (YAML after the common header) on this machine's cluster."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEADER.replace("NAME", name) + text)
    graph, cluster = hetagent.load(path), hetagent.load(LOCAL)
    return compile_plan(graph, plan_agent(graph, cluster).placement)


@pytest.fixture
def compile(tmp_path):
    return lambda text, name="test-agent": compile_agent(text, tmp_path, name)


@pytest.fixture
def runtime_for(tmp_path):
    """A runtime over a scripted backend, a fresh store and in-memory spans."""
    made = []

    def make(backend: ScriptedBackend) -> Runtime:
        store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
        runtime = Runtime(backend, store, Telemetry.in_memory(), owner="test")
        made.append(store)
        return runtime

    yield make
    for store in made:
        store.close()


@pytest.fixture
def scripted():
    return ScriptedBackend
