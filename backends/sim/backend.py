"""The simulator as a backend: a plan runs on it through the runtime, as on the local backend.

The runtime is asyncio code on the wall clock, so this backend runs the simulator's engine
model (`SimEngine`: the same continuous batching, KV pool, policies and cost-model step times
the trace-driven `Simulation` uses) in *scaled real time*: virtual seconds pass `speedup` times
faster than wall seconds, each engine is a task that sleeps through its steps, and a tool call
sleeps through its duration. Results report virtual times (`ttft_s`, `transfer_s`, `seconds`).

What it does not fake: an LLM's words. A reply is a placeholder text of the call's output
length, or, for calls constrained to a tool-or-answer schema (ReAct turns), the answer, so a
ReAct loop ends after its first turn. Studies of many-turn programs at scale therefore use
trace-driven simulation (`hetagent simulate`), which drives trace programs through the same
engine model in pure virtual time; this backend is for running a real plan end to end on a
simulated cluster (the runtime, checkpoints and hints all real) and checking its plumbing.

Token counts are estimated from text at CHARS_PER_TOKEN (no tokenizer: the simulator is pure
Python); the output length is the call's `max_tokens` unless `output_tokens` says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field

from hetagent.backends.base import (
    ChatCall,
    ChatResult,
    ModelSpec,
    RetrieveCall,
    RetrievedDocument,
    ToolCall,
    ToolResult,
)
from hetagent.backends.sim.config import PLANNING_CONTEXT, PolicySpec, factories
from hetagent.backends.sim.engine import EngineConfig, Req, SimEngine
from hetagent.backends.sim.simulator import DEFAULT_LINK, SimulationError
from hetagent.compiler.frontend import CHARS_PER_TOKEN
from hetagent.planner.costmodel import CostModel
from hetagent.planner.workload import kv_bytes_per_token
from hetagent.spec import Cluster

DEFAULT_TOOL_SECONDS = 1.0
SEARCH_SECONDS = 2e-3  # a vector search (the planner's figure for retr.search)


@dataclass
class _Runner:
    """One engine stepping in scaled real time."""

    engine: SimEngine
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


class SimBackend:
    name = "sim"

    def __init__(
        self,
        cluster: Cluster,
        policy: PolicySpec | None = None,
        *,
        speedup: float = 100.0,
        tool_seconds: dict[str, float] | None = None,
        output_tokens: int | None = None,
        engine: EngineConfig | None = None,
        cost_model: CostModel | None = None,
    ) -> None:
        if not speedup > 0:
            raise SimulationError(f"speedup must be above 0, got {speedup}")
        self.cluster, self.speedup = cluster, speedup
        self.policy = policy or PolicySpec()
        self.sched, self.kv = factories(self.policy)
        self.tool_seconds = dict(tool_seconds or {})
        self.output_tokens = output_tokens
        # one event per step: an arrival must be able to join the next step
        self.engine_config = engine or EngineConfig(max_span_steps=1)
        self.cm = cost_model or CostModel()
        self.runners: dict[tuple[str, str], _Runner] = {}
        self.pools: set[str] = set()
        self._t0: float | None = None

    # ---- clock ---------------------------------------------------------------------------------

    def now(self) -> float:
        """Virtual seconds since the backend started."""
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        return (loop.time() - self._t0) * self.speedup

    async def _sleep_until(self, virtual: float) -> None:
        delay = (virtual - self.now()) / self.speedup
        await asyncio.sleep(max(0.0, delay))

    # ---- protocol ------------------------------------------------------------------------------

    async def start(self, pools: list[str]) -> None:
        known = {p.name for p in self.cluster.spec.pools}
        unknown = sorted(set(pools) - known)
        if unknown:
            raise SimulationError(f"the cluster has no pool {', '.join(unknown)}")
        self.pools |= set(pools)
        self.now()

    async def close(self) -> None:
        for runner in self.runners.values():
            if runner.task is not None:
                runner.task.cancel()
        await asyncio.gather(
            *(r.task for r in self.runners.values() if r.task is not None), return_exceptions=True
        )
        self.runners.clear()

    def _runner(self, pool: str | None, model: ModelSpec) -> _Runner:
        if pool is None:
            pool = self.cluster.spec.pools[0].name
        key = (pool, model.id)
        runner = self.runners.get(key)
        if runner is None:
            try:
                spec = self.cluster.pool(pool)
            except KeyError:
                raise SimulationError(f"the cluster has no pool {pool!r}") from None
            m, device = self.cm.model(model.id), self.cm.device(spec.device)
            context = min(PLANNING_CONTEXT, m.max_context or PLANNING_CONTEXT)
            devices = self.cm.min_devices(m, device, batch=1, context=context)
            if devices is None or devices > spec.count:
                raise SimulationError(f"{model.id} does not fit on pool {pool}")
            engine = SimEngine(
                f"{pool}/{model.id}",
                m,
                device,
                devices,
                self.sched(),
                self.kv,
                self.cm,
                self.engine_config,
            )
            engine.pool = pool
            runner = _Runner(engine)
            runner.task = asyncio.create_task(self._run(runner), name=f"sim engine {key}")
            self.runners[key] = runner
        return runner

    async def _run(self, runner: _Runner) -> None:
        engine = runner.engine
        while True:
            start = self.now()
            duration = engine.begin(start)
            if duration is None:
                runner.wake.clear()
                timeout = engine.config.idle_tick / self.speedup if engine.leases else None
                try:
                    await asyncio.wait_for(runner.wake.wait(), timeout)
                except TimeoutError:
                    engine.idle_tick(self.now())
                continue
            await self._sleep_until(start + duration)
            for r in engine.end(start + duration):
                if r.on_done is not None:
                    r.on_done(r, start + duration)

    def _submit(self, runner: _Runner, req: Req) -> asyncio.Future:
        future: asyncio.Future = asyncio.get_running_loop().create_future()

        def done(r: Req, now: float) -> None:
            if not future.done():
                future.set_result(now)

        req.on_done = done
        runner.engine.add(req, self.now())
        runner.wake.set()
        return future

    async def chat(self, call: ChatCall) -> ChatResult:
        text = "".join(m.get("content", "") for m in call.messages)
        prompt = max(1, math.ceil(len(text) / CHARS_PER_TOKEN))
        output = max(1, self.output_tokens or call.max_tokens)
        hints = call.hints
        conv = f"{hints.program}/{call.key.split('@')[0]}"
        arrival = self.now()

        def request(rid: str, out: int) -> Req:
            return Req(rid, conv, hints.program, hints.turn, prompt, out, arrival, arrival,
                       hints.last_turn, hints.tool, hints.tool_seconds, None, 0)  # fmt: skip

        decode = self._runner(call.decode_pool, call.model)
        prefill_pool = call.prefill_pool or call.decode_pool
        transfer_s = None
        transfer_bytes = None
        if prefill_pool != call.decode_pool:
            pre = self._runner(prefill_pool, call.model)
            pre_req = request(f"{call.key}/prefill", 1)
            await self._submit(pre, pre_req)
            size = prompt * kv_bytes_per_token(decode.engine.model)
            bandwidth, latency = self._link(prefill_pool, call.decode_pool)
            transfer_s = latency + size / bandwidth
            transfer_bytes = int(size)
            await self._sleep_until(self.now() + transfer_s)
        req = request(call.key, output)
        req.imported = transfer_s is not None
        await self._submit(decode, req)
        return ChatResult(
            text=_reply(call, output),
            prompt_tokens=prompt,
            output_tokens=output,
            cached_tokens=req.cached_tokens,
            finish_reason="length",
            ttft_s=(req.first_token or arrival) - arrival,
            transfer_s=transfer_s,
            transfer_bytes=transfer_bytes,
        )

    def _link(self, a: str | None, b: str | None) -> tuple[float, float]:
        spec = self.cluster.spec
        for link in spec.links:
            if set(link.pools) == {a, b}:
                return link.bandwidth_gb_per_second * 1e9, link.latency_microseconds * 1e-6
        if spec.default_link is not None:
            d = spec.default_link
            return d.bandwidth_gb_per_second * 1e9, d.latency_microseconds * 1e-6
        return DEFAULT_LINK

    async def release(self, program: str, model: ModelSpec, pool: str | None) -> None:
        for (p, m), runner in self.runners.items():
            if m != model.id or (pool is not None and p != pool):
                continue
            runner.engine.end_leases(program + "/", self.now())

    async def tool(self, call: ToolCall) -> ToolResult:
        seconds = self.tool_seconds.get(call.tool, DEFAULT_TOOL_SECONDS)
        if call.timeout_s is not None and seconds > call.timeout_s:
            await self._sleep_until(self.now() + call.timeout_s)
            return ToolResult(False, f"[simulated {call.tool}: timed out]", seconds=call.timeout_s)
        await self._sleep_until(self.now() + seconds)
        text = f"[simulated {call.tool}]"
        return ToolResult(True, text, exit_code=0, stdout=text, seconds=seconds)

    async def retrieve(self, call: RetrieveCall) -> list[RetrievedDocument]:
        await self._sleep_until(self.now() + SEARCH_SECONDS)
        return []


def _reply(call: ChatCall, output: int) -> str:
    """A placeholder of the call's length; for a tool-or-answer schema, the answer."""
    schema = call.response_schema or {}
    if any("answer" in (o.get("properties") or {}) for o in schema.get("anyOf", [])):
        return json.dumps({"answer": f"[simulated reply, {output} tokens]"})
    return f"[simulated reply, {output} tokens]"
