"""A service over a scripted backend (the real local backend is exercised by one end-to-end test):
two tenants, a fresh store, and agents small enough to plan in a moment."""

import asyncio
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import hetagent
from hetagent.backends.base import ChatCall, ChatResult, RetrievedDocument, ToolCall, ToolResult
from hetagent.orchestrator.runtime import Runtime
from hetagent.orchestrator.server import Tenants, create_app
from hetagent.orchestrator.store import RunStore
from hetagent.orchestrator.telemetry import Telemetry

# a server started without tokens writes the one it makes here, never under the user's home
os.environ.setdefault("HETAGENT_TOKEN_FILE", str(Path(tempfile.mkdtemp()) / "token"))
ROOT = Path(__file__).parents[2]
LOCAL = ROOT / "examples/clusters/local.yaml"
TOKENS = {"alice-token": "alice", "bob-token": "bob"}
ECHO = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: NAME}
spec:
  inputs:
    topic: {type: string, default: cats}
  models:
    tiny: {id: smollm2-135m, weights: {format: gguf}}
  slo: {p95LatencySeconds: 600}
  nodes:
    - {name: fetch, type: tool, tool: shell, args: {command: "echo ${inputs.topic}"}}
    - name: answer
      type: llm
      model: tiny
      messages: [{role: user, content: "About ${nodes.fetch.outputs.text}"}]
      maxTokens: 8
  outputs:
    answer: ${nodes.answer.outputs.text}
"""


class ScriptedBackend:
    """Chat calls answer `reply(call)`; tool calls wait while `hold` is clear (so a test can
    cancel or watch a run that is mid-step), then return `done`."""

    name = "scripted"

    def __init__(self, reply: Callable[[ChatCall], str] | None = None):
        self.reply = reply or (lambda call: "an answer")
        self.open = asyncio.Event()
        self.open.set()
        self.tools: list[ToolCall] = []

    async def start(self, pools):
        pass

    async def close(self):
        pass

    async def chat(self, call: ChatCall) -> ChatResult:
        return ChatResult(self.reply(call), prompt_tokens=12, output_tokens=3, cached_tokens=4)

    async def release(self, program, model, pool):
        pass

    async def tool(self, call: ToolCall) -> ToolResult:
        self.tools.append(call)
        await self.open.wait()
        return ToolResult(True, "done", exit_code=0, stdout="done", seconds=0.01)

    async def retrieve(self, call):
        return [RetrievedDocument("a note", "notes.md", 0.9)]


def agent_yaml(name: str = "echo") -> str:
    return ECHO.replace("NAME", name)


@pytest.fixture
def backend():
    return ScriptedBackend()


@pytest.fixture
def make_app(tmp_path, backend):
    stores = []

    def make(**options):
        store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
        stores.append(store)
        runtime = Runtime(backend, store, Telemetry.in_memory(), owner="test")
        clusters = [
            hetagent.load(LOCAL),
            hetagent.load(ROOT / "examples/clusters/mixed-generations.yaml"),
        ]
        return create_app(
            runtime, store, Tenants(TOKENS), clusters=clusters, base_dir=tmp_path, **options
        )

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def api(make_app):
    """A test client of the app, its lifespan running (runs go on between requests)."""
    with TestClient(make_app()) as client:
        yield client


def auth(tenant: str = "alice") -> dict[str, str]:
    token = {tenant: token for token, tenant in TOKENS.items()}[tenant]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def headers():
    return auth


@pytest.fixture
def echo_yaml():
    return agent_yaml


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`hetagent serve` in a subprocess on a loopback port, with one tenant `team` (token
    `TOKEN`), its store and base directory in `tmp`; `start()` again after `kill()` restarts it
    on the same store."""

    TOKEN = "serve-test-token"

    def __init__(
        self,
        tmp: Path,
        base_dir: Path | None = None,
        cluster: Path | None = None,
        tokens: bool = True,
    ):
        import subprocess  # noqa: F401 (used in start)

        self.tmp, self.port = tmp, free_port()
        self.base_dir, self.cluster, self.tokens = base_dir or tmp, cluster, tokens
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "tokens.yaml").write_text(f"tokens: {{{self.TOKEN}: team}}\n")
        self.process = None

    def start(self) -> "ServeProcess":
        import subprocess
        import sys
        import time

        import httpx

        command = [
            sys.executable, "-m", "hetagent.orchestrator.serve_cli", "serve",
            "--port", str(self.port), "--db", f"sqlite:///{self.tmp / 'runs.db'}",
            "--base-dir", str(self.base_dir),
        ]  # fmt: skip
        if self.tokens:
            command += ["--tokens", str(self.tmp / "tokens.yaml")]
        if self.cluster is not None:
            command += ["--cluster", str(self.cluster)]
        self.log = (self.tmp / "serve.log").open("a")
        self.process = subprocess.Popen(command, stderr=self.log, stdout=self.log)
        deadline = time.monotonic() + 60  # a bound on waiting for start-up, not a timing check
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, (self.tmp / "serve.log").read_text()
            assert time.monotonic() < deadline, "the server never answered /healthz"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye."""
        self.process.kill()
        self.process.wait()
        self.log.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.log.close()


@pytest.fixture
def serve(tmp_path):
    servers = []

    def make(**options) -> ServeProcess:
        server = ServeProcess(tmp_path, **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
