"""The Ray backend: a plan's pools on a Ray cluster, the agent loops in the driver.

The runtime (the driver's asyncio) walks each run and makes one actor call per LLM, tool or
retrieval step, never a Ray task per template step: a Ray call costs a millisecond, a template
microseconds. Pools are custom resources (capacity, one unit per replica) and node labels
(identity), named in `placement.py`. Engines are named async actors, one per (pool replica,
model, policies), found with `get_if_exists` so every driver of a cluster shares them; a program
stays on one replica (its KV lease lives there). A call whose prefill and decode pools differ
prefills on one engine actor, which puts the KV into the object store, and decodes on the other,
which fetches it from there: the bytes never pass through the driver. Tool calls run in a tool
executor actor per pool, retrieval in a retrieval actor per pool, each wrapping the local
backend's code (`actors.py`).

A run's state is its checkpoints in the run store (`orchestrator/store.py`): any driver with the
same store and cluster resumes it (`Runtime.resume()`), taking finished steps from the store.

Ownership: with `address=None` the backend starts a local Ray (this machine's CPUs, the pools as
resources and labels) on first use and shuts it down on close; its actors live as long as it.
Connected to a cluster (`"auto"`, `"ray://HOST:PORT"`), engines and retrieval actors are
detached, so a loaded model outlives the driver that loaded it and the next driver reuses it;
tool executors belong to their driver, so a driver that dies takes its in-flight tool calls with
it (as the local backend does) and a resumed run repeats only the step that never finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import threading
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError

from hetagent.backends.base import (
    ChatCall,
    ChatResult,
    ModelSpec,
    RetrieveCall,
    RetrievedDocument,
    ToolCall,
    ToolResult,
)
from hetagent.backends.local.backend import DEFAULT_KV_MEMORY_MB, _weights_name
from hetagent.backends.ray.actors import EngineActor, RetrievalExecutor, ToolExecutor
from hetagent.backends.ray.placement import (
    LABEL_VALUE,
    RESOURCE_PREFIX,
    pool_label,
    pool_resource,
)

NAMESPACE = "hetagent"
ACTOR_SHARE = 0.01  # of a pool replica's resource an actor takes: engines of several models,
# and the pool's executors, share a replica (the embedded engine runs on the host's CPUs)
FORWARDED_ENV = (  # where models, indexes and workspaces live: the actors use the driver's
    "HETAGENT_MODELS",
    "HETAGENT_INDEXES",
    "HETAGENT_WORKSPACES",
)


class ExecutorLost(ConnectionError):
    """An actor died (or its node did) while serving a call; the runtime makes it a step
    error, and the next call goes to the actor Ray restarts."""


class RayBackend:
    """Pools on Ray. `policies`, `kv_memory_mb` and `memory_budget_mb` mean what they mean for
    `LocalBackend`. `address`: None starts a local Ray; `"auto"` or `"ray://HOST:PORT"` connects
    to a running cluster, whose nodes must offer the pools' resources. `pools` (name -> replicas)
    sizes the local Ray's pools (default one replica each) and names pools a later plan may
    use: a running Ray cannot gain resources, so a local Ray knows only the pools it started
    with."""

    name = "ray"

    def __init__(
        self,
        policies: dict[str, str] | None = None,
        *,
        kv_memory_mb: float = DEFAULT_KV_MEMORY_MB,
        address: str | None = None,
        memory_budget_mb: float | None = None,
        pools: dict[str, int] | None = None,
    ):
        self.policies = dict(policies or {})
        self.kv_memory_mb = kv_memory_mb
        self.memory_budget_mb = memory_budget_mb
        self.address = address
        self.replicas: dict[str, int] = dict(pools or {})
        self.owns_ray = False  # this backend started the Ray it uses (and shuts it down)
        self.engines: dict[tuple, Any] = {}  # (pool, replica, weights, kv, sched) -> handle
        self.programs: dict[str, tuple] = {}  # program -> the engine key holding its lease
        self.tool_actors: dict[str | None, Any] = {}
        self.retrieval_actors: dict[str | None, Any] = {}
        self._connect_lock = threading.Lock()
        self._resources: dict[str, float] = {}
        self._labelled: set[str] = set()  # pool labels some node carries
        self._stats: list[dict[str, Any]] = []
        self._stats_task: asyncio.Task | None = None
        self._schemas: Any = None

    # -- Ray ---------------------------------------------------------------------------------

    async def start(self, pools: list[str]) -> None:
        """Note the pools; Ray starts (or is connected to) on the first call that needs it."""
        for pool in pools:
            self.replicas.setdefault(pool, 1)

    def connect(self) -> None:
        """Start the local Ray, or connect to the cluster, unless this process already has one
        (then it is used as it is, and left running on close)."""
        with self._connect_lock:
            if ray.is_initialized():
                self._read_cluster()
                return
            options: dict[str, Any] = {
                "namespace": NAMESPACE,
                "logging_level": "ERROR",
                "log_to_driver": False,
            }
            if self.address is None:
                options |= {
                    "num_cpus": os.cpu_count() or 1,
                    "resources": {pool_resource(p): float(n) for p, n in self.replicas.items()},
                    "labels": {
                        label: LABEL_VALUE
                        for label in map(pool_label, self.replicas)
                        if label is not None
                    },
                    "include_dashboard": False,
                }
            if self.address not in (None, "auto"):
                _check_reachable(self.address)
                _use_token_if_present()
            try:  # "local": a new Ray, never one somebody's `ray start` left on this machine
                ray.init(address=self.address or "local", **options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = self.address or "a local Ray"
                raise ConnectionError(f"cannot start or reach {where}: {_line(error)}") from None
            self.owns_ray = True
            self._read_cluster()

    def _read_cluster(self) -> None:
        self._resources = dict(ray.cluster_resources())
        self._labelled = {
            key
            for node in ray.nodes()
            if node.get("Alive")
            for key, value in (node.get("Labels") or {}).items()
            if value == LABEL_VALUE
        }

    async def _ready(self) -> None:
        if not ray.is_initialized() or not self._resources:
            await asyncio.to_thread(self.connect)

    def _placement(self, pool: str | None) -> dict[str, Any]:
        """Actor options that put an actor on `pool`'s nodes (any node when the plan names no
        pool); a pool the cluster does not offer is a clear error, not an actor that waits
        forever to be scheduled."""
        if pool is None:
            return {}
        resource = pool_resource(pool)
        if resource not in self._resources:
            self._read_cluster()  # nodes may have joined
        if resource not in self._resources:
            offered = sorted(
                r.removeprefix(RESOURCE_PREFIX)
                for r in self._resources
                if r.startswith(RESOURCE_PREFIX)
            )
            raise ValueError(
                f"pool {pool!r}: the Ray cluster has no resource {resource!r} (it offers pools: "
                f"{', '.join(offered) or 'none'}); start the pool's nodes with --resources "
                f"'{{\"{resource}\": 1}}'"
                + (" or pass pools= to RayBackend" if self.address is None else "")
            )
        options: dict[str, Any] = {"resources": {resource: ACTOR_SHARE}}
        label = pool_label(pool)
        if label in self._labelled:
            options["label_selector"] = {label: LABEL_VALUE}
        return options

    async def _actor(
        self, cls: type, name: str, pool: str | None, args: tuple, shared: bool
    ) -> Any:
        """The named actor, made if no driver made it yet. `shared` actors (engines, retrieval)
        outlive their driver on a cluster; a restarted actor never replays a call (tools act
        on the world), so a call in flight when it died fails."""
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        options: dict[str, Any] = {
            "name": name,
            "namespace": NAMESPACE,
            "get_if_exists": True,
            "num_cpus": 0,
            "max_restarts": -1,
            "max_task_retries": 0,
            "max_concurrency": 1000,
            "runtime_env": {"env_vars": env} if env else None,
        } | self._placement(pool)
        if shared and self.address is not None:  # a cluster's: outlives this driver
            options["lifetime"] = "detached"
        actor = ray.remote(cls).options(**options).remote(*args)
        await _until_ready(actor, name)
        return actor

    async def close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
        if not ray.is_initialized():
            return
        if self.owns_ray:
            ray.shutdown()  # every actor this backend made goes with it
            self.owns_ray = False
        else:  # engines and retrieval stay for the cluster's other drivers; tools were ours
            for actor in self.tool_actors.values():
                ray.kill(actor, no_restart=True)
        self.engines.clear()
        self.tool_actors.clear()
        self.retrieval_actors.clear()
        self._resources = {}

    # -- LLM calls ---------------------------------------------------------------------------

    async def _engine(self, pool: str | None, call: ChatCall) -> tuple[tuple, Any]:
        """The engine actor for this call's model and policies on `pool`: the program's replica
        (a stable hash of the program), so its KV lease stays where it was."""
        await self._ready()
        chosen = self.policies | call.policies
        kv, scheduling = chosen.get("kvRetention") or "evict", chosen.get("scheduling") or "fcfs"
        replicas = self._replica_count(pool)
        replica = zlib.crc32(call.hints.program.encode()) % replicas
        weights = _weights_name(call.model)
        key = (pool, replica, weights, kv, scheduling)
        if key not in self.engines:
            digest = hashlib.sha1(f"{weights}|{self.kv_memory_mb}".encode()).hexdigest()[:10]
            name = f"engine/{pool or '-'}/{replica}/{call.model.id}-{digest}/{kv}/{scheduling}"
            policies = {"kvRetention": kv, "scheduling": scheduling}
            self.engines[key] = await self._actor(
                EngineActor, name, pool, (policies, self.kv_memory_mb), shared=True
            )
        return key, self.engines[key]

    def _replica_count(self, pool: str | None) -> int:
        if pool is None:
            return 1
        if self.address is None:  # a local Ray: the replicas it was started with
            return max(1, self.replicas.get(pool, 1))
        return max(1, int(self._resources.get(pool_resource(pool), 1)))

    async def chat(self, call: ChatCall) -> ChatResult:
        decode_key, decode = await self._engine(call.decode_pool, call)
        self.programs[call.hints.program] = decode_key  # where its lease lives
        forget = self._forget(self.engines, decode_key)
        what = f"engine {call.model.id} on pool {call.decode_pool}"
        if call.prefill_pool == call.decode_pool:
            return await _result(decode.chat.remote(call), what, forget)
        prefill_key, prefill = await self._engine(call.prefill_pool, call)
        first, kv = await _result(
            prefill.prefill.remote(call),
            f"engine {call.model.id} on pool {call.prefill_pool}",
            self._forget(self.engines, prefill_key),
        )
        if kv is None:  # done at its first token
            return first
        return await _result(decode.decode.remote(kv, call, first), what, forget)

    async def announce_tool(
        self, program: str, model: ModelSpec, pool: str | None, tool: str, seconds: float
    ) -> None:
        key = self.programs.get(program)
        if key in self.engines:
            what = f"engine {model.id} on pool {key[0]}"
            forget = self._forget(self.engines, key)
            await _result(
                self.engines[key].announce_tool.remote(program, model, tool, seconds), what, forget
            )

    async def release(self, program: str, model: ModelSpec, pool: str | None) -> None:
        key = self.programs.pop(program, None)
        if key in self.engines:
            what = f"engine {model.id} on pool {key[0]}"
            forget = self._forget(self.engines, key)
            await _result(self.engines[key].release.remote(program, model), what, forget)

    def stats(self) -> list[dict[str, Any]]:
        """Each engine's queue and KV cache (`LocalBackend.stats` rows, with the pool and the
        replica), as last read; reading them again goes on in the background, so a dashboard
        asking never waits on an engine."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and (self._stats_task is None or self._stats_task.done()):
            self._stats_task = loop.create_task(self._read_stats())
        return list(self._stats)

    async def _read_stats(self) -> None:
        rows = []
        for (pool, replica, *_), actor in list(self.engines.items()):
            try:
                engines = await actor.stats.remote()
            except RayError:  # an engine that died reports nothing; the view stays up
                continue
            rows += [row | {"pool": pool, "replica": replica} for row in engines]
        self._stats = rows

    # -- tools and retrieval -------------------------------------------------------------------

    async def tool_schemas(self, names: list[str]) -> dict[str, dict[str, Any]]:
        if self._schemas is None:
            from hetagent.tools.registry import ToolRegistry

            self._schemas = ToolRegistry()
        return {name: self._schemas.get(name).parameters for name in names}

    async def tool(self, call: ToolCall) -> ToolResult:
        await self._ready()
        if call.pool not in self.tool_actors:
            driver = ray.get_runtime_context().get_job_id()
            self.tool_actors[call.pool] = await self._actor(
                ToolExecutor,
                f"tools/{call.pool or '-'}/{driver}",
                call.pool,
                (self.policies, self.memory_budget_mb),
                shared=False,
            )
        actor = self.tool_actors[call.pool]
        call = _absolute(call)
        what = f"tool executor on pool {call.pool}"
        return await _result(
            actor.tool.remote(call), what, self._forget(self.tool_actors, call.pool)
        )

    async def retrieve(self, call: RetrieveCall) -> list[RetrievedDocument]:
        await self._ready()
        pool = call.search_pool
        if pool not in self.retrieval_actors:
            self.retrieval_actors[pool] = await self._actor(
                RetrievalExecutor, f"retrieval/{pool or '-'}", pool, (), shared=True
            )
        what = f"retrieval executor on pool {pool}"
        forget = self._forget(self.retrieval_actors, pool)
        return await _result(self.retrieval_actors[pool].retrieve.remote(call), what, forget)

    @staticmethod
    def _forget(actors: dict, key: Any) -> Callable[[], None]:
        """Drop the handle of an actor that died, so the next call looks its name up again:
        the actor Ray restarted, or (restarts used up, killed) a new one."""
        return lambda: actors.pop(key, None)


CONNECT_TIMEOUT_S = 5.0
READY_WAIT_S = 120.0  # how long a restarting actor may take to come back


async def _until_ready(actor: Any, name: str) -> None:
    """Wait for a (re)started actor to answer: a call sent while Ray restarts it would fail.
    Only this no-op is retried; a step's call never is (a tool acts on the world)."""
    waited, pause = 0.0, 0.05
    while True:
        try:
            await actor.ready.remote()
            return
        except ActorUnavailableError:  # restarting
            if waited > READY_WAIT_S:
                raise ExecutorLost(f"actor {name} did not come back after a restart") from None
            await asyncio.sleep(pause)
            waited, pause = waited + pause, min(pause * 2, 1.0)
        except RayActorError as error:
            raise ExecutorLost(f"actor {name} cannot start: {_reason(error)}") from None


async def _result(ref: Any, what: str, forget: Callable[[], None]) -> Any:
    """An actor call's value. The call's own error comes back as raised (the runtime knows what
    a ValueError or OSError of a tool means); a dead actor is an ExecutorLost naming it."""
    try:
        return await ref
    except asyncio.CancelledError:  # the run was cancelled or timed out: so is the call
        with contextlib.suppress(RayError):  # already finished: nothing left to stop
            ray.cancel(ref)  # an async actor's coroutine is cancelled: an engine aborts
        raise
    except RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, RayError):
            raise cause from None
        raise RuntimeError(f"{what}: {_line(error)}") from None
    except RayActorError as error:
        forget()  # the next call looks the name up again: the restarted actor, or a new one
        raise ExecutorLost(f"{what} died mid-call: {_reason(error)}") from None
    except RayError as error:  # an object lost with its node, a transfer that failed
        raise ExecutorLost(f"{what}: {_line(error)}") from None


def _reason(error: RayActorError) -> str:
    text = str(error)
    for marker in ("The actor died because", "The actor is dead because", "died because"):
        if marker in text:
            return _line(text[text.index(marker) :])
    return _line(error)


def _use_token_if_present() -> None:
    """Ray 2.60 clusters require a token by default (~/.ray/auth_token on their machine); Ray
    loads it for `address="auto"` but, for an explicit address, only when RAY_AUTH_MODE says
    so. Do what it does for "auto": use a token that is there unless the mode is set."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray: it knows its own way
        return
    logger = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = logger.level
    logger.setLevel(logging.ERROR)  # not its notice that the cluster uses tokens
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        logger.setLevel(level)


def _check_reachable(address: str) -> None:
    """Fail at once on an address nobody listens at: Ray itself retries for minutes."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"Ray address {address!r}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ConnectionError(
            f"cannot reach Ray at {address}: {error.strerror or error}; is the cluster up?"
        ) from None


def _line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _absolute(call: ToolCall) -> ToolCall:
    """The workspace as an absolute path: the executor's working directory is not ours."""
    return replace(call, workspace=Path(call.workspace).resolve())
