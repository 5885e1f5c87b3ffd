"""The local backend: every pool of a plan served in this process.

LLM calls go to embedded engines (`engine/`), one per (pool, model), loaded on first use; a call
whose prefill and decode the plan put on different pools prefills on one engine, moves the KV
bytes, and decodes on the other. Tool calls run in the run's sandbox under the resource policy
(`policies/resources.py`); retrieval searches the agent's indexes (`tools/vectorstore.py`), built
from its documents on first use.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
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
from hetagent.backends.local.engine.batch import SamplingParams
from hetagent.backends.local.engine.engine import AsyncLLMEngine, LLMEngine
from hetagent.backends.local.engine.request import Hints as EngineHints

DEFAULT_KV_MEMORY_MB = 256.0
TOOL_THREADS = 64  # tool calls in flight at once (each waits on a sandboxed process)


class LocalBackend:
    """Pools in process. `policies` names the engines' `kvRetention` and `scheduling` and the
    tools' `resources` policy (spec keys); `kv_memory_mb` is each engine's KV pool."""

    name = "local"

    def __init__(
        self,
        policies: dict[str, str] | None = None,
        *,
        kv_memory_mb: float = DEFAULT_KV_MEMORY_MB,
        memory_budget_mb: float | None = None,
    ):
        self.policies = dict(policies or {})
        self.kv_memory_mb = kv_memory_mb
        self.memory_budget_mb = memory_budget_mb
        self.pools: list[str] = []
        # (pool, weights, kvRetention, scheduling) -> engine
        self.engines: dict[tuple[str | None, str, str, str], AsyncLLMEngine] = {}
        self.loading: dict[tuple[str | None, str, str, str], asyncio.Task] = {}
        self.programs: dict[str, AsyncLLMEngine] = {}  # program -> the engine of its lease
        # tool calls wait on their processes: their own threads, so that many slow tools never
        # hold up engine calls and retrieval (asyncio's default pool has cpu_count + 4 threads)
        self.tool_threads = ThreadPoolExecutor(TOOL_THREADS, thread_name_prefix="hetagent-tool")
        self._tools: Any = None
        self._resources: Any = None
        self._indexes: dict[tuple[str, str], Any] = {}

    async def start(self, pools: list[str]) -> None:
        self.pools.extend(p for p in pools if p not in self.pools)

    async def close(self) -> None:
        for engine in self.engines.values():
            engine.shutdown()
        self.engines.clear()
        self.tool_threads.shutdown(wait=False, cancel_futures=True)

    # -- LLM calls --------------------------------------------------------------------------

    async def engine(
        self, pool: str | None, model: ModelSpec, policies: dict[str, str] | None = None
    ) -> AsyncLLMEngine:
        """The engine serving `model` on `pool` under these policies (the call's, else the
        backend's), loaded once (in a thread: it takes seconds)."""
        chosen = self.policies | (policies or {})
        kv, scheduling = chosen.get("kvRetention") or "evict", chosen.get("scheduling") or "fcfs"
        key = (pool, _weights_name(model), kv, scheduling)
        if key in self.engines:
            return self.engines[key]
        if key not in self.loading:
            self.loading[key] = asyncio.create_task(asyncio.to_thread(self._load, *key[1:]))
        try:
            engine = await asyncio.shield(self.loading[key])
        finally:
            if self.loading.get(key) is not None and self.loading[key].done():
                self.loading.pop(key, None)
        self.engines.setdefault(key, engine)
        return self.engines[key]

    def _load(self, name: str, kv_retention: str, scheduling: str) -> AsyncLLMEngine:
        engine = LLMEngine.from_name(
            name,
            kv_memory_mb=self.kv_memory_mb,
            kv_retention=kv_retention,
            scheduling=scheduling,
        )
        running = AsyncLLMEngine(engine)
        running.start()
        return running

    def stats(self) -> list[dict[str, Any]]:
        """Each engine's queue and KV cache, for the ops dashboard."""
        out = []
        for (pool, model, kv_retention, scheduling), engine in list(self.engines.items()):
            try:
                metrics = engine.metrics()
            except Exception:  # an engine that died reports nothing; the view stays up
                continue
            out.append(
                {
                    "pool": pool,
                    "model": model,
                    "kv_retention": kv_retention,
                    "scheduling": scheduling,
                    "running": metrics.running,
                    "waiting": metrics.waiting,
                    "kv_cache_usage": metrics.kv.usage,
                    "kv_leased_blocks": metrics.kv.leased_blocks,
                    "kv_blocks": metrics.kv.num_blocks,
                    "prefix_hit_rate": metrics.kv.prefix_hit_rate,
                }
            )
        return out

    async def chat(self, call: ChatCall) -> ChatResult:
        params, hints = request_parts(call)
        decode = await self.engine(call.decode_pool, call.model, call.policies)
        self.programs[call.hints.program] = decode  # where its lease lives
        if call.prefill_pool == call.decode_pool:
            request = decode.engine.prepare_request(None, params, hints, messages=call.messages)
            return await _follow(decode.stream(request))
        # disaggregated: prefill (and the first token) on one engine, the rest on the other
        prefill = await self.engine(call.prefill_pool, call.model, call.policies)
        started = time.perf_counter()
        first_request = prefill.engine.prepare_request(
            None, replace(params, max_tokens=1), hints, messages=call.messages, keep_kv=True
        )
        first = await _follow(prefill.stream(first_request))
        moved = time.perf_counter()
        if first.finish_reason != "length" or params.max_tokens == 1:  # done at its first token
            await prefill.call(lambda engine: engine.release_kv(first_request.request_id))
            return replace(first, ttft_s=moved - started)
        data = await prefill.call(lambda engine: engine.export_kv(first_request.request_id))
        exported = time.perf_counter()  # the bytes leave the prefill engine (in process: no wire)
        rest = await _follow(
            decode.decode_imported(data, replace(params, max_tokens=params.max_tokens - 1), hints)
        )
        return joined(replace(first, ttft_s=moved - started), rest, exported - moved, len(data))

    async def announce_tool(
        self, program: str, model: ModelSpec, pool: str | None, tool: str, seconds: float
    ) -> None:
        engine = self.programs.get(program)
        if engine is not None:
            await engine.call(lambda e: e.kv.announce_tool(program, tool, seconds))

    async def release(self, program: str, model: ModelSpec, pool: str | None) -> None:
        engine = self.programs.pop(program, None)
        if engine is not None:
            await engine.call(lambda e: e.kv.end_program(program))

    # -- tools ------------------------------------------------------------------------------

    @property
    def tools(self):
        if self._tools is None:
            from hetagent.tools.registry import ToolRegistry

            self._tools = ToolRegistry()
        return self._tools

    async def tool_schemas(self, names: list[str]) -> dict[str, dict[str, Any]]:
        return {name: self.tools.get(name).parameters for name in names}

    async def tool(self, call: ToolCall) -> ToolResult:
        from hetagent.spec import ResourceHints
        from hetagent.tools.registry import ToolContext
        from hetagent.tools.sandbox import CallLimits, Sandbox

        limits: dict[str, Any] = {"timeout_seconds": call.timeout_s} if call.timeout_s else {}
        if call.memory_bytes:
            limits["memory_bytes"] = call.memory_bytes
        if call.cpu:
            limits["cpus"] = call.cpu
        hints = ResourceHints.model_validate(
            {"memory": str(call.memory_bytes) if call.memory_bytes else None, "cpu": call.cpu}
        )
        context = ToolContext(
            sandbox=Sandbox(call.workspace),
            limits=CallLimits(**limits),
            policy=self._resource_policy(),
            hints=hints,
        )
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self.tool_threads, self.tools.call, call.tool, call.arguments, context
        )
        return ToolResult(
            ok=result.ok,
            text=result.text,
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            value=result.value,
            seconds=result.duration_seconds,
            peak_memory_bytes=result.peak_memory_bytes,
            events={"lines": result.events, "signal": result.signal},
            error=result.error,
        )

    def _resource_policy(self):
        name = self.policies.get("resources")
        if not name:
            return None
        if self._resources is None:
            from hetagent.policies.resources import resource_policy
            from hetagent.tools.sandbox import controller

            options = {}
            if name == "broker":  # the shared memory budget the broker admits calls against
                options["budget_bytes"] = int((self.memory_budget_mb or 2048) * 2**20)
            self._resources = resource_policy(name, controller=controller(), **options)
        return self._resources

    # -- retrieval --------------------------------------------------------------------------

    async def retrieve(self, call: RetrieveCall) -> list[RetrievedDocument]:
        from hetagent.tools.vectorstore import ensure_index

        index = call.index
        if index.embedding_model.id != "minilm-l6":
            raise ValueError(
                f"index {index.name}: only minilm-l6 embeddings run locally, not "
                f"{index.embedding_model.id}"
            )
        key = (str(index.documents), index.name)
        if key not in self._indexes:
            # named by what it indexes: a directory, a file or a glob (`docs/*.md`)
            where = hashlib.sha256(str(index.documents).encode()).hexdigest()[:12]
            name = f"{index.name}-{where}"
            self._indexes[key] = await asyncio.to_thread(
                ensure_index, name, index.documents, chunk_tokens=index.chunk_tokens
            )
        hits = await asyncio.to_thread(self._indexes[key].query, call.query, call.k)
        return [RetrievedDocument(hit.text, hit.source, float(hit.score)) for hit in hits]


def joined(first: ChatResult, rest: ChatResult, transfer_s: float, nbytes: int) -> ChatResult:
    """A disaggregated call's result: the prefill engine's first token, then the decode engine's
    rest, with the time and bytes of the KV moved between them."""
    return ChatResult(
        text=first.text + rest.text,
        prompt_tokens=first.prompt_tokens,
        output_tokens=first.output_tokens + rest.output_tokens,
        cached_tokens=first.cached_tokens,
        finish_reason=rest.finish_reason,
        ttft_s=first.ttft_s,
        transfer_s=transfer_s,
        transfer_bytes=nbytes,
    )


def request_parts(call: ChatCall) -> tuple[SamplingParams, EngineHints]:
    """The engine's sampling parameters and program hints for a call (every backend that runs
    the embedded engine builds them here)."""
    params = SamplingParams(
        max_tokens=call.max_tokens,
        temperature=call.temperature,
        seed=call.seed,
        response_schema=call.response_schema,
    )
    hints = EngineHints(
        program_id=call.hints.program,
        turn=call.hints.turn,
        last_turn=call.hints.last_turn,
        tool=call.hints.tool,
        tool_seconds=call.hints.tool_seconds,
    )
    return params, hints


def _weights_name(model: ModelSpec) -> str:
    """What `engine.models.load` takes: a weights path, `dummy:<id>`, or the registry name."""
    if model.weights_format == "dummy":
        return f"dummy:{model.id}"
    if model.weights_path is not None:
        return str(Path(model.weights_path))
    return model.id


async def _follow(outputs: Any) -> ChatResult:
    """Drain one request's outputs into a result."""
    text, last = [], None
    async for out in outputs:
        text.append(out.text)
        last = out
    if last is None or not last.finished:
        raise RuntimeError("the engine stopped before the request finished")
    return ChatResult(
        text="".join(text),
        prompt_tokens=last.num_prompt_tokens,
        output_tokens=last.num_output_tokens,
        cached_tokens=last.num_cached_tokens,
        finish_reason=last.finish_reason or "stop",
        ttft_s=(last.first_token_time - last.arrival) if last.first_token_time else None,
    )
