"""What runs inside the Ray backend's actors: an engine, a pool's tool executor, a retrieval
executor. Each wraps the local backend's own code (one `LocalBackend` per actor), so a call does
on Ray exactly what it does in process; only where it runs differs. `RayBackend` turns these
classes into async actors; the local backend (and torch) is imported inside the actor only.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from hetagent.backends.base import (
    ChatCall,
    ChatResult,
    ModelSpec,
    RetrieveCall,
    RetrievedDocument,
    ToolCall,
    ToolResult,
)


class _Actor:
    def ready(self) -> bool:
        """Answers once the actor runs (a restarted one included); loads nothing."""
        return True

    def pid(self) -> int:
        import os

        return os.getpid()


class EngineActor(_Actor):
    """One embedded engine: one model under one (kvRetention, scheduling) pair, loaded on the
    first call. Holds its programs' KV leases between calls, like the local backend's engines."""

    def __init__(self, policies: dict[str, str], kv_memory_mb: float):
        from hetagent.backends.local.backend import LocalBackend

        self.policies = policies
        self.local = LocalBackend(policies, kv_memory_mb=kv_memory_mb)

    async def _engine(self, model: ModelSpec):
        return await self.local.engine(None, model, self.policies)

    async def chat(self, call: ChatCall) -> ChatResult:
        """A whole call (prefill and decode) on this engine."""
        return await self.local.chat(replace(call, prefill_pool=None, decode_pool=None))

    async def prefill(self, call: ChatCall) -> tuple[ChatResult, list[Any] | None]:
        """Prefill and the first token; the KV goes into the object store, and the caller gets
        its reference (in a list, so that Ray hands the reference on rather than the bytes).
        No reference when the call ended at its first token."""
        import ray

        from hetagent.backends.local.backend import _follow, request_parts

        engine = await self._engine(call.model)
        params, hints = request_parts(call)
        started = time.perf_counter()
        request = engine.engine.prepare_request(
            None, replace(params, max_tokens=1), hints, messages=call.messages, keep_kv=True
        )
        first = await _follow(engine.stream(request))
        moved = time.perf_counter()
        first = replace(first, ttft_s=moved - started)
        if first.finish_reason != "length" or params.max_tokens == 1:  # done at its first token
            await engine.call(lambda e: e.release_kv(request.request_id))
            return first, None
        data = await engine.call(lambda e: e.export_kv(request.request_id))
        ref = ray.put(data)  # the object store, owned by this actor
        return replace(first, transfer_s=time.perf_counter() - moved), [ref]

    async def decode(self, kv: list[Any], call: ChatCall, first: ChatResult) -> ChatResult:
        """The rest of a call another engine prefilled: fetch its KV from the object store,
        import it, decode on."""
        from hetagent.backends.local.backend import _follow, joined, request_parts

        engine = await self._engine(call.model)
        fetching = time.perf_counter()
        data = await kv[0]
        fetched = time.perf_counter() - fetching
        self.local.programs[call.hints.program] = engine  # where the program's lease lives now
        params, hints = request_parts(call)
        rest = await _follow(
            engine.decode_imported(data, replace(params, max_tokens=params.max_tokens - 1), hints)
        )
        # the transfer: the prefill actor's export, then this fetch
        return joined(first, rest, (first.transfer_s or 0.0) + fetched, len(data))

    async def announce_tool(
        self, program: str, model: ModelSpec, tool: str, seconds: float
    ) -> None:
        await self.local.announce_tool(program, model, None, tool, seconds)

    async def release(self, program: str, model: ModelSpec) -> None:
        await self.local.release(program, model, None)

    async def stats(self) -> list[dict[str, Any]]:
        return self.local.stats()

    async def counters(self) -> dict[str, Any]:
        """The engine's totals since it loaded: tokens, steps, finished requests by reason."""
        from dataclasses import asdict

        return {
            "/".join(key[1:]): asdict(engine.metrics().counters)
            for key, engine in self.local.engines.items()
        }


class ToolExecutor(_Actor):
    """A pool's tool calls: each in the run's sandbox under the resource policy, as the local
    backend runs them (its threads wait on the sandboxed processes)."""

    def __init__(self, policies: dict[str, str], memory_budget_mb: float | None):
        from hetagent.backends.local.backend import LocalBackend

        self.local = LocalBackend(policies, memory_budget_mb=memory_budget_mb)

    async def tool(self, call: ToolCall) -> ToolResult:
        return await self.local.tool(call)


class RetrievalExecutor(_Actor):
    """Retrieval: embeds the query and searches the agent's index (built on first use)."""

    def __init__(self):
        from hetagent.backends.local.backend import LocalBackend

        self.local = LocalBackend()

    async def retrieve(self, call: RetrieveCall) -> list[RetrievedDocument]:
        return await self.local.retrieve(call)
