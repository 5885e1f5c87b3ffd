"""The discrete-event cluster: engines on pools of devices, programs from a trace, tool calls,
KV transfers over links, and the metrics a study reports.

A program's turn is a request to the engine serving its model (a replica chosen when the
conversation starts, least loaded first, then sticky so its KV can be reused). When the turn
ends its tool runs for the trace's duration (tools run on the CPU side and are not queued: the
simulator does not model tool-pool contention), then the next turn arrives. A turn that fans out
starts its sub-agent programs and the next turn waits for all of them. When a model's prefill
and decode are placed on different pools, the prompt is prefilled on the prefill pool's engine,
its KV moved over the link between the pools, and decoded on the decode pool's engine.

Events are kept in one heap ordered by (time, sequence number): ties go in the order they were
scheduled, so a run is a pure function of the trace, the configuration and the seed.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hetagent.backends.sim.engine import EngineConfig, Req, SimEngine
from hetagent.backends.sim.traces import Program, Trace
from hetagent.planner.costmodel import CostModel
from hetagent.planner.workload import kv_bytes_per_token

DEFAULT_LINK = (12.5e9, 10e-6)  # bytes/s, s: pools without a declared link (planner.plan's)
PREDICTOR_HISTORY = 100  # recent durations per tool behind the runtime-style prediction
DEFAULT_TOOL_SECONDS = 1.0  # the prediction before a tool has been seen


class SimulationError(ValueError):
    """The simulation cannot run as configured (the message says what to change)."""


@dataclass(frozen=True)
class Server:
    """`replicas` engines of `model`, each on `devices` devices of `pool` (of device `device`)."""

    pool: str
    device: str
    model: str
    devices: int
    replicas: int

    @property
    def key(self) -> str:
        return f"{self.pool}/{self.model}x{self.devices}"


@dataclass(frozen=True)
class Route:
    """Which server decodes a conversation's turns and, when disaggregated, which prefills
    them. Routes are keyed by a trace turn's `ctx` (an agent's node) or by model id."""

    decode: str
    prefill: str | None = None


@dataclass
class Config:
    servers: list[Server]
    routes: dict[str, Route]
    scheduling: Callable[[], Any]  # builds a scheduling policy per engine
    retention: Callable[[SimEngine], Any]  # builds a kv_retention policy for an engine
    default_model: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    links: dict[frozenset[str], tuple[float, float]] = field(default_factory=dict)
    default_link: tuple[float, float] = DEFAULT_LINK
    tell_true_tool_seconds: bool = False  # the oracle: hints carry the true tool duration
    usd_per_device_second: dict[str, float] = field(default_factory=dict)  # by pool


@dataclass
class _Run:
    """A program in flight (a top-level program or a sub-agent)."""

    program: Program
    start: float
    parent: _Run | None
    next_turn: int = 0
    contexts: dict[str, int] = field(default_factory=dict)  # ctx -> prompt tokens so far
    waiting_on: int = 0  # sub-agents and the tool still out before the next turn
    end: float | None = None
    failed: bool = False


class Simulation:
    def __init__(self, trace: Trace, config: Config, cost_model: CostModel | None = None):
        self.trace, self.config = trace, config
        self.cm = cost_model or CostModel()
        self.events: list[tuple[float, int, int, Any, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.processed = 0
        self.engines: dict[str, list[SimEngine]] = {}  # server key -> its replicas
        self.route: dict[tuple[str, str], SimEngine] = {}  # (conv, role) -> engine
        self.tool_history: dict[str, list[float]] = {}
        self.top: list[_Run] = []
        self.done = 0
        self.requests: list[Req] = []
        self.transfer_seconds = 0.0
        self.transfer_bytes = 0.0
        self.errors: list[str] = []  # requests refused (too long for their engine's KV pool)
        self._ideal: dict[str, float] = {}
        self._build()

    # ---- setup -----------------------------------------------------------------------------

    def _build(self) -> None:
        for server in self.config.servers:
            if server.replicas < 1:
                raise SimulationError(f"server {server.key} has no replica")
            engines = []
            for i in range(server.replicas):
                engine = SimEngine(
                    f"{server.key}#{i}",
                    self.cm.model(server.model),
                    self.cm.device(server.device),
                    server.devices,
                    self.config.scheduling(),
                    self.config.retention,
                    self.cm,
                    self.config.engine,
                )
                engine.pool = server.pool
                engines.append(engine)
            self.engines[server.key] = engines
        for name, route in self.config.routes.items():
            for key in (route.decode, route.prefill):
                if key is not None and key not in self.engines:
                    raise SimulationError(f"route {name!r} names unknown server {key!r}")
        for p in self.trace.programs:
            self._check_routes(p)

    def _check_routes(self, p: Program) -> None:
        for t in p.turns:
            self._route(t.ctx, t.model or p.model, p.id)
            for c in t.fanout:
                self._check_routes(c)

    def _route(self, ctx: str, model: str | None, program: str) -> Route:
        route = self.config.routes.get(ctx)
        if route is None:
            model = model or self.config.default_model
            if model is None:
                raise SimulationError(f"program {program} names no model; give --model")
            route = self.config.routes.get(model)
            if route is None:
                served = ", ".join(sorted(self.config.routes)) or "none"
                raise SimulationError(
                    f"program {program} uses model {model!r}, which no pool serves ({served})"
                )
        return route

    # ---- events ------------------------------------------------------------------------------

    def _at(self, time: float, kind: int, a: Any = None, b: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (time, self.seq, kind, a, b))

    def run(self, until: float = math.inf) -> Metrics:
        conc = self.trace.concurrency
        programs = list(self.trace.programs)
        if conc is None:
            for p in programs:
                self._at(p.arrival, ARRIVE, p)
        else:
            self._pending = programs[conc:]
            for p in programs[:conc]:
                self._at(p.arrival, ARRIVE, p)
        events = self.events
        pop = heapq.heappop
        while events:
            time, _, kind, a, b = pop(events)
            if time > until:
                break
            self.now = time
            self.processed += 1
            if kind == STEP_DONE:
                if b == a.generation:
                    self._step_done(a)
            elif kind == TURN:
                self._turn_arrives(a, b)
            elif kind == TOOL_DONE:
                self._child_done(a)
            elif kind == TICK:
                self._tick(a)
            elif kind == ARRIVE:
                self._start(a, None)
            elif kind == DECODE:
                self._submit(a, b)
        for engines in self.engines.values():
            for e in engines:
                e.close(self.now)
        if until == math.inf:  # every program must have ended: anything else is a stall
            stalled = [r.program.id for r in self.top if r.end is None]
            if stalled:
                self.errors.append(f"{len(stalled)} program(s) never finished: {stalled[:5]}")
        return self.metrics()

    def _kick(self, engine: SimEngine) -> None:
        """Start the engine's next step if it is idle; cut a span short if it is busy."""
        if engine.busy:
            end = engine.cut(self.now)
            if end is not None:
                self._at(end, STEP_DONE, engine, engine.generation)
            return
        duration = engine.begin(self.now)
        if duration is not None:
            self._at(self.now + duration, STEP_DONE, engine, engine.generation)
        elif engine.leases and not engine.ticking:
            engine.ticking = True
            self._at(self.now + engine.config.idle_tick, TICK, engine)

    def _tick(self, engine: SimEngine) -> None:
        engine.ticking = False
        if engine.busy:
            return
        engine.idle_tick(self.now)
        self._kick(engine)

    def _step_done(self, engine: SimEngine) -> None:
        for r in engine.end(self.now):
            r.on_done(r, self.now)  # type: ignore[misc]
        self._kick(engine)

    # ---- programs ------------------------------------------------------------------------------

    def _start(self, program: Program, parent: _Run | None) -> None:
        run = _Run(program, self.now, parent)
        if parent is None:
            self.top.append(run)
        self._at(self.now + program.delay, TURN, run, None)

    def _turn_arrives(self, run: _Run, _: Any) -> None:
        p = run.program
        i = run.next_turn
        turn = p.turns[i]
        route = self._route(turn.ctx, turn.model or p.model, p.id)
        ctx = turn.ctx
        conv = f"{p.id}:{ctx}" if ctx != "main" else p.id
        prompt = run.contexts.get(ctx, 0) + turn.input
        last_of_ctx = all(t.ctx != ctx for t in p.turns[i + 1 :])
        if self.config.tell_true_tool_seconds:
            predicted = turn.tool_seconds if turn.tool is not None else None
        else:
            predicted = self._predict(turn.tool) if turn.tool is not None else None
        req = Req(
            f"{p.id}@{i + 1}",
            conv,
            p.id,
            i + 1,
            prompt,
            turn.output,
            self.now,
            run.start,
            last_of_ctx,
            turn.tool,
            predicted,
            p.prefix_id,
            p.prefix_tokens,
            on_done=lambda r, now, run=run: self._turn_done(run, r),
        )
        self.requests.append(req)
        run.contexts[ctx] = prompt + turn.output
        if route.prefill is not None and route.prefill != route.decode:
            self._prefill_then_decode(req, route)
        else:
            self._submit(req, route.decode)

    def _pick(self, engines: list[SimEngine], conv: str, role: str) -> SimEngine:
        key = (conv, role)
        engine = self.route.get(key)
        if engine is None:
            engine = min(engines, key=lambda e: (len(e.running) + len(e.waiting), e.name))
            self.route[key] = engine
        return engine

    def _submit(self, req: Req, server: str) -> None:
        engine = self._pick(self.engines[server], req.conv, "decode")
        if not engine.add(req, self.now):
            self._failed(req)
            return
        self._kick(engine)

    def _failed(self, req: Req) -> None:
        """A request the engine refused: its program fails (a sub-agent's failure ends it, and
        its parent carries on without it)."""
        self.errors.append(f"{req.id}: {req.error}")
        req.on_done(req, self.now)  # type: ignore[misc]

    def _prefill_then_decode(self, req: Req, route: Route) -> None:
        """Disaggregated: prefill alone on the prefill pool, move the KV, decode on the other."""
        assert route.prefill is not None
        engine = self._pick(self.engines[route.prefill], req.conv, "prefill")
        pre = Req(
            req.id + "/prefill",
            req.conv,
            req.program,
            req.turn,
            req.prompt,
            1,
            req.arrival,
            req.program_arrival,
            req.last_turn,
            None,
            None,
            req.prefix_id,
            req.prefix_blocks,
        )
        decode_engine = self._pick(self.engines[route.decode], req.conv, "decode")

        def prefilled(r: Req, now: float) -> None:
            size = (r.prompt - decode_engine.seen_tokens.get(req.conv, 0)) * kv_bytes_per_token(
                decode_engine.model
            )
            bandwidth, latency = self._link(engine.pool, decode_engine.pool)
            seconds = latency + max(0.0, size) / bandwidth
            self.transfer_seconds += seconds
            self.transfer_bytes += max(0.0, size)
            req.imported = True
            self._at(now + seconds, DECODE, req, route.decode)

        pre.on_done = prefilled
        if not engine.add(pre, self.now):
            req.error = pre.error
            self._failed(req)
            return
        self._kick(engine)

    def _link(self, a: str, b: str) -> tuple[float, float]:
        if a == b:
            return (math.inf, 0.0)
        return self.config.links.get(frozenset((a, b)), self.config.default_link)

    def _predict(self, tool: str) -> float:
        """The runtime's prediction (`Runtime.predicted_seconds`): the median of recent calls."""
        history = self.tool_history.get(tool)
        return statistics.median(history) if history else DEFAULT_TOOL_SECONDS

    def _turn_done(self, run: _Run, req: Req) -> None:
        p = run.program
        turn = p.turns[run.next_turn]
        run.next_turn += 1
        if req.error is not None:
            run.failed = True
        if run.next_turn >= len(p.turns) or run.failed:
            self._program_done(run)
            return
        run.waiting_on = len(turn.fanout) + 1
        if turn.tool is not None:
            history = self.tool_history.setdefault(turn.tool, [])
            history.append(turn.tool_seconds)
            del history[:-PREDICTOR_HISTORY]
        self._at(self.now + turn.tool_seconds, TOOL_DONE, run)
        for child in turn.fanout:
            self._start(child, run)

    def _child_done(self, run: _Run) -> None:
        run.waiting_on -= 1
        if run.waiting_on == 0:
            self._turn_arrives(run, None)

    def _program_done(self, run: _Run) -> None:
        run.end = self.now
        if run.parent is not None:
            self._child_done(run.parent)
            return
        self.done += 1
        pending = getattr(self, "_pending", None)
        if pending:
            nxt = pending.pop(0)
            self._at(max(self.now, nxt.arrival), ARRIVE, nxt)

    # ---- ideal (unloaded) job time, for slowdown SLAs --------------------------------------------

    def ideal_jct(self, program: Program) -> float:
        """The program alone on an empty cluster: every turn prefills only its new tokens, decodes
        at batch 1, every tool takes its duration, sub-agents in parallel."""
        total = program.delay
        contexts: dict[str, int] = {}
        for turn in program.turns:
            route = self._route(turn.ctx, turn.model or program.model, program.id)
            engine = self.engines[route.decode][0]
            before = contexts.get(turn.ctx, 0)
            prompt = before + turn.input
            prefill = engine.step_seconds(turn.input, before, 0, 0)
            mid = prompt + turn.output // 2
            decode = (turn.output - 1) * engine.step_seconds(0, 0, 1, mid)
            contexts[turn.ctx] = prompt + turn.output
            children = max((self.ideal_jct(c) for c in turn.fanout), default=0.0)
            total += prefill + decode + max(turn.tool_seconds, children)
        return total

    # ---- metrics ---------------------------------------------------------------------------------

    def metrics(self) -> Metrics:
        finished = [r for r in self.top if r.end is not None and not r.failed]
        jcts = sorted(r.end - r.start for r in finished)  # type: ignore[operator]
        start = min((r.start for r in self.top), default=0.0)
        end = max((r.end for r in finished), default=start)  # type: ignore[type-var]
        makespan = end - start
        ideals = {r.program.id: self.ideal_jct(r.program) for r in finished}
        all_engines = [e for es in self.engines.values() for e in es]
        pools: dict[str, dict[str, float]] = {}
        cost = 0.0
        for e in all_engines:
            pool = e.pool
            entry = pools.setdefault(pool, {"busy_s": 0.0, "engines": 0, "devices": 0})
            entry["busy_s"] += e.busy_time
            entry["engines"] += 1
            entry["devices"] += e.devices
            cost += self.config.usd_per_device_second.get(pool, 0.0) * e.devices * makespan
        utilization = {
            pool: (v["busy_s"] / (v["engines"] * makespan) if makespan > 0 else 0.0)
            for pool, v in pools.items()
        }
        prompt = sum(e.prompt_tokens for e in all_engines)
        hits = sum(e.hit_tokens for e in all_engines)
        pinned = sum(e.pinned_idle_block_seconds * e.bytes_per_block for e in all_engines)
        contended = sum(e.pinned_contended_block_seconds * e.bytes_per_block for e in all_engines)
        return Metrics(
            programs=len(self.top),
            completed=len(finished),
            failed=sum(1 for r in self.top if r.failed),
            errors=self.errors[:20],
            jct=jcts,
            jct_by_program={r.program.id: r.end - r.start for r in finished},  # type: ignore[operator]
            ideal_by_program=ideals,
            makespan=makespan,
            utilization=utilization,
            kv_hit_rate=hits / prompt if prompt else 0.0,
            reprefill_tokens=sum(e.reprefill_tokens for e in all_engines),
            prefill_tokens=sum(r.prefilled_tokens for r in self.requests),
            preemptions=sum(e.preemptions for e in all_engines),
            pinned_idle_gb_s=pinned / 1e9,
            pinned_contended_gb_s=contended / 1e9,
            cost_usd=cost,
            events=self.processed
            - sum(e.spans for e in all_engines)
            + sum(e.steps for e in all_engines),
            heap_events=self.processed,
            engine_steps=sum(e.steps for e in all_engines),
            transfer_bytes=self.transfer_bytes,
        )


ARRIVE, TURN, STEP_DONE, TOOL_DONE, TICK, DECODE = range(6)


@dataclass
class Metrics:
    programs: int
    completed: int
    failed: int  # a turn was refused (longer than its engine's KV pool)
    errors: list[str]  # the first refusals
    jct: list[float]  # sorted
    jct_by_program: dict[str, float]
    ideal_by_program: dict[str, float]
    makespan: float
    utilization: dict[str, float]
    kv_hit_rate: float
    reprefill_tokens: int
    prefill_tokens: int
    preemptions: int
    pinned_idle_gb_s: float  # device memory held by KV leases x time
    pinned_contended_gb_s: float  # of which while a request waited for memory
    cost_usd: float
    events: int  # simulated: arrivals, turns, tool returns, idle ticks and every engine step
    heap_events: int  # of which went through the event heap (a span of decode steps is one)
    engine_steps: int
    transfer_bytes: float

    def quantile(self, q: float) -> float:
        if not self.jct:
            return math.nan
        return self.jct[min(len(self.jct) - 1, math.ceil(q * len(self.jct)) - 1)]

    def sla_attainment(
        self, sla_seconds: float | None = None, slowdown: float | None = None
    ) -> float:
        """Share of programs within `sla_seconds`, or within `slowdown` x their unloaded time."""
        if not self.jct_by_program:
            return 0.0
        ok = 0
        for pid, jct in self.jct_by_program.items():
            if sla_seconds is not None:
                limit = sla_seconds
            else:
                limit = (slowdown or 1.0) * self.ideal_by_program[pid]
            ok += jct <= limit + 1e-9
        return ok / self.programs

    def summary(self, sla_seconds: float | None = None, slowdown: float | None = 3.0) -> dict:
        mean = statistics.fmean(self.jct) if self.jct else math.nan
        return {
            "programs": self.programs,
            "completed": self.completed,
            "failed": self.failed,
            "errors": self.errors,
            "jct_mean_s": mean,
            "jct_p50_s": self.quantile(0.5),
            "jct_p95_s": self.quantile(0.95),
            "jct_p99_s": self.quantile(0.99),
            "jct_slowdown_mean": statistics.fmean(
                jct / self.ideal_by_program[pid] for pid, jct in self.jct_by_program.items()
            )
            if self.jct_by_program
            else math.nan,
            "makespan_s": self.makespan,
            "throughput_programs_per_s": self.completed / self.makespan if self.makespan else 0.0,
            "sla_attainment": self.sla_attainment(sla_seconds, None if sla_seconds else slowdown),
            "sla": {"seconds": sla_seconds} if sla_seconds else {"slowdown": slowdown},
            "utilization": self.utilization,
            "kv_hit_rate": self.kv_hit_rate,
            "reprefill_tokens": self.reprefill_tokens,
            "prefill_tokens": self.prefill_tokens,
            "preemptions": self.preemptions,
            "pinned_idle_gb_s": self.pinned_idle_gb_s,
            "pinned_contended_gb_s": self.pinned_contended_gb_s,
            "tco_usd": self.cost_usd,
            "tco_usd_per_program": self.cost_usd / self.completed if self.completed else math.nan,
            "events": self.events,
            "heap_events": self.heap_events,
            "engine_steps": self.engine_steps,
        }
