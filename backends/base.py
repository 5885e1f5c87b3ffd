"""The backend protocol: what the runtime asks of the pools a plan placed its operators on.

The runtime walks a plan's steps and hands each unit of work to its backend: an LLM call (its
prefill and decode pools, which may differ, then the KV moves between them), a tool call, a
retrieval. The local backend runs them in process (embedded engine, sandboxed tools, vector
index); the Ray backend and the simulator implement the same protocol, so a plan runs on any of
them unchanged. Every call carries the program's hints so engines can schedule whole programs
and hold their KV across tool calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Hints:
    """What an engine is told about the program a call belongs to (kv-leases.md)."""

    program: str  # the run id: every call of one run shares it
    turn: int = 1  # the loop turn (1 outside loops)
    last_turn: bool = False  # no call of this program will follow: its KV can go
    tool: str | None = None  # the tool the program is about to run
    tool_seconds: float | None = None  # its predicted duration (the tool's history)


@dataclass(frozen=True)
class ModelSpec:
    """A model as the agent declares it: catalog id and where its weights are."""

    id: str
    weights_format: str | None = None
    weights_path: Path | None = None


@dataclass(frozen=True)
class ChatCall:
    """One LLM call: prefill on `prefill_pool`, decode on `decode_pool` (KV moved between them
    when they differ). `response_schema` constrains the output to JSON of that schema."""

    key: str  # the step key within the run (`solve.turn@2`)
    model: ModelSpec
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    hints: Hints
    prefill_pool: str | None
    decode_pool: str | None
    response_schema: dict[str, Any] | None = None
    seed: int | None = None
    policies: dict[str, str] = field(default_factory=dict)  # the run's kvRetention, scheduling


@dataclass(frozen=True)
class ChatResult:
    text: str
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV was reused (a held lease, a shared prefix)
    finish_reason: str = "stop"
    ttft_s: float | None = None
    transfer_s: float | None = None  # moving the KV from the prefill pool to the decode pool
    transfer_bytes: int | None = None


@dataclass(frozen=True)
class ToolCall:
    key: str
    tool: str
    arguments: dict[str, Any]
    workspace: Path
    pool: str | None
    timeout_s: float | None = None
    memory_bytes: int | None = None
    cpu: float | None = None
    program: str = ""


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    text: str  # what the agent sees (stdout, or the error / [OOM] message)
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    value: Any = None  # a Python tool's structured return value
    seconds: float = 0.0
    peak_memory_bytes: int | None = None
    events: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the call could not run or crashed (one line); None otherwise


@dataclass(frozen=True)
class IndexSpec:
    name: str
    documents: Path
    embedding_model: ModelSpec
    chunk_tokens: int


@dataclass(frozen=True)
class RetrieveCall:
    key: str
    index: IndexSpec
    query: str
    k: int
    embed_pool: str | None
    search_pool: str | None


@dataclass(frozen=True)
class RetrievedDocument:
    text: str
    source: str
    score: float


class Backend(Protocol):
    """Pools bound to executors. Errors a call can cause (a tool that fails, a prompt too
    long) come back as results or as exceptions the runtime turns into step errors; a failing
    call never takes the backend down."""

    name: str

    async def start(self, pools: list[str]) -> None:
        """Bind the plan's pools to executors (engines load lazily, on first use)."""

    async def close(self) -> None: ...

    async def chat(self, call: ChatCall) -> ChatResult: ...

    async def release(self, program: str, model: ModelSpec, pool: str | None) -> None:
        """The program's last call of this model is done: its held KV can go."""

    async def announce_tool(
        self, program: str, model: ModelSpec, pool: str | None, tool: str, seconds: float
    ) -> None:
        """Optional: the program runs `tool` now, for about `seconds` (what KV retention
        policies decide on; known only once the turn's reply is parsed)."""

    async def tool(self, call: ToolCall) -> ToolResult: ...

    async def retrieve(self, call: RetrieveCall) -> list[RetrievedDocument]: ...
