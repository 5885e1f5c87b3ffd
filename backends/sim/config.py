"""Build a simulation's configuration from what a user names: a Cluster and either an agent
(planned with `plan_agent`: its placement and fleet) or a model on a pool; policies by name."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hetagent import policies
from hetagent.backends.sim.engine import EngineConfig, SimEngine
from hetagent.backends.sim.oracle import Oracle
from hetagent.backends.sim.simulator import DEFAULT_LINK, Config, Route, Server, SimulationError
from hetagent.planner.costmodel import CostModel, CostModelError
from hetagent.planner.tco import PricingError, device_hour_cost
from hetagent.policies.kv_retention import POLICIES as KV_POLICIES
from hetagent.spec import AgentGraph, Cluster

PLANNING_CONTEXT = 32_768  # tokens one sequence must fit when choosing devices per replica


@dataclass(frozen=True)
class PolicySpec:
    kv: str = "evict"
    sched: str = "fcfs"
    kv_options: tuple[tuple[str, Any], ...] = ()
    sched_options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        def named(name: str, options: tuple[tuple[str, Any], ...]) -> str:
            extra = ",".join(f"{k}={v}" for k, v in options)
            return f"{name}({extra})" if extra else name

        return f"kv={named(self.kv, self.kv_options)},sched={named(self.sched, self.sched_options)}"


def parse_policy(text: str) -> PolicySpec:
    """`kv=lease,sched=plas,kv.seconds=4`: names, then options as `kv.OPTION=VALUE`."""
    values: dict[str, str] = {}
    options: dict[str, dict[str, Any]] = {"kv": {}, "sched": {}}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise SimulationError(f"--policy: expected KEY=VALUE, got {part!r}")
        if "." in key:
            kind, _, option = key.partition(".")
            if kind not in options or not option:
                raise SimulationError(f"--policy: unknown option {key!r} (use kv.X or sched.X)")
            options[kind][option.replace("-", "_")] = _value(value)
        elif key in ("kv", "sched"):
            values[key] = value
        else:
            raise SimulationError(f"--policy: unknown key {key!r}; use kv= and sched=")
    spec = PolicySpec(
        values.get("kv", "evict"),
        values.get("sched", "fcfs"),
        tuple(sorted(options["kv"].items())),
        tuple(sorted(options["sched"].items())),
    )
    factories(spec)  # fail now on unknown names or options
    return spec


def _value(text: str) -> Any:
    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        return text


def factories(
    spec: PolicySpec,
) -> tuple[Callable[[], Any], Callable[[SimEngine], Any]]:
    """Builders of the scheduling policy and the kv_retention policy of one engine."""

    def sched() -> Any:
        return policies.get("scheduling", spec.sched, **dict(spec.sched_options))

    def kv(engine: SimEngine | None) -> Any:
        return retention_policy(spec.kv, dict(spec.kv_options), engine)

    try:
        sched()
        kv(None)
    except (ValueError, TypeError) as exc:
        raise SimulationError(f"--policy: {exc}") from None
    return sched, kv


RATE_TOKENS = 4096  # prompt length at which an engine's prefill rate is measured


def retention_policy(name: str, options: dict[str, Any], engine: SimEngine | None) -> Any:
    """The named kv_retention policy for `engine` (the oracle is built here). A policy that
    prices re-prefill (`prefill_seconds_per_token`) is told the engine's own rate from the cost
    model unless the options set it, as a deployment would configure it for its devices."""
    if name == Oracle.name:
        if engine is None:
            return None
        return Oracle(engine.prefill_seconds, **options)
    cls = KV_POLICIES.get(name)
    key = "prefill_seconds_per_token"
    if (
        engine is not None
        and cls is not None
        and key not in options
        and key in inspect.signature(cls.__init__).parameters
    ):
        options = {**options, key: engine.prefill_seconds(RATE_TOKENS) / RATE_TOKENS}
    return policies.get("kv_retention", name, **options)


Links = dict[frozenset[str], tuple[float, float]]


def _links(cluster: Cluster) -> tuple[Links, tuple[float, float]]:
    """Bytes/s and seconds of latency between pools, and for pairs without a link."""
    spec = cluster.spec
    links = {
        frozenset(x.pools): (x.bandwidth_gb_per_second * 1e9, x.latency_microseconds * 1e-6)
        for x in spec.links
    }
    default = DEFAULT_LINK
    if spec.default_link is not None:
        default = (
            spec.default_link.bandwidth_gb_per_second * 1e9,
            spec.default_link.latency_microseconds * 1e-6,
        )
    return links, default


def _prices(cluster: Cluster, cm: CostModel) -> dict[str, float]:
    try:
        return {
            p.name: device_hour_cost(p, cm.device(p.device), cluster.spec).per_second
            for p in cluster.spec.pools
        }
    except PricingError as exc:
        raise SimulationError(str(exc)) from None


def _pool(cluster: Cluster, name: str):
    try:
        return cluster.pool(name)
    except KeyError:
        known = ", ".join(p.name for p in cluster.spec.pools)
        raise SimulationError(f"--pool: no pool {name!r} in the cluster ({known})") from None


def model_on_pool(
    cluster: Cluster,
    model: str,
    pool: str,
    policy: PolicySpec,
    *,
    replicas: int | None = None,
    engine: EngineConfig | None = None,
    cm: CostModel | None = None,
) -> Config:
    """Every device of `pool` serving `model`: as many replicas as the pool holds, each on the
    fewest devices whose memory holds the weights and one sequence of PLANNING_CONTEXT."""
    cm = cm or CostModel()
    p = _pool(cluster, pool)
    try:
        m, device = cm.model(model), cm.device(p.device)
    except CostModelError as exc:
        raise SimulationError(str(exc)) from None
    context = min(PLANNING_CONTEXT, m.max_context or PLANNING_CONTEXT)
    devices = cm.min_devices(m, device, batch=1, context=context)
    if devices is None or devices > p.count:
        raise SimulationError(f"{model} does not fit on pool {pool} ({p.count} x {p.device})")
    n = replicas if replicas is not None else p.count // devices
    if n < 1 or n * devices > p.count:
        raise SimulationError(
            f"--replicas: pool {pool} holds at most {p.count // devices} replicas of {model}"
        )
    server = Server(pool, p.device, model, devices, n)
    sched, kv = factories(policy)
    links, default = _links(cluster)
    return Config(
        [server],
        {model: Route(server.key)},
        sched,
        kv,
        default_model=model,
        engine=engine or EngineConfig(),
        links=links,
        default_link=default,
        tell_true_tool_seconds=policy.kv == Oracle.name,
        usd_per_device_second=_prices(cluster, cm),
    )


def agent_on_cluster(
    graph: AgentGraph,
    cluster: Cluster,
    policy: PolicySpec,
    *,
    engine: EngineConfig | None = None,
    cm: CostModel | None = None,
    plan: Any = None,
) -> Config:
    """The agent's plan on the cluster: each LLM node's prefill and decode on the pools the
    planner chose, with the replicas its fleet sizing asks for (at least one each)."""
    from hetagent.planner.plan import PlanError, plan_agent

    cm = cm or CostModel()
    if plan is None:
        try:
            plan = plan_agent(graph, cluster, cost_model=cm)
        except PlanError as exc:
            raise SimulationError(f"cannot plan {graph.metadata.name}: {exc}") from None
    fleet = {f.pool: f.replicas for f in plan.fleet.pools}
    servers: dict[str, Server] = {}
    by_node: dict[str, dict[str, str]] = {}
    for a in plan.assignments:
        if a.kind not in ("llm.prefill", "llm.decode"):
            continue
        node = a.op.split(".")[0]
        model = graph.spec.models[graph.node(node).model].id  # type: ignore[union-attr]
        replicas = fleet.get(a.pool, {}).get(f"{model} x{a.devices}", 0)  # may be fractional
        server = Server(a.pool, a.device, model, a.devices, max(1, math.ceil(replicas)))
        servers.setdefault(server.key, server)
        by_node.setdefault(node, {})[a.kind] = server.key
    routes = {
        node: Route(keys["llm.decode"], keys.get("llm.prefill"))
        for node, keys in by_node.items()
        if "llm.decode" in keys
    }
    for route in list(routes.values()):  # traces without node names: by model, first node
        routes.setdefault(servers[route.decode].model, route)
    sched, kv = factories(policy)
    links, default = _links(cluster)
    return Config(
        list(servers.values()),
        routes,
        sched,
        kv,
        engine=engine or EngineConfig(),
        links=links,
        default_link=default,
        tell_true_tool_seconds=policy.kv == Oracle.name,
        usd_per_device_second=_prices(cluster, cm),
    )
