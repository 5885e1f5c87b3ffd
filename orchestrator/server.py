"""The HTTP API of `hetagent serve`: agents, runs and their live events, plans, metrics, and the
ops dashboard, for several tenants at once.

Every `/v1` route and `/metrics` needs `Authorization: Bearer TOKEN`; the token names the tenant
(`Tenants`, from a file or `$HETAGENT_TOKENS`). A tenant sees only its own agents and runs: another
tenant's run answers 404 exactly as a missing one does, so ids leak nothing. Bodies are capped
(`max_body_bytes`, 413 beyond), and every bad input answers a 4xx whose `detail` is one line
naming what to fix (422s also list `errors` with their document paths).

`Service` is the API without HTTP: the routes call it, and so does the SDK's `Client("local")`,
so both behave the same. Live updates are server-sent events read from the run store's event log,
so a follower sees the same stream whichever process executes the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from hetagent.documents import known_ids
from hetagent.orchestrator.runtime import InputError, RunOptions, Runtime
from hetagent.orchestrator.store import RUN_STATES, Run, RunStore, Step
from hetagent.orchestrator.store import events as events_table
from hetagent.spec import (
    AgentGraph,
    Cluster,
    Issue,
    SpecError,
    SubgraphNode,
    format_path,
    load_yaml,
)
from hetagent.spec import parse_document as parse_spec

MAX_BODY_BYTES = 1 * 2**20  # an agent document is a few KiB; a MiB leaves room for big prompts
POLL_SECONDS = 0.2  # how often an event stream looks for new events in the store
KEEPALIVE_SECONDS = 15.0  # an SSE comment line so proxies keep an idle stream open
UTILIZATION_WINDOW_S = 60.0  # the cluster view's utilization: device busy time over this window
PLAN_CACHE = 256  # compiled plans kept (agent versions x clusters)
TENANT_CACHE = 100_000  # run id -> tenant entries kept for the tenant event stream
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ApiError(Exception):
    """A request the API refuses: HTTP status, a one-line message, and per-path problems."""

    def __init__(self, status: int, message: str, errors: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or []


# -- tenants -------------------------------------------------------------------------------


class Tenants:
    """Bearer tokens and the tenants they name. Tokens are compared in constant time and kept
    only as SHA-256 digests, so a dumped process holds no usable token."""

    def __init__(self, tokens: dict[str, str]):
        for token, tenant in tokens.items():
            if not token or not isinstance(token, str) or not isinstance(tenant, str):
                raise ValueError("each token must be a non-empty string naming a tenant")
        self._digests = {_digest(token): tenant for token, tenant in tokens.items()}

    def __len__(self) -> int:
        return len(self._digests)

    def tenant(self, token: str) -> str | None:
        digest = _digest(token)
        found = None
        for known, tenant in self._digests.items():  # every entry compared: no timing signal
            if hmac.compare_digest(known, digest):
                found = tenant
        return found

    @classmethod
    def from_file(cls, path: Path) -> Tenants:
        """A YAML or JSON file: `tokens: {TOKEN: TENANT, ...}`."""
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as error:
            raise ValueError(f"cannot read the tokens file {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"the tokens file {path} is not YAML: {error}") from None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, dict) or not tokens:
            raise ValueError(f"{path}: expected `tokens: {{TOKEN: TENANT, ...}}`")
        return cls({str(token): str(tenant) for token, tenant in tokens.items()})

    @classmethod
    def from_env(cls, value: str) -> Tenants:
        """`$HETAGENT_TOKENS`: `TENANT=TOKEN,TENANT=TOKEN`."""
        tokens = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            tenant, equals, token = item.partition("=")
            if not equals or not tenant or not token:
                raise ValueError(f"HETAGENT_TOKENS item {item.split('=')[0]!r}: give TENANT=TOKEN")
            tokens[token] = tenant
        if not tokens:
            raise ValueError("HETAGENT_TOKENS is empty: give TENANT=TOKEN,...")
        return cls(tokens)


def load_tenants(path: Path | None = None) -> Tenants | None:
    """The tenants of a tokens file, else of `$HETAGENT_TOKENS`, else None (none configured)."""
    if path is not None:
        return Tenants.from_file(path)
    if value := os.environ.get("HETAGENT_TOKENS"):
        return Tenants.from_env(value)
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


# -- the service ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    report: Any  # planner.plan.AgentPlan
    plan: Any  # compiler.emit.ExecutablePlan


class Service:
    """The API's work for one tenant at a time, independent of HTTP.

    `clusters` are the clusters plans can be shown for; the first is where runs execute (the
    runtime's backend serves its pools). Relative paths in an agent (its indexes' documents)
    resolve under `base_dir`, and may not leave it: a tenant cannot read the server's files.
    """

    def __init__(self, runtime: Runtime, store: RunStore, clusters: list[Cluster], base_dir: Path):
        if not clusters:
            raise ValueError("the service needs at least one cluster to run agents on")
        self.runtime, self.store = runtime, store
        self.clusters = {c.metadata.name: c for c in clusters}
        self.cluster = clusters[0]
        self.base_dir = base_dir.resolve()
        self._plans: dict[tuple[str, str], _Planned] = {}
        self._plan_lock = threading.Lock()  # the compiler and the MILP run one at a time
        self._tenant_of: dict[str, str] = {}  # run id -> tenant, for the tenant event stream

    # agents --------------------------------------------------------------------------------

    def put_agent(self, tenant: str, data: Any) -> dict[str, Any]:
        """Validate and store an agent (replacing one of the same name); planned at once on the
        service's cluster, so an agent that cannot run is refused here, not at its first run."""
        try:
            graph = parse_spec(data, known=known_ids())
        except SpecError as error:
            raise _invalid(error.issues) from None
        except RecursionError:
            raise ApiError(422, "the document is nested too deeply") from None
        if not isinstance(graph, AgentGraph):
            raise ApiError(422, f"kind: expected AgentGraph, got {graph.kind}")
        self._check_local_paths(graph)
        document = graph.to_dict()
        self._planned(graph, document, self.cluster)
        self.store.put_agent(tenant, graph.metadata.name, document)
        return {"name": graph.metadata.name, "nodes": [n.name for n in graph.spec.nodes]}

    def agents(self, tenant: str) -> list[str]:
        return self.store.list_agents(tenant)

    def agent(self, tenant: str, name: str) -> dict[str, Any]:
        document = self.store.get_agent(tenant, name)
        if document is None:
            raise ApiError(404, f"no agent {name!r}; POST it to /v1/agents first")
        return document

    def _check_local_paths(self, graph: AgentGraph) -> None:
        issues = []
        for i, node in enumerate(graph.spec.nodes):
            if isinstance(node, SubgraphNode):
                issues.append(
                    Issue(
                        ("spec", "nodes", i, "ref"),
                        "subgraph files cannot be sent to the server; inline the subgraph's nodes",
                    )
                )
        for name, index in (graph.spec.indexes or {}).items():
            where = (self.base_dir / index.documents).resolve()
            if not where.is_relative_to(self.base_dir):
                issues.append(
                    Issue(
                        ("spec", "indexes", name, "documents"),
                        f"must be a folder inside the server's base directory {self.base_dir}",
                    )
                )
        if issues:
            raise _invalid(issues)

    # plans ---------------------------------------------------------------------------------

    def _graph(self, tenant: str, name: str) -> tuple[AgentGraph, dict[str, Any]]:
        document = self.agent(tenant, name)
        graph = parse_spec(document, known=known_ids())
        assert isinstance(graph, AgentGraph)  # stored documents were validated on the way in
        return graph, document

    def _planned(self, graph: AgentGraph, document: dict[str, Any], cluster: Cluster) -> _Planned:
        """The agent's placement and executable plan on `cluster`, cached by document text."""
        from hetagent.compiler import CompileError, compile_plan
        from hetagent.planner.costmodel import CostModelError
        from hetagent.planner.plan import PlanError, plan_agent

        text = json.dumps(document, sort_keys=True)
        key = (hashlib.sha256(text.encode()).hexdigest(), cluster.metadata.name)
        with self._plan_lock:
            if key not in self._plans:
                try:
                    report = plan_agent(graph, cluster)
                    plan = compile_plan(graph, report.placement)
                except (PlanError, CostModelError, CompileError) as error:
                    raise ApiError(
                        422,
                        f"cannot plan {graph.metadata.name} on {cluster.metadata.name}: {error}",
                    ) from None
                self._plans[key] = _Planned(report, plan)
                while len(self._plans) > PLAN_CACHE:  # the oldest versions go first
                    del self._plans[next(iter(self._plans))]
            return self._plans[key]

    async def plan(self, tenant: str, agent: str, cluster: str | None) -> dict[str, Any]:
        from hetagent.planner.report import plan_json

        where = self._cluster(cluster)
        graph, document = self._graph(tenant, agent)
        planned = await asyncio.to_thread(self._planned, graph, document, where)
        return plan_json(planned.report) | {
            "graph": operator_graph(planned.plan),
            "cluster_pools": _pools(where),
        }

    def _cluster(self, name: str | None) -> Cluster:
        if name is None:
            return self.cluster
        if name not in self.clusters:
            known = ", ".join(self.clusters)
            raise ApiError(404, f"no cluster {name!r}; this server knows {known}")
        return self.clusters[name]

    def cluster_names(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "runs_here": cluster is self.cluster, "pools": _pools(cluster)}
            for name, cluster in self.clusters.items()
        ]

    # runs ----------------------------------------------------------------------------------

    async def submit(
        self, tenant: str, agent: str, inputs: dict[str, Any], *, run_id: str | None = None
    ) -> str:
        graph, document = self._graph(tenant, agent)
        planned = await asyncio.to_thread(self._planned, graph, document, self.cluster)
        options = RunOptions(base_dir=self.base_dir, tenant=tenant)
        try:
            run_id = await self.runtime.submit(planned.plan, inputs, options, run_id=run_id)
        except InputError as error:
            raise ApiError(422, str(error), [{"path": "inputs", "message": str(error)}]) from None
        self._tenant_of[run_id] = tenant
        return run_id

    def _run(self, tenant: str, run_id: str) -> Run:
        run = self.store.get_run(run_id)
        if run is None or run.tenant != tenant:  # another tenant's run does not exist for you
            raise ApiError(404, f"no run {run_id!r}")
        return run

    def run(self, tenant: str, run_id: str) -> dict[str, Any]:
        run = self._run(tenant, run_id)
        return run_json(run, self.store.steps(run_id), self._prices())

    def run_graph(self, tenant: str, run_id: str) -> dict[str, Any]:
        from hetagent.compiler.emit import ExecutablePlan

        run = self._run(tenant, run_id)
        return operator_graph(ExecutablePlan.model_validate(run.plan))

    def runs(self, tenant: str, status: str | None, limit: int) -> list[dict[str, Any]]:
        return [run_json(run) for run in self.store.list_runs(tenant, status, limit)]

    async def cancel(self, tenant: str, run_id: str) -> dict[str, Any]:
        run = self._run(tenant, run_id)
        if run.finished:
            raise ApiError(409, f"run {run_id} already finished ({run.status})")
        await self.runtime.cancel(run_id)
        return run_json(self._run(tenant, run_id))

    def events(self, tenant: str, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        self._run(tenant, run_id)
        return [_event_json(e) for e in self.store.events(run_id, after)]

    async def follow(self, tenant: str, run_id: str, after: int = 0) -> AsyncIterator[dict]:
        """The run's events from `after` on, live, until the run has finished."""
        self._run(tenant, run_id)
        while True:
            finished = self.store.get_run(run_id).finished  # read before the events: none lost
            for event in self.store.events(run_id, after):
                after = event.id
                yield _event_json(event)
            if finished:
                return
            await asyncio.sleep(POLL_SECONDS)

    def last_event_id(self) -> int:
        with self.store.engine.connect() as db:
            return db.execute(select(func.max(events_table.c.id))).scalar() or 0

    async def follow_tenant(self, tenant: str, after: int | None) -> AsyncIterator[dict]:
        """Every event of the tenant's runs from `after` on (from now when None), live."""
        cursor = self.last_event_id() if after is None else after
        while True:
            for event in self.store.iter_all_events(cursor):
                cursor = event.id
                if self._tenant(event.run_id) == tenant:
                    yield _event_json(event)
            await asyncio.sleep(POLL_SECONDS)

    def _tenant(self, run_id: str) -> str | None:
        if run_id not in self._tenant_of:
            run = self.store.get_run(run_id)
            self._tenant_of[run_id] = run.tenant if run else ""
            while len(self._tenant_of) > TENANT_CACHE:
                del self._tenant_of[next(iter(self._tenant_of))]
        return self._tenant_of[run_id]

    # operations ----------------------------------------------------------------------------

    def _prices(self) -> dict[str, float]:
        """$ per hour of each pool of the cluster runs execute on (all its devices)."""
        from hetagent.planner.catalog import load_catalog
        from hetagent.planner.tco import PricingError, device_hour_cost

        devices = load_catalog().devices
        prices = {}
        for pool in self.cluster.spec.pools:
            try:
                hourly = device_hour_cost(pool, devices[pool.device], self.cluster.spec).total
            except (PricingError, KeyError):
                continue
            prices[pool.name] = hourly * pool.count
        return prices

    def cluster_view(self) -> dict[str, Any]:
        """Pools with their busy share over the last minute, running steps, queue depth, and the
        engines' own numbers (KV cache usage, waiting requests) where the backend reports them.
        Counts only: another tenant's run is never named here."""
        now = time.time()
        since = now - UTILIZATION_WINDOW_S
        busy: dict[str, float] = {}
        running: dict[str, int] = {}
        states = {state: 0 for state in RUN_STATES}
        recent = self.store.list_runs(limit=500)
        for run in recent:
            states[run.status] = states.get(run.status, 0) + 1
            if run.updated_at < since and run.finished:
                continue
            for step in self.store.steps(run.id):
                pool = step.pool or ""
                end = step.finished_at or now
                if end > since:
                    busy[pool] = busy.get(pool, 0.0) + end - max(step.started_at, since)
                if step.status == "running" and not run.finished:
                    running[pool] = running.get(pool, 0) + 1
        engines = backend_stats(self.runtime.backend)
        prices = self._prices()
        pools = []
        for pool in _pools(self.cluster):
            name = pool["name"]
            window = UTILIZATION_WINDOW_S * max(pool["count"], 1)
            pools.append(
                pool
                | {
                    "usd_per_hour": prices.get(name),
                    "utilization": min(busy.get(name, 0.0) / window, 1.0),
                    "running_steps": running.get(name, 0),
                    "engines": [e for e in engines if e["pool"] == name],
                }
            )
        return {
            "cluster": self.cluster.metadata.name,
            "pools": pools,
            "queue_depth": states["pending"] + states["running"],
            "runs": states,
            "window_seconds": UTILIZATION_WINDOW_S,
        }

    def stats(self, tenant: str, limit: int = 500) -> dict[str, Any]:
        """The tenant's finished runs over time: latency against the agent's SLO, and cost
        (device time of each step at its pool's price), with per-minute attainment."""
        prices = self._prices()
        points = []
        for run in self.store.list_runs(tenant, limit=limit):
            if not run.finished:
                continue
            summary = run_json(run, self.store.steps(run.id), prices)
            points.append(
                {
                    key: summary[key]
                    for key in ("id", "agent", "status", "duration_s", "slo_seconds", "slo_met")
                }
                | {"time": run.updated_at, "cost_usd": summary["cost_usd"]}
            )
        points.sort(key=lambda p: p["time"])
        buckets: dict[int, dict[str, Any]] = {}
        for p in points:
            minute = int(p["time"] // 60 * 60)
            b = buckets.setdefault(minute, {"time": minute, "runs": 0, "met": 0, "cost_usd": 0.0})
            b["runs"] += 1
            b["met"] += bool(p["slo_met"])
            b["cost_usd"] += p["cost_usd"] or 0.0
        for b in buckets.values():
            b["attainment"] = b["met"] / b["runs"]
        total = len(points)
        return {
            "runs": points,
            "per_minute": list(buckets.values()),
            "attainment": sum(bool(p["slo_met"]) for p in points) / total if total else None,
            "cost_usd": sum(p["cost_usd"] or 0.0 for p in points),
        }


def _invalid(issues: list[Issue]) -> ApiError:
    errors = [{"path": issue.path, "message": issue.message} for issue in issues]
    first = errors[0]
    line = f"{first['path']}: {first['message']}" if first["path"] else first["message"]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(422, line + more, errors)


def _pools(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "device": p.device, "count": p.count, "ownership": p.ownership}
        for p in cluster.spec.pools
    ]


def backend_stats(backend: Any) -> list[dict[str, Any]]:
    """Per-engine numbers (queue, KV cache) of a backend that reports them (`stats()`)."""
    stats = getattr(backend, "stats", None)
    return stats() if stats is not None else []


def run_json(
    run: Run, steps: list[Step] | None = None, prices: dict[str, float] | None = None
) -> dict[str, Any]:
    """A run as the API shows it; with its steps, also tokens and the cost of its device time."""
    agent = (run.plan.get("documents") or {}).get("", {})
    slo = ((agent.get("spec") or {}).get("slo") or {}).get("p95LatencySeconds")
    duration = run.updated_at - run.created_at if run.finished else None
    out: dict[str, Any] = {
        "id": run.id,
        "agent": run.agent,
        "status": run.status,
        "inputs": run.inputs,
        "outputs": run.outputs,
        "error": run.error,
        "trace_id": run.trace_id,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "duration_s": duration,
        "slo_seconds": slo,
        "slo_met": None
        if duration is None or slo is None
        else run.status == "succeeded" and duration <= slo,
    }
    if steps is None:
        return out
    prices = prices or {}
    cost = 0.0
    tokens = {"input": 0, "output": 0, "cached": 0}
    shown = []
    for step in steps:
        details = step.details or {}
        if step.finished_at is not None and step.pool in prices:
            cost += (step.finished_at - step.started_at) * prices[step.pool] / 3600
        for kind in tokens:
            tokens[kind] += int(details.get(f"{'prompt' if kind == 'input' else kind}_tokens", 0))
        shown.append(
            {
                "key": step.key,
                "node": step.node,
                "kind": step.kind,
                "pool": step.pool,
                "status": step.status,
                "attempt": step.attempt,
                "error": step.error,
                "started_at": step.started_at,
                "finished_at": step.finished_at,
                "details": details,
            }
        )
    return out | {"steps": shown, "tokens": tokens, "cost_usd": cost}


def _event_json(event: Any) -> dict[str, Any]:
    return {
        "id": event.id,
        "run_id": event.run_id,
        "time": event.time,
        "type": event.type,
        "data": event.data,
    }


def operator_graph(plan: Any) -> dict[str, Any]:
    """The plan's operators (loops flattened) and the dataflow edges between them, for drawing:
    a value read inside a loop is traced through the loop's arguments to the op that made it."""
    from hetagent.compiler.emit import PlanLoop

    nodes: list[dict[str, Any]] = []
    producer: dict[str, str] = {}  # value -> op id
    alias: dict[str, list[str]] = {}  # loop argument -> the values it takes
    reads: list[tuple[str, str]] = []  # (value, reader op)

    def walk(steps: list[Any]) -> None:
        for step in steps:
            if isinstance(step, PlanLoop):
                for args, sources in (
                    (step.turn_args, step.init),
                    (step.turn_args, step.yielded),
                    (step.act_args, step.forwarded),
                ):
                    for arg, source in zip(args, sources, strict=False):
                        alias.setdefault(arg, []).append(source)
                for out, source in zip(step.outputs, step.forwarded, strict=False):
                    alias.setdefault(out, []).append(source)
                walk(step.turn)
                walk(step.act)
                continue
            if step.id is None:  # constants and counters: no operator worth drawing
                for value in step.outputs:
                    alias.setdefault(value, [])
                continue
            nodes.append({"id": step.id, "kind": step.kind, "node": step.node, "pool": step.pool})
            for value in step.outputs:
                producer[value] = step.id
            reads.extend((value, step.id) for value in step.inputs)

    walk(plan.steps)

    def sources(value: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if value in producer:
            return {producer[value]}
        if value in seen:
            return set()
        found: set[str] = set()
        for source in alias.get(value, []):
            found |= sources(source, seen | {value})
        return found

    edges = sorted({(s, reader) for value, reader in reads for s in sources(value) if s != reader})
    return {"nodes": nodes, "edges": [list(e) for e in edges]}


# -- HTTP ----------------------------------------------------------------------------------


class RunRequest(BaseModel):
    """A run of a stored agent with these inputs (missing ones take their defaults)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"agent": "echo", "inputs": {}}]}
    )
    agent: str = Field(pattern=NAME_PATTERN, description="The agent's metadata.name.")
    inputs: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    detail: str
    errors: list[dict[str, str]] = Field(default_factory=list)


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is not well-formed JSON."},
    401: {"model": ErrorBody, "description": "No or unknown bearer token."},
    404: {"model": ErrorBody, "description": "No such agent or run for this tenant."},
    413: {"model": ErrorBody, "description": "The body is over the size limit."},
    422: {"model": ErrorBody, "description": "Invalid input; `errors` lists each path."},
}
# The document envelope; the rest (the node union, catalog ids, references, whether the agent
# can be planned) is checked by hetagent.spec and the planner, and answered with 422 and paths.
AGENT_ENVELOPE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "hetagent.dev/v1alpha1"},
        "kind": {"const": "AgentGraph"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["nodes"]},
    },
}
_bearer = HTTPBearer(auto_error=False, description="A token the server maps to a tenant.")


class _BodyLimit:
    """ASGI middleware refusing bodies over `limit` bytes with 413, whether or not the client
    declared a Content-Length (a chunked body is counted as it arrives)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _refuse(send, self.limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            return await self.app(scope, counted, send)
        except _TooLarge:
            return await _refuse(send, self.limit)


class _TooLarge(Exception):
    pass


async def _refuse(send, limit: int) -> None:
    body = json.dumps({"detail": f"the body is over {limit} bytes; send less", "errors": []})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def create_app(
    runtime: Runtime,
    store: RunStore,
    tenants: Tenants,
    *,
    clusters: list[Cluster],
    base_dir: Path = Path("."),
    max_body_bytes: int = MAX_BODY_BYTES,
    resume: bool = True,
    on_ready: Callable[[list[str]], None] | None = None,
) -> FastAPI:
    """The API and the dashboard over `runtime`. The app owns the runtime's life: on startup it
    resumes the unfinished runs in the store (`resume`), on shutdown it closes the runtime."""
    from contextlib import asynccontextmanager

    service = Service(runtime, store, clusters, base_dir)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        resumed = await runtime.resume() if resume else []
        if on_ready is not None:
            on_ready(resumed)
        yield
        await runtime.close()

    app = FastAPI(
        title="hetagent",
        version=_version(),
        description="Submit agents and runs, follow them live, see plans and the cluster.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(_BodyLimit, limit=max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(
            {"detail": error.message, "errors": error.errors}, error.status, headers=headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        headers = dict(error.headers or {})
        if error.status_code == 405:  # every method the path takes, not just one route's
            allowed = {
                method
                for route in app.router.routes
                if isinstance(route, APIRoute) and route.matches(request.scope)[0] != Match.NONE
                for method in route.methods
            }
            headers["Allow"] = ", ".join(sorted(allowed))
        return JSONResponse({"detail": str(error.detail), "errors": []}, error.status_code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError):
        errors = [{"path": format_path(e["loc"]), "message": e["msg"]} for e in error.errors()]
        first = errors[0] if errors else {"path": "", "message": "invalid request"}
        return JSONResponse(
            {"detail": f"{first['path']}: {first['message']}", "errors": errors}, 422
        )

    def tenant_of(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> str:
        if credentials is None:
            raise ApiError(401, "missing bearer token: send Authorization: Bearer TOKEN")
        tenant = tenants.tenant(credentials.credentials)
        if tenant is None:
            raise ApiError(401, "unknown bearer token")
        return tenant

    Tenant = Depends(tenant_of)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses=ERRORS | {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def metrics(tenant: str = Tenant) -> PlainTextResponse:
        """The runtime's Prometheus metrics (any tenant's token)."""
        return PlainTextResponse(
            runtime.telemetry.metrics_text(), media_type="text/plain; version=0.0.4"
        )

    @app.post(
        "/v1/agents",
        tags=["agents"],
        status_code=201,
        responses=ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "An AgentGraph document (`hetagent schema AgentGraph`).",
                "content": {
                    "application/json": {"schema": AGENT_ENVELOPE},
                    "application/yaml": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def put_agent(request: Request, tenant: str = Tenant) -> dict[str, Any]:
        """Store an agent (YAML or JSON) under its metadata.name, replacing an older one."""
        data = _document(await request.body(), request.headers.get("content-type", ""))
        return await asyncio.to_thread(service.put_agent, tenant, data)

    @app.get("/v1/agents", tags=["agents"], responses=ERRORS)
    def list_agents(tenant: str = Tenant) -> dict[str, list[str]]:
        return {"agents": service.agents(tenant)}

    @app.get("/v1/agents/{name}", tags=["agents"], responses=ERRORS)
    def get_agent(name: str, tenant: str = Tenant) -> dict[str, Any]:
        return service.agent(tenant, name)

    run_links = {
        name: {"operationId": operation, "parameters": {"run_id": "$response.body#/id"}}
        for name, operation in (
            ("GetRun", "get_run"),
            ("RunEvents", "run_events"),
            ("RunGraph", "run_graph"),
            ("CancelRun", "cancel_run"),
        )
    }

    @app.post(
        "/v1/runs",
        tags=["runs"],
        status_code=202,
        operation_id="submit_run",
        responses=ERRORS | {202: {"description": "The run, started.", "links": run_links}},
    )
    async def submit(request: RunRequest = Body(), tenant: str = Tenant) -> dict[str, Any]:
        """Start a run; it goes on in the background. Follow it at /v1/runs/{id}/events."""
        run_id = await service.submit(tenant, request.agent, request.inputs)
        return service.run(tenant, run_id)

    @app.get("/v1/runs", tags=["runs"], responses=ERRORS)
    def list_runs(
        status: str | None = Query(None, pattern="^(" + "|".join(RUN_STATES) + ")$"),
        limit: int = Query(50, ge=1, le=500),
        tenant: str = Tenant,
    ) -> dict[str, Any]:
        """The tenant's runs, newest first; `cursor` is where /v1/events would go on from."""
        return {"runs": service.runs(tenant, status, limit), "cursor": service.last_event_id()}

    @app.get("/v1/runs/{run_id}", tags=["runs"], responses=ERRORS, operation_id="get_run")
    def get_run(run_id: str, tenant: str = Tenant) -> dict[str, Any]:
        """A run with its steps (pool, times, tokens, tool resource use) and cost."""
        return service.run(tenant, run_id)

    @app.get("/v1/runs/{run_id}/graph", tags=["runs"], responses=ERRORS, operation_id="run_graph")
    def run_graph(run_id: str, tenant: str = Tenant) -> dict[str, Any]:
        """The operator graph of the run's plan (operators by pool, dataflow edges)."""
        return service.run_graph(tenant, run_id)

    @app.delete(
        "/v1/runs/{run_id}",
        tags=["runs"],
        operation_id="cancel_run",
        responses=ERRORS | {409: ERRORS[404] | {"description": "The run already finished."}},
    )
    async def cancel(run_id: str, tenant: str = Tenant) -> dict[str, Any]:
        """Cancel an unfinished run (409 when it has already finished)."""
        return await service.cancel(tenant, run_id)

    @app.get(
        "/v1/runs/{run_id}/events",
        tags=["runs"],
        operation_id="run_events",
        responses=ERRORS | {200: {"content": {"text/event-stream": {}}}},
        response_class=StreamingResponse,
    )
    def run_events(
        request: Request,
        run_id: str,
        after: int = Query(0, ge=0, le=2**62),
        tenant: str = Tenant,
    ) -> StreamingResponse:
        """Server-sent events of the run (`id`, `event`: run.* / step.*, `data`: JSON), live
        until it finishes; a reconnecting client's Last-Event-ID resumes the stream."""
        after = _last_event_id(request, after)
        service._run(tenant, run_id)  # 404 before the stream starts
        return _sse(service.follow(tenant, run_id, after))

    @app.get(
        "/v1/events",
        tags=["runs"],
        responses=ERRORS | {200: {"content": {"text/event-stream": {}}}},
        response_class=StreamingResponse,
    )
    def tenant_events(
        request: Request,
        after: int | None = Query(None, ge=0, le=2**62),
        tenant: str = Tenant,
    ) -> StreamingResponse:
        """Server-sent events of all the tenant's runs, from `after` (default: from now)."""
        header = request.headers.get("last-event-id")
        if header is not None:
            after = _last_event_id(request, after or 0)
        return _sse(service.follow_tenant(tenant, after))

    @app.get("/v1/plans/{agent}", tags=["plans"], responses=ERRORS)
    async def plan(
        agent: str, cluster: str | None = Query(None, max_length=256), tenant: str = Tenant
    ) -> dict[str, Any]:
        """The agent's placement on a cluster: operators by pool, critical path, cost,
        baselines, and the operator graph."""
        return await service.plan(tenant, agent, cluster)

    @app.get("/v1/clusters", tags=["ops"], responses=ERRORS)
    def clusters_list(tenant: str = Tenant) -> dict[str, Any]:
        return {"clusters": service.cluster_names()}

    @app.get("/v1/cluster", tags=["ops"], responses=ERRORS)
    def cluster_view(tenant: str = Tenant) -> dict[str, Any]:
        """The cluster runs execute on: utilization, running steps, queue depth, engines."""
        return service.cluster_view()

    @app.get("/v1/stats", tags=["ops"], responses=ERRORS)
    def stats(tenant: str = Tenant) -> dict[str, Any]:
        """SLA attainment and cost of the tenant's finished runs over time."""
        return service.stats(tenant)

    app.mount("/dashboard", StaticFiles(directory=str(_dashboard_dir()), html=True))

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    return app


def _document(body: bytes, content_type: str) -> Any:
    """The decoded body: JSON for application/json, YAML for the YAML types."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, "the body is not UTF-8 text") from None
    if kind == "application/json":
        try:
            return json.loads(text, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as error:
            raise ApiError(422, f"the body is not JSON: {error}") from None
        except RecursionError:
            raise ApiError(422, "the JSON body is nested too deeply") from None
    if kind in YAML_TYPES or not kind:
        try:
            return load_yaml(text)
        except SpecError as error:
            raise _invalid(error.issues) from None
    raise ApiError(415, f"send the agent as application/json or application/yaml, not {kind}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a document can hold")


def _last_event_id(request: Request, after: int) -> int:
    header = request.headers.get("last-event-id")
    if header is None:
        return after
    if not header.isdigit() or len(header) > 18:
        raise ApiError(422, "Last-Event-ID must be an event id (a non-negative integer)")
    return int(header)


def _sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        iterator = aiter(events)
        pending: asyncio.Task | None = None
        try:
            while True:
                pending = pending or asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_SECONDS)
                if not done:  # nothing new for a while: a comment keeps the stream open
                    yield ": keepalive\n\n"
                    continue
                task, pending = pending, None
                try:
                    event = task.result()
                except StopAsyncIteration:
                    return
                data = json.dumps(event, default=_number)
                yield f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n"
        finally:  # the client went away: stop following
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await events.aclose()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def _number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def _dashboard_dir() -> Path:
    return Path(str(files("hetagent.orchestrator") / "dashboard"))


def _version() -> str:
    from hetagent import __version__

    return __version__


__all__ = [
    "ApiError",
    "RunRequest",
    "Service",
    "Tenants",
    "backend_stats",
    "create_app",
    "load_tenants",
    "operator_graph",
    "run_json",
]
