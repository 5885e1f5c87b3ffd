"""The hetagent operator: turns `AgentRun` custom resources into runs and reports them back.

An AgentRun names an AgentGraph in its namespace and gives inputs (and policy overrides). The
operator reads the graph, plans it on the namespace's cluster, compiles it and submits it to its
runtime, the same path `hetagent serve` takes (`orchestrator.server.Service`, with the namespace
as the tenant); then it writes the run's phase, id, conditions and, at the end, its outputs or a
message saying what went wrong into the AgentRun's status. Deleting an AgentRun cancels its run
first (a finalizer holds the object until then).

Where a run is planned: the `DevicePool`s of the AgentRun's namespace, when there are any, win,
since they describe the hardware that namespace runs on; else the cluster file the operator was
started with (`--cluster`); else this machine's CPU.

Restarts: runs live in the operator's durable run store. At start the operator resumes the
unfinished ones (`Runtime.resume`), and an AgentRun whose status (or `hetagent.dev/run-id`
annotation) already names a run is followed, never submitted again. A run is named by its
AgentRun's uid, so a crash between the submit and the status write cannot submit it twice either:
submitting again finds the run of that id in the store.

Why kopf rather than kr8s: kr8s is a client; an operator needs watches that survive reconnects,
finalizers, per-object handler progress kept in the cluster (so a restarted operator neither
repeats a finished handler nor forgets an unfinished one), retries with backoff, and Kubernetes
Events, which kopf provides and a client leaves to us. kopf's author also wrote kmock, the
in-process Kubernetes API emulator the tests run the real operator against. The few reads and
status writes the handlers make themselves go through `KubeApi`, a small aiohttp client on
kopf's own credentials (kopf has no public client).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from hetagent.backends.k8s.crds import (
    API_VERSION,
    GROUP,
    KINDS,
    RUN_POLICY_KEYS,
    VERSION,
    validate_custom,
)
from hetagent.orchestrator.runtime import Runtime
from hetagent.orchestrator.server import ApiError, Service
from hetagent.orchestrator.store import RunStore, StoreError
from hetagent.spec import Cluster, SpecError, parse_document

log = logging.getLogger("hetagent.k8s.operator")

RUNS, GRAPHS, POOLS = (KINDS[k].plural for k in ("AgentRun", "AgentGraph", "DevicePool"))
RUN_ID_ANNOTATION = f"{GROUP}/run-id"
FINALIZER = f"{GROUP}/operator"
PHASES = {  # run store status -> AgentRun phase
    "pending": "Pending",
    "running": "Running",
    "succeeded": "Succeeded",
    "failed": "Failed",
    "cancelled": "Cancelled",
}
FINISHED = ("Succeeded", "Failed", "Cancelled")
USER_AGENT = "hetagent-operator"
# Every call the operator makes (kopf's and its own), as the rules of its Role or ClusterRole.
RBAC_RULES = [
    {"apiGroups": [GROUP], "resources": [RUNS], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{RUNS}/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [GROUP], "resources": [GRAPHS], "verbs": ["get"]},
    {"apiGroups": [GROUP], "resources": [POOLS], "verbs": ["list"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
]
# An object is at most 1.5 MiB in etcd; outputs beyond this stay in the run store only.
MAX_STATUS_OUTPUTS_BYTES = 256 * 1024
STATUS_RETRIES = 8  # attempts at writing a final status while the API server is unreachable
RETRY_SECONDS = 5.0  # before a handler that met an unreachable API server tries again


class OperatorError(ValueError):
    """The operator cannot start as configured; the message says what to fix."""


class KubeError(Exception):
    """The API server did not answer as expected (unreachable, refused, a server error)."""


@dataclass(frozen=True)
class OperatorConfig:
    """How an operator runs. `namespace` None watches every namespace; `server` talks to that
    URL without credentials (`kubectl proxy`, tests), else a pod's service account or the
    kubeconfig is used."""

    namespace: str | None = None
    db: str | None = None
    cluster: Path | None = None
    backend: str = "local"
    address: str | None = None
    kv_memory_mb: float = 256.0
    base_dir: Path = Path(".")
    server: str | None = None


# -- the API server ------------------------------------------------------------------------


class KubeApi:
    """The few calls the handlers make themselves: read an AgentGraph, list DevicePools, patch
    an AgentRun's status and annotations. It uses the credentials kopf logged in with."""

    def __init__(self) -> None:
        self.info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._session_info: kopf.ConnectionInfo | None = None

    def use(self, info: kopf.ConnectionInfo) -> None:
        self.info = info

    async def _client(self) -> aiohttp.ClientSession:
        if self.info is None:
            raise KubeError("not logged in to the API server yet")
        if self._session is None or self._session_info is not self.info:
            if self._session is not None:
                await self._session.close()
            secure = self.info.server.startswith("https:")
            ssl: Any = (
                (False if self.info.insecure else self.info.as_ssl_context()) if secure else None
            )
            self._session = aiohttp.ClientSession(
                base_url=self.info.server.rstrip("/") + "/",
                headers=self.info.as_http_headers() | {"User-Agent": USER_AGENT},
                connector=aiohttp.TCPConnector(ssl=ssl) if secure else None,
                timeout=aiohttp.ClientTimeout(total=30),
            )
            self._session_info = self.info
        return self._session

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any] | None:
        """The response's JSON; None when the object does not exist (404)."""
        session = await self._client()
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        try:
            async with session.request(
                method, path.lstrip("/"), data=json.dumps(body) if body is not None else None,
                headers=headers,
            ) as response:  # fmt: skip
                if response.status == 404:
                    return None
                text = await response.text()
                if response.status >= 400:
                    raise KubeError(f"{method} {path}: HTTP {response.status}: {_reason(text)}")
                return json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeError(f"{method} {path}: {error or type(error).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(text: str) -> str:
    """A Kubernetes Status's message, else the body's first line."""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return json.loads(text)["message"]
    return text.strip().splitlines()[0][:200] if text.strip() else "(no body)"


def _path(namespace: str, plural: str, name: str | None = None, sub: str | None = None) -> str:
    parts = ["apis", GROUP, VERSION, "namespaces", namespace, plural, name, sub]
    return "/" + "/".join(p for p in parts if p)


# -- status ----------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(previous: list[dict[str, Any]], *updates: tuple[str, str, str, str]) -> list:
    """The status's conditions with these (type, status, reason, message) set; a condition's
    lastTransitionTime moves only when its status changes (Kubernetes conventions)."""
    by_type = {c.get("type"): dict(c) for c in previous or []}
    for kind, status, reason, message in updates:
        old = by_type.get(kind, {})
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        by_type[kind] = {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since or _now(),
        }
    return list(by_type.values())


@dataclass
class _Refused(Exception):
    """A run that cannot be submitted: `reason` is the condition's reason (CamelCase)."""

    reason: str
    message: str


# -- the operator -----------------------------------------------------------------------------


@dataclass
class Operator:
    """The AgentRun reconciler: its runtime and run store, a `Service` per cluster (plans are
    cached there), the tasks following submitted runs, and the API client."""

    config: OperatorConfig
    runtime: Runtime
    store: RunStore
    default_cluster: Cluster
    kube: KubeApi = field(default_factory=KubeApi)
    services: dict[str, Service] = field(default_factory=dict)
    followers: dict[tuple[str, str], asyncio.Task] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    handled: dict[str, str | None] = field(default_factory=dict)  # uid -> its run id, if any

    # handlers ------------------------------------------------------------------------------

    def login(self, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        """kopf's credentials, kept for the handlers' own calls too (again at each re-login)."""
        info = connection(self.config, settings)
        self.kube.use(info)
        return info

    async def submit(
        self, body: kopf.Body, namespace: str, name: str, logger: Any, **_: Any
    ) -> None:
        """On creation: submit the AgentRun's run unless it has one, then follow it. kopf may
        call this again with an older copy of the object (an event from before its own writes),
        so what was done is read from this process's memory and the object as it is now."""
        key = body.metadata.uid or f"{namespace}/{name}"
        async with self.locks.setdefault(key, asyncio.Lock()):
            if key in self.handled:
                return  # submitted (and followed), or refused, already
            try:
                current = await self.kube.request("GET", _path(namespace, RUNS, name))
            except KubeError as error:
                raise kopf.TemporaryError(str(error), delay=RETRY_SECONDS) from None
            if current is None:
                return  # deleted meanwhile
            status = dict(current.get("status") or {})
            annotations = (current.get("metadata") or {}).get("annotations") or {}
            known = status.get("runId") or annotations.get(RUN_ID_ANNOTATION)
            if known or status.get("phase") in FINISHED:
                self.handled[key] = known
                if known:
                    self.follow(namespace, name, known)
                return
            await self._first_submit(key, body, namespace, name, status, logger)

    async def _first_submit(
        self,
        key: str,
        body: kopf.Body,
        namespace: str,
        name: str,
        status: dict[str, Any],
        logger: Any,
    ) -> None:
        try:
            await self._status(namespace, name, status, phase="Pending", conditions=(
                ("Submitted", "Unknown", "Planning", "reading and planning the AgentGraph"),
            ))  # fmt: skip
            run_id, cluster = await self._submit(body, namespace)
        except KubeError as error:  # nothing submitted yet: kopf tries the handler again
            raise kopf.TemporaryError(str(error), delay=RETRY_SECONDS) from None
        except _Refused as refused:
            logger.warning(f"AgentRun {namespace}/{name} refused: {refused.message}")
            await self._refuse(key, namespace, name, status, refused)
            return
        except Exception as error:  # a bug of ours: this run fails, the operator goes on
            log.exception(f"AgentRun {namespace}/{name}: internal error")
            refused = _Refused("InternalError", f"internal error: {error!r} (see the logs)")
            await self._refuse(key, namespace, name, status, refused)
            return
        self.handled[key] = run_id
        # From here on the run exists: a failed write is retried here, never by kopf (which
        # would run this handler, and submit, again).
        placed = f"run {run_id} on cluster {cluster} ({self.runtime.backend.name} backend)"
        logger.info(f"AgentRun {namespace}/{name}: {placed}")
        await _persistently(
            f"AgentRun {namespace}/{name}: cannot record its run id",
            lambda: self._annotate(namespace, name, run_id),
        )
        await _persistently(
            f"AgentRun {namespace}/{name}: cannot write its status",
            lambda: self._status(
                namespace, name, status, phase="Running", runId=run_id, startedAt=_now(),
                message="", conditions=(
                    ("Submitted", "True", "RunCreated", placed),
                    ("Succeeded", "Unknown", "Running", "the run is executing"),
                ),
            ),
        )  # fmt: skip
        self.follow(namespace, name, run_id)

    async def _refuse(
        self, key: str, namespace: str, name: str, status: dict[str, Any], refused: _Refused
    ) -> None:
        self.handled[key] = None
        await _persistently(
            f"AgentRun {namespace}/{name}: cannot write its status",
            lambda: self._status(
                namespace, name, status, phase="Failed", message=refused.message,
                finishedAt=_now(), conditions=(
                    ("Submitted", "False", refused.reason, refused.message),
                    ("Succeeded", "False", refused.reason, refused.message),
                ),
            ),
        )  # fmt: skip

    async def resume(self, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        """At operator start: follow the AgentRun's run again if it was not finished."""
        status = body.get("status") or {}
        run_id = status.get("runId") or body.metadata.annotations.get(RUN_ID_ANNOTATION)
        if run_id and status.get("phase") not in FINISHED:
            self.follow(namespace, name, run_id)

    async def delete(self, body: kopf.Body, namespace: str, name: str, logger: Any, **_) -> None:
        """Before the AgentRun goes: stop following its run and cancel the run."""
        follower = self.followers.pop((namespace, name), None)
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        key = body.metadata.uid or f"{namespace}/{name}"
        run_id = (
            self.handled.pop(key, None)
            or (body.get("status") or {}).get("runId")
            or body.metadata.annotations.get(RUN_ID_ANNOTATION)
        )
        self.locks.pop(key, None)
        if run_id and await self.runtime.cancel(run_id):
            logger.info(f"AgentRun {namespace}/{name} deleted: run {run_id} cancelled")

    # submitting ----------------------------------------------------------------------------

    async def _submit(self, body: kopf.Body, namespace: str) -> tuple[str, str]:
        """Plan and submit the AgentRun's run: (run id, the cluster it was planned on). The run
        is named by the object's uid, so a crash between the submit and the status write can
        never submit twice: a run with that id already in the store is it."""
        spec = dict(body.get("spec") or {})
        try:
            validate_custom(
                {"apiVersion": API_VERSION, "kind": "AgentRun",
                 "metadata": {"name": body.metadata.name}, "spec": spec}
            )  # fmt: skip
        except ValueError as error:
            raise _Refused("InvalidAgentRun", str(error)) from None
        agent = spec["agent"]
        graph = await self.kube.request("GET", _path(namespace, GRAPHS, agent))
        if graph is None:
            raise _Refused(
                "AgentGraphNotFound",
                f"AgentGraph {agent!r} not found in namespace {namespace!r}: create it "
                f"(kubectl apply -f AGENT.yaml -n {namespace}) and re-create this AgentRun",
            )
        document = _graph_document(graph, spec.get("policies") or {})
        cluster = await self._cluster(namespace)
        service = self._service(cluster)
        async with self.locks.setdefault(f"namespace {namespace}", asyncio.Lock()):
            try:
                await asyncio.to_thread(service.put_agent, namespace, document)
            except ApiError as error:
                reason = "InvalidAgentGraph" if error.errors else "CannotPlan"
                raise _Refused(reason, f"AgentGraph {agent!r}: {error.message}") from None
            try:
                run_id = await service.submit(
                    namespace, agent, dict(spec.get("inputs") or {}), run_id=body.metadata.uid
                )
            except ApiError as error:
                raise _Refused("InvalidInputs", f"spec.inputs: {error.message}") from None
        return run_id, cluster.metadata.name

    async def _cluster(self, namespace: str) -> Cluster:
        """The namespace's DevicePools as a Cluster, else the operator's default cluster."""
        listed = await self.kube.request("GET", _path(namespace, POOLS))
        items = sorted((listed or {}).get("items") or [], key=lambda p: p["metadata"]["name"])
        if not items:
            return self.default_cluster
        pools = [{"name": p["metadata"]["name"]} | dict(p.get("spec") or {}) for p in items]
        document = {
            "apiVersion": API_VERSION,
            "kind": "Cluster",
            "metadata": {"name": f"{namespace}-devicepools"[:63].rstrip("-")},
            "spec": {"pools": pools},
        }
        try:
            from hetagent.documents import known_ids

            cluster = parse_document(document, known=known_ids())
        except SpecError as error:
            issue = error.issues[0]
            where = str(issue.path).replace("spec.pools", "DevicePool", 1)
            where = _pool_named(where, [p["name"] for p in pools])
            raise _Refused("InvalidDevicePools", f"{where}: {issue.message}") from None
        assert isinstance(cluster, Cluster)
        return cluster

    def _service(self, cluster: Cluster) -> Service:
        key = json.dumps(cluster.to_dict(), sort_keys=True)
        if key not in self.services:
            self.services[key] = Service(self.runtime, self.store, [cluster], self.config.base_dir)
        return self.services[key]

    # following -----------------------------------------------------------------------------

    def follow(self, namespace: str, name: str, run_id: str) -> None:
        """Write the run's final status into the AgentRun when it ends (once per AgentRun)."""
        key = (namespace, name)
        if key in self.followers and not self.followers[key].done():
            return
        task = asyncio.create_task(self._follow(namespace, name, run_id), name=f"follow {key}")
        self.followers[key] = task
        task.add_done_callback(
            lambda t: self.followers.pop(key, None) if self.followers.get(key) is t else None
        )

    async def _follow(self, namespace: str, name: str, run_id: str) -> None:
        if self.store.get_run(run_id) is None:
            message = f"run {run_id} is not in this operator's run store (check its --db)"
            update = {"phase": "Failed", "message": message, "finishedAt": _now()}
            conditions = (("Succeeded", "False", "RunNotFound", message),)
        else:
            result = await self.runtime.wait(run_id)
            if result.status not in ("succeeded", "failed", "cancelled"):
                return  # not executing here (another process owns it): nothing to report yet
            update, conditions = _final(run_id, result.status, result.outputs, result.error)

        async def write() -> None:
            current = await self.kube.request("GET", _path(namespace, RUNS, name))
            if current is not None:  # else the AgentRun is gone: nothing to report to
                status = current.get("status") or {}
                await self._status(
                    namespace, name, status, conditions=conditions, runId=run_id, **update
                )

        await _persistently(f"AgentRun {namespace}/{name}: cannot write its status", write)

    # writing -------------------------------------------------------------------------------

    async def _status(
        self,
        namespace: str,
        name: str,
        current: dict[str, Any],
        *,
        conditions: tuple[tuple[str, str, str, str], ...] = (),
        **fields: Any,
    ) -> None:
        """Patch the AgentRun's status with `fields` and these conditions (kept in `current`,
        so the next write starts from what was written)."""
        current.update(fields)
        current["conditions"] = _conditions(current.get("conditions") or [], *conditions)
        patch = {"status": fields | {"conditions": current["conditions"]}}
        await self.kube.request("PATCH", _path(namespace, RUNS, name, "status"), patch)

    async def _annotate(self, namespace: str, name: str, run_id: str) -> None:
        patch = {"metadata": {"annotations": {RUN_ID_ANNOTATION: run_id}}}
        await self.kube.request("PATCH", _path(namespace, RUNS, name), patch)

    async def close(self) -> None:
        for task in list(self.followers.values()):
            task.cancel()
        await asyncio.gather(*self.followers.values(), return_exceptions=True)
        await self.runtime.close()
        await self.kube.close()

    # kopf ----------------------------------------------------------------------------------

    def registry(self) -> kopf.OperatorRegistry:
        """The operator's handlers, in a registry of its own (not kopf's global one)."""
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(self.login)
        kopf.on.create(GROUP, VERSION, RUNS, registry=registry, id="submit")(self.submit)
        kopf.on.resume(GROUP, VERSION, RUNS, registry=registry, id="follow")(self.resume)
        kopf.on.delete(GROUP, VERSION, RUNS, registry=registry, id="cancel")(self.delete)
        return registry


async def _persistently(what: str, write: Any) -> bool:
    """Call `write()` until the API server takes it (a few attempts, backing off); False if it
    never did (logged: the operator goes on with its other runs)."""
    for attempt in range(STATUS_RETRIES):
        try:
            await write()
            return True
        except KubeError as error:
            log.warning(f"{what}: {error}")
            if attempt + 1 < STATUS_RETRIES:
                await asyncio.sleep(min(2**attempt, 60))  # the API server is not answering
    return False


def _final(
    run_id: str, status: str, outputs: dict[str, Any] | None, error: str | None
) -> tuple[dict[str, Any], tuple[tuple[str, str, str, str], ...]]:
    """A finished run's status fields and conditions."""
    phase = PHASES[status]
    update: dict[str, Any] = {"phase": phase, "finishedAt": _now()}
    if phase == "Succeeded":
        size = len(json.dumps(outputs or {}))
        if size > MAX_STATUS_OUTPUTS_BYTES:
            kept = f"the outputs ({size} bytes) are too large for the AgentRun's status; "
            kept += f"they are in the operator's run store under run {run_id}"
            update |= {"outputs": {}, "message": kept}
        else:
            update |= {"outputs": outputs or {}, "message": ""}
        return update, (("Succeeded", "True", "RunSucceeded", "the run finished"),)
    message = error or "the run was cancelled"
    update["message"] = message
    reason = "RunFailed" if phase == "Failed" else "RunCancelled"
    return update, (("Succeeded", "False", reason, message),)


def _graph_document(resource: dict[str, Any], policies: dict[str, Any]) -> dict[str, Any]:
    """The hetagent AgentGraph document of an AgentGraph resource: the API server's metadata
    (uid, resourceVersion, ...) dropped, the AgentRun's policy overrides applied."""
    metadata = resource.get("metadata") or {}
    kept = {k: metadata[k] for k in ("name", "labels") if metadata.get(k)}
    if (metadata.get("annotations") or {}).get("description"):
        kept["description"] = metadata["annotations"]["description"]
    spec = dict(resource.get("spec") or {})
    chosen = {k: v for k, v in policies.items() if k in RUN_POLICY_KEYS and v}
    if chosen:
        spec["policies"] = dict(spec.get("policies") or {}) | chosen
    return {"apiVersion": API_VERSION, "kind": "AgentGraph", "metadata": kept, "spec": spec}


def _pool_named(where: str, names: list[str]) -> str:
    """`DevicePool[1].device` as `DevicePool gpu-a: device` (the resource a user edits)."""
    if where.startswith("DevicePool[") and "]" in where:
        index, _, rest = where[len("DevicePool[") :].partition("]")
        if index.isdigit() and int(index) < len(names):
            return f"DevicePool {names[int(index)]}" + (f": {rest.lstrip('.')}" if rest else "")
    return where


# -- running it ----------------------------------------------------------------------------


def connection(config: OperatorConfig, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Where the API server is and how to log in: `config.server` as it is, else the pod's
    service account, else the kubeconfig."""
    if config.server:
        return kopf.ConnectionInfo(server=config.server)
    try:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise OperatorError(f"cannot read the kubeconfig: {error}") from None
    if info is None:
        raise OperatorError(
            "no Kubernetes credentials: run the operator in a pod with a service account, "
            "set KUBECONFIG, or give --server URL (e.g. kubectl proxy's http://127.0.0.1:8001)"
        )
    return info


def settings_for(config: OperatorConfig) -> kopf.OperatorSettings:
    """kopf's settings: hetagent's finalizer and annotations, no peering (one operator per
    namespace scope), no scanning (the CRDs are installed before the operator starts)."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.reporting_component = "hetagent-operator"
    settings.peering.standalone = True
    settings.scanning.disabled = True
    return settings


def load_cluster(path: Path | None) -> Cluster:
    """The operator's default cluster: the file's, else this machine's CPU."""
    if path is None:
        from hetagent.orchestrator.serve_cli import this_machine

        return this_machine()
    from hetagent.documents import DocumentError, load_file

    try:
        cluster = load_file(path)
    except DocumentError as error:
        raise OperatorError(str(error.issues[0])) from None
    if not isinstance(cluster, Cluster):
        raise OperatorError(f"{path}: expected a Cluster, got {cluster.kind}")
    return cluster


def make_backend(config: OperatorConfig) -> Any:
    """The backend runs execute on: the embedded one, or Ray when configured."""
    from hetagent.backends import make_backend as named_backend

    try:
        return named_backend(config.backend, kv_memory_mb=config.kv_memory_mb,
                             address=config.address)  # fmt: skip
    except ValueError as error:
        raise OperatorError(str(error)) from None


async def operate(
    config: OperatorConfig,
    *,
    backend: Any = None,
    settings: kopf.OperatorSettings | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the operator until `stop` is set (or the process is signalled). `backend` replaces
    the configured one (tests); unfinished runs in the store are resumed first. Give it an
    event loop of its own (a process or a thread): when it stops, kopf cancels every task
    started while it ran, not only its own."""
    settings = settings or settings_for(config)
    connection(config, settings)  # fail now, with a clear message, when there is no cluster
    cluster = load_cluster(config.cluster)
    try:
        store = RunStore(config.db)
    except StoreError as error:
        raise OperatorError(str(error)) from None
    try:
        backend = backend or make_backend(config)
        owner = f"k8s-operator:{os.uname().nodename}:{os.getpid()}"
        operator = Operator(config, Runtime(backend, store, owner=owner), store, cluster)
        try:
            resumed = await operator.runtime.resume()
            if resumed:
                log.info(f"resumed {len(resumed)} unfinished runs")
            await kopf.operator(
                registry=operator.registry(),
                settings=settings,
                standalone=True,
                clusterwide=config.namespace is None,
                namespaces=[config.namespace] if config.namespace else (),
                stop_flag=stop,
                ready_flag=ready,
            )
        finally:
            await operator.close()
    finally:
        store.close()


def run_operator(
    namespace: str | None,
    *,
    db: str | None,
    cluster: Path | None,
    backend: str,
    address: str | None,
    kv_memory_mb: float = 256.0,
    base_dir: Path = Path("."),
    server: str | None = None,
) -> None:
    """Run the operator until interrupted (blocking). A configuration the operator cannot
    start with raises OperatorError (a ValueError) with one line saying what to fix."""
    if not base_dir.is_dir():
        raise OperatorError(f"--base-dir {base_dir}: not a directory")
    from hetagent.backends import BACKENDS

    if backend not in BACKENDS:
        raise OperatorError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    if backend == "ray" and address is None:
        # a local Ray offers only the pools it starts with; the namespaces' DevicePools vary
        raise OperatorError("--backend ray needs --address (auto or ray://HOST:PORT)")
    config = OperatorConfig(
        namespace=namespace,
        db=db,
        cluster=cluster,
        backend=backend,
        address=address,
        kv_memory_mb=kv_memory_mb,
        base_dir=base_dir,
        server=server,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(operate(config))


__all__ = ["RBAC_RULES", "Operator", "OperatorConfig", "OperatorError", "operate", "run_operator"]
