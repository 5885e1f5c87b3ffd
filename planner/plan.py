"""Plan an agent on a cluster: the placement problem of its operators, solved, with baselines.

For every operator the compiler produces, and every pool, the cost model gives a latency and the
TCO model a cost per request:

- LLM phases (prefill, decode) and embeddings run the roofline of `costmodel` on the pool's
  device, over as many devices as the weights and KV need (tensor parallelism; infeasible when
  the pool has too few). A decode step serves `batch` sequences at once (continuous batching),
  so a request pays 1/batch of the devices' time; prefill and embeddings pay all of it.
  TTFT and TPOT bounds of the SLO rule out options that miss them.
- Host operators (tool calls, templates, vector search) take their declared time
  (`expectedDurationSeconds`, `expectedToolSeconds`) or the defaults below, which the runtime's
  profiles will replace. They run on the CPU pools when the cluster has some, paying the share of
  a socket their CPU hint asks for; otherwise on the accelerators' host CPUs, whose cost the
  accelerator's hour includes. Tokenization goes with prefill, detokenization with decode.
- Operators inside a ReAct loop count p95 turns for latency and expected turns for cost.
- An edge between pools costs its bytes over the link (a KV cache: its tokens' KV bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue

from hetagent.compiler import lower
from hetagent.compiler.dataflow import producer
from hetagent.compiler.dialects import kv, llm, retr, tool
from hetagent.compiler.dialects.agent import LOOP_EXPECTED_TURNS, LOOP_P95_TURNS, is_react_loop
from hetagent.compiler.dialects.base import HetOp, from_attr
from hetagent.compiler.placement import FOLLOWERS, MODEL_OPS, Placement, Pool, placed_ops
from hetagent.planner.catalog import Device
from hetagent.planner.costmodel import MAX_TENSOR_PARALLEL, CostModel, CostModelError
from hetagent.planner.fleet import Candidate, Fleet, Server, size_fleet
from hetagent.planner.placement import baselines, solve
from hetagent.planner.placement.baselines import Baseline
from hetagent.planner.placement.problem import Edge, Infeasible, Option, PlacementProblem, Solution
from hetagent.planner.tco import HourlyCost, device_hour_cost
from hetagent.planner.workload import kv_bytes_per_token, mean_context
from hetagent.spec import AgentGraph, Cluster

MODEL_KINDS = frozenset(op.name for op in MODEL_OPS)
# Host operators without a declared duration, until the runtime profiles them (issue 7).
DEFAULT_TOOL_SECONDS = 1.0
HOST_OP_SECONDS = {"data.template": 1e-4, "data.parse": 1e-4, "retr.search": 2e-3}
BYTES_PER_TEXT_TOKEN = 4  # text and token ids between pools
DEFAULT_LINK = (12.5e9, 10e-6)  # 100 Gb/s Ethernet, 10 us: pools with no link declared
MAX_TASKS_FOR_MOVES = 200  # one-operator moves offered to the fleet ILP (tasks x pools evaluations)


@dataclass(frozen=True)
class PlanOptions:
    solver: str = "auto"  # auto | milp | heuristic
    objective: str = "tco"  # tco | latency | energy
    decode_batch: int = 16  # at most this many sequences share a decode step (continuous batching)
    dtype: str = "bf16"


@dataclass(frozen=True)
class Assignment:
    op: str
    kind: str
    pool: str
    device: str
    devices: int  # tensor-parallel group of a model operator; 0 for host operators
    latency_s: float
    cost_usd: float
    device_seconds: float  # per request: what cost, energy and the fleet derive from


@dataclass(frozen=True)
class BaselineResult:
    name: str
    tco_per_request_usd: float | None
    latency_s: float | None
    sla_met: bool
    ratio: float | None  # baseline cost / ours
    reason: str = ""


@dataclass(frozen=True)
class AgentPlan:
    agent: str
    cluster: str
    sla_seconds: float | None
    solution: Solution
    assignments: list[Assignment]
    baselines: list[BaselineResult]
    output_tokens: int
    fleet: Fleet
    hourly: dict[str, HourlyCost] = field(default_factory=dict)
    pools: tuple[Pool, ...] = ()
    energy_joules: float = 0.0  # per request, devices' power at the cluster's PUE
    arrival_rate: float = 1.0  # requests per second the fleet is sized for

    @property
    def usd_per_request_at_fleet(self) -> float:
        """What a request costs when the whole fleet the traffic needs is paid for, idle time
        included (the solution's cost counts only the device time requests use)."""
        return self.fleet.usd_per_hour / (3600 * self.arrival_rate)

    @property
    def placement(self) -> Placement:
        """What the compiler applies (`hetagent compile --emit placed|plan`)."""
        return Placement(self.pools, dict(self.solution.assignment))

    @property
    def usd_per_million_tokens(self) -> float | None:
        if not self.output_tokens:
            return None
        return self.solution.cost_usd / self.output_tokens * 1e6


@dataclass(frozen=True)
class _Run:
    """One run of an operator on a pool: its latency, the devices it spans, and the share of
    their time a request pays for (1/batch of a decode's devices, a tool's cores of a socket)."""

    latency_s: float
    devices: int
    share: float

    @property
    def device_seconds(self) -> float:
        return self.latency_s * self.devices * self.share


class PlanError(ValueError):
    """The agent cannot be planned on the cluster (the message says why and what to change)."""


def plan_agent(
    graph: AgentGraph,
    cluster: Cluster,
    options: PlanOptions | None = None,
    cost_model: CostModel | None = None,
) -> AgentPlan:
    """Place the agent's operators at the lowest TCO that meets its SLA, with the baselines."""
    options = options or PlanOptions()
    cost_model = cost_model or CostModel()
    module = lower(graph, "ops")
    builder = _ProblemBuilder(graph, cluster, cost_model, options)
    problem = builder.build(module)
    try:
        if options.objective == "energy":  # least energy within the SLA, then priced
            energy_solution = solve(builder.energy_problem(problem), solver=options.solver)
            solution = problem.evaluate(energy_solution.assignment)
        else:
            solution = solve(problem, solver=options.solver, objective=options.objective)
    except Infeasible as error:
        raise PlanError(str(error)) from None
    except RuntimeError as error:  # the MILP's time limit ran out before any placement
        raise PlanError(f"{error}; try --solver heuristic") from None
    if not solution.sla_met:  # the fastest placement (objective latency) can still miss it
        path = " -> ".join(solution.critical_path)
        raise PlanError(
            f"no placement meets the {problem.sla_seconds:g} s SLA: best achievable "
            f"latency is {solution.latency_s:.6g} s, critical path {path}"
        )
    ours = solution.cost_usd
    results = []
    baselines_found = baselines(problem)
    for baseline in baselines_found:
        if baseline.solution is None:
            results.append(BaselineResult(baseline.name, None, None, False, None, baseline.reason))
            continue
        cost = baseline.solution.cost_usd
        results.append(
            BaselineResult(
                baseline.name,
                cost,
                baseline.solution.latency_s,
                baseline.solution.sla_met,
                cost / ours if ours > 0 else None,
                baseline.reason,
            )
        )
    assignments = [
        Assignment(
            task,
            builder.kinds[task],
            pool,
            builder.devices[pool].id,
            builder.runs[task, pool].devices if builder.kinds[task] in MODEL_KINDS else 0,
            problem.options[task][pool].latency_s,
            problem.options[task][pool].cost_usd,
            builder.device_seconds[task, pool],
        )
        for task, pool in solution.assignment.items()
    ]
    candidates = builder.fleet_candidates(problem, solution, baselines_found)
    shared = frozenset(name for name, d in builder.devices.items() if d.kind == "cpu")
    fleet = size_fleet(candidates, builder.hourly, builder.pools, graph.spec.traffic, shared)
    return AgentPlan(
        agent=graph.metadata.name,
        cluster=cluster.metadata.name,
        sla_seconds=problem.sla_seconds,
        solution=solution,
        assignments=assignments,
        baselines=results,
        output_tokens=builder.output_tokens,
        hourly=builder.hourly,
        pools=builder.pools,
        fleet=fleet,
        energy_joules=sum(builder.energy[task, pool] for task, pool in solution.assignment.items()),
        arrival_rate=builder.rate,
    )


class _ProblemBuilder:
    def __init__(
        self, graph: AgentGraph, cluster: Cluster, cost_model: CostModel, options: PlanOptions
    ):
        self.graph, self.cluster, self.cost_model, self.options = (
            graph,
            cluster,
            cost_model,
            options,
        )
        spec = cluster.spec
        self.pools = tuple(Pool(p.name, p.device, p.count) for p in spec.pools)
        self.devices: dict[str, Device] = {p.name: cost_model.device(p.device) for p in spec.pools}
        try:
            self.hourly = {
                p.name: device_hour_cost(p, self.devices[p.name], spec) for p in spec.pools
            }
        except ValueError as error:
            raise PlanError(str(error)) from None
        self.has_cpu_pools = any(d.kind == "cpu" for d in self.devices.values())
        energy = cluster.spec.energy
        # average watts of a busy device, at the cluster's utilization and PUE
        self.watts = {
            name: (device.tdp_w or 0.0) * energy.utilization * energy.pue
            for name, device in self.devices.items()
        }
        self.runs: dict[tuple[str, str], _Run] = {}  # (task, pool) -> one run
        self.device_seconds: dict[tuple[str, str], float] = {}  # per request (loops: x turns)
        self.energy: dict[tuple[str, str], float] = {}  # (task, pool) -> joules per request
        traffic = graph.spec.traffic
        self.rate = traffic.arrival_rate_per_second if traffic else 1.0  # requests per second
        self.kinds: dict[str, str] = {}
        self.models: dict[str, str] = {}  # the model an operator runs; "host" for the rest
        self.output_tokens = 0

    def build(self, module: ModuleOp) -> PlacementProblem:
        tasks = list(placed_ops(module))
        ids = {id(op): op.attr("id") for op in tasks}
        options: dict[str, dict[str, Option]] = {}
        edges: list[Edge] = []
        for op in tasks:
            task = op.attr("id")
            self.kinds[task] = op.name
            self.models[task] = op.attr("model") if isinstance(op, MODEL_OPS) else "host"
            p95, expected = _turns(op)
            options[task], why_not = {}, []
            for pool in self.pools:
                run = self._run(op, pool.name, self.rate * expected)
                if isinstance(run, str):
                    why_not.append(f"{pool.name}: {run}")
                    continue
                key = (task, pool.name)
                self.runs[key] = run
                self.device_seconds[key] = run.device_seconds * expected
                self.energy[key] = self.device_seconds[key] * self.watts[pool.name]
                cost = self.device_seconds[key] * self.hourly[pool.name].per_second
                options[task][pool.name] = Option(run.latency_s * p95, cost)
            if not options[task]:
                raise PlanError(
                    f"no pool of {self.cluster.metadata.name} can run {task} "
                    f"({op.name}{_model_note(op)}): {'; '.join(why_not)}"
                )
            if isinstance(op, llm.DecodeOp):
                self.output_tokens += round(op.attr("tokens") * expected)
            for value in op.operands:
                for source in _sources(value):
                    if id(source) in ids:  # a value entering a loop is moved once
                        crossings = p95 if _loop(source) is _loop(op) else 1.0
                        moved = self._bytes(value, source)
                        edges.append(Edge(ids[id(source)], task, moved, crossings))
        slo = self.graph.spec.slo
        return PlacementProblem(
            tasks=tuple(op.attr("id") for op in tasks),
            pools=tuple(p.name for p in self.pools),
            options=options,
            edges=tuple(edges),
            transfer_seconds=self._transfer_seconds,
            sla_seconds=slo.p95_latency_seconds if slo else None,
            host_tasks=frozenset(op.attr("id") for op in tasks if not isinstance(op, MODEL_OPS)),
        )

    def _run(self, op: HetOp, pool: str, calls_per_second: float) -> _Run | str:
        """One run of `op` on `pool`, or why it cannot run there."""
        device = self.devices[pool]
        if isinstance(op, MODEL_OPS):
            try:
                return self._model_run(op, pool, calls_per_second)
            except CostModelError as error:
                return str(error)  # the catalog lacks a figure of this device
        if self.has_cpu_pools and device.kind != "cpu":
            return "host operators run on the CPU pools"
        cores = (op.attr("cpu") or 1.0) if isinstance(op, tool.ExecOp) else 1.0
        latency = (
            op.attr("expected_seconds") or DEFAULT_TOOL_SECONDS
            if isinstance(op, tool.ExecOp)
            else HOST_OP_SECONDS.get(op.name, 1e-4)
        )
        # on an accelerator's host CPUs the accelerator's hour already pays for them
        share = min(1.0, cores / (device.cores or 1)) if device.kind == "cpu" else 0.0
        return _Run(latency, 1, share)

    def _model_run(self, op: HetOp, pool: str, calls_per_second: float) -> _Run | str:
        """A decode shares its devices with the other sequences in flight: as many as the
        traffic keeps decoding at once (Little's law: calls/s x seconds per call), at most
        `decode_batch`; prefill and embeddings run alone."""
        if not isinstance(op, llm.DecodeOp):
            return self._fit(op, pool, 1)
        run = self._fit(op, pool, self.options.decode_batch)
        if isinstance(run, _Run):
            in_flight = math.ceil(calls_per_second * run.latency_s)
            if in_flight < self.options.decode_batch:
                run = self._fit(op, pool, max(1, in_flight))
        return run

    def _fit(self, op: HetOp, pool: str, batch: int) -> _Run | str:
        """The fewest devices of the pool (tensor parallel) that hold the model and the KV of
        `batch` sequences and meet the SLO's TTFT (prefill) or TPOT (decode) bound; else why
        no count does."""
        device, slo, dtype = self.devices[pool], self.graph.spec.slo, self.options.dtype
        model = self.cost_model.model(op.attr("model"))
        decode = isinstance(op, llm.DecodeOp)
        prompt = _decode_context(op) if decode else 0
        devices = self.cost_model.min_devices(
            model, device, batch=batch, context=op.attr("tokens") + prompt, dtype=dtype
        )
        bound = (slo.tpot_seconds if decode else slo.ttft_seconds) if slo else None
        if isinstance(op, retr.EmbedOp):
            bound = None  # TTFT is the generating model's
        limit = min(self.pool(pool).count, MAX_TENSOR_PARALLEL)
        if devices is None or devices > limit:
            return f"{model.id} and its KV do not fit {limit} x {device.id}"
        slowest = None
        while devices <= limit:
            if decode:
                context = mean_context(prompt, op.attr("tokens"))
                step = self.cost_model.decode_step(
                    model, device, context, batch=batch, devices=devices, dtype=dtype
                ).seconds
                latency, meets = step * op.attr("tokens"), bound is None or step <= bound
            else:
                new, prefix = self._prefill_tokens(op)
                latency = self.cost_model.prefill(
                    model, device, new, prefix=prefix, devices=devices, dtype=dtype
                ).seconds
                meets = bound is None or latency <= bound
            if meets:
                return _Run(latency, devices, 1 / batch)
            slowest = step if decode else latency
            devices *= 2
        metric = "tpotSeconds" if decode else "ttftSeconds"
        return f"{slowest:.3g} s on {limit} x {device.id} misses {metric} {bound:g}"

    def fleet_candidates(
        self, problem: PlacementProblem, optimum: Solution, found: list[Baseline]
    ) -> list[Candidate]:
        """Placements the fleet may split traffic across, each meeting the SLA on its own: the
        optimum, the baselines that meet it, and the optimum with one operator moved to another
        pool where the SLA still holds (a spill-over when the optimum's pool runs short)."""
        placements = {"optimal": optimum}
        placements |= {b.name: b.solution for b in found if b.solution and b.solution.sla_met}
        if len(problem.tasks) <= MAX_TASKS_FOR_MOVES:
            for task in problem.tasks:
                for pool in problem.options[task]:
                    if pool != optimum.assignment[task]:
                        moved = problem.evaluate(optimum.assignment | {task: pool})
                        if moved.sla_met:
                            placements[f"{task} on {pool}"] = moved
        unique: dict[tuple, Candidate] = {}
        for name, solution in placements.items():
            key = tuple(sorted(solution.assignment.items()))
            if key not in unique:
                unique[key] = Candidate(name, self._load(solution), solution.cost_usd)
        return list(unique.values())

    def _load(self, solution: Solution) -> dict[Server, float]:
        """Device-seconds per request a placement asks of each server (model x group x pool)."""
        load: dict[Server, float] = {}
        for task, pool in solution.assignment.items():
            seconds = self.device_seconds[task, pool]
            if seconds > 0:
                server = Server(pool, self.models[task], self.runs[task, pool].devices)
                load[server] = load.get(server, 0.0) + seconds
        return load

    def energy_problem(self, problem: PlacementProblem) -> PlacementProblem:
        """The same problem with joules per request in place of dollars."""
        options = {
            task: {
                pool: Option(o.latency_s, self.energy[task, pool]) for pool, o in by_pool.items()
            }
            for task, by_pool in problem.options.items()
        }
        return replace(problem, options=options)

    def _prefill_tokens(self, op: HetOp) -> tuple[int, int]:
        """(new tokens, prefix tokens) a prefill computes. A turn of a ReAct loop whose KV the
        agent's `kvRetention` policy keeps between turns (anything but `evict`, the default)
        extends its cache: over the loop every token is prefilled once, so with a mean prompt of
        `tokens` a turn adds about 2 x tokens / expected turns on top of the rest."""
        tokens = op.attr("tokens")
        _, expected = _turns(op)
        policies = self.graph.spec.policies
        retained = policies is not None and policies.kv_retention not in (None, "evict")
        if not (isinstance(op, llm.PrefillOp) and retained and expected > 1):
            return tokens, 0
        new = max(1, min(tokens, round(2 * tokens / expected)))
        return new, tokens - new // 2

    def _bytes(self, value: SSAValue, source: HetOp) -> float:
        """What an edge moves: a KV cache's bytes, or a few bytes a token of text."""
        if isinstance(value.type, llm.KVType):
            per_token = kv_bytes_per_token(self.cost_model.model(source.attr("model")))
            return per_token * (source.attr("tokens") or 0)
        return BYTES_PER_TEXT_TOKEN * (source.attr("tokens") or source.attr("output_tokens") or 256)

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    def _transfer_seconds(self, source: str, target: str, size: float) -> float:
        if source == target:
            return 0.0
        bandwidth, latency = DEFAULT_LINK
        spec = self.cluster.spec
        pair = {source, target}
        link = next((e for e in spec.links if set(e.pools) == pair), spec.default_link)
        if link is not None:
            bandwidth, latency = (
                link.bandwidth_gb_per_second * 1e9,
                link.latency_microseconds * 1e-6,
            )
        return latency + size / bandwidth


def _loop(op: Operation) -> Operation | None:
    """The ReAct loop an op is in, if any."""
    parent = op.parent_op()
    while parent is not None and not is_react_loop(parent):
        parent = parent.parent_op()
    return parent


def _turns(op: Operation) -> tuple[float, float]:
    """(p95, expected) turns of the ReAct loop an op is in; (1, 1) outside loops."""
    parent = _loop(op)
    if parent is None:
        return 1.0, 1.0
    return (
        float(from_attr(parent.attributes[LOOP_P95_TURNS])),
        float(from_attr(parent.attributes[LOOP_EXPECTED_TURNS])),
    )


def _decode_context(op: llm.DecodeOp) -> int:
    """The prompt length a decode continues from: the tokens of the prefill that fed it."""
    source = producer(op.kv_in, back_edge=False)
    while isinstance(source, kv.TransferOp):
        source = producer(source.kv_in, back_edge=False)
    return source.attr("tokens") if isinstance(source, llm.PrefillOp) else 0


def _sources(value: SSAValue) -> list[HetOp]:
    """The placed operators a value comes from, looking through followers (a lease, a
    loop's condition, transfers) and the loop's first-turn edges (the graph is acyclic). So
    the back edge of a loop (a turn's observation to the next turn's prefill) is not priced:
    it carries a few KB of text, microseconds on any link, where the KV stays with its lease."""
    source = producer(value, back_edge=False)
    if source is None or not isinstance(source, HetOp):
        return []
    if isinstance(source, FOLLOWERS):
        return [s for operand in source.operands for s in _sources(operand)]
    return [source]


def _model_note(op: HetOp) -> str:
    model = op.attr("model")
    return f" of {model}" if model else ""


__all__ = ["AgentPlan", "PlanError", "PlanOptions", "plan_agent"]
