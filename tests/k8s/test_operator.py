"""The AgentRun operator, run for real (kopf, talking HTTP) against kmock's in-process Kubernetes
API emulator on loopback: AgentRuns become runs, their status follows the run, deleting one
cancels its run, and a restarted operator picks up where it was without submitting again."""

import asyncio
import json
import threading
import uuid
from pathlib import Path

import aiohttp
import pytest

from hetagent.backends.base import ToolResult
from hetagent.backends.k8s.crds import GROUP, VERSION, crd
from hetagent.backends.k8s.operator import (
    MAX_STATUS_OUTPUTS_BYTES,
    RBAC_RULES,
    RUN_ID_ANNOTATION,
    OperatorConfig,
    OperatorError,
    operate,
    run_operator,
)
from hetagent.orchestrator.store import RunStore

ROOT = Path(__file__).parents[2]
NAMESPACE = "agents"
WAIT_SECONDS = 30  # a bound on a hung test, not a measurement: every wait is on an event

GREETER = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "AgentGraph",
    "metadata": {"name": "greeter"},
    "spec": {
        "inputs": {"name": {"type": "string"}},
        "nodes": [
            {"name": "greet", "type": "transform", "template": "Hello, ${inputs.name}!"},
            {
                "name": "shout",
                "type": "tool",
                "tool": "python",
                "args": {"code": "print('${nodes.greet.outputs.text}'.upper())"},
            },
        ],
        "outputs": {
            "greeting": "${nodes.greet.outputs.text}",
            "shouted": "${nodes.shout.outputs.stdout}",
        },
    },
}

WAITER = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "AgentGraph",
    "metadata": {"name": "waiter"},
    "spec": {
        "nodes": [{"name": "wait", "type": "tool", "tool": "shell", "args": {"command": "x"}}],
        "outputs": {"out": "${nodes.wait.outputs.text}"},
    },
}


def agent_run(name: str, agent: str, inputs: dict | None = None, **spec) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentRun",
        "metadata": {"name": name},
        "spec": {"agent": agent, "inputs": inputs or {}} | spec,
    }


class GatedTools:
    """A backend whose tool calls wait until the test opens the gate (or forever), so a run is
    surely still running when the test deletes its AgentRun or stops the operator. The operator
    runs in a thread of its own, so the test talks to it through thread-safe events."""

    name = "gated"

    def __init__(self, open: bool = False):
        self.open = open
        self.started = threading.Event()
        self.calls = 0
        self.cancelled = 0

    async def start(self, pools):
        pass

    async def close(self):
        pass

    async def tool(self, call):
        self.calls += 1
        self.started.set()
        if not self.open:
            try:
                await asyncio.Event().wait()  # nothing opens it: only a cancel ends the call
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return ToolResult(True, "done", exit_code=0, stdout="done")


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def kube(kmock):
    """The emulated API server, serving the core resources kopf relies on (namespaces, events,
    CRDs) and hetagent's three kinds as their CRDs declare them."""
    core = {
        "v1/namespaces": ("Namespace", False),
        "v1/events": ("Event", True),
        "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False),
    }
    for resource, (kind, namespaced) in core.items():
        kmock.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, verbs={"get", "list", "watch", "create"}
        )
    for kind in ("AgentGraph", "AgentRun", "DevicePool"):
        spec = crd(kind)["spec"]
        version = spec["versions"][0]
        kmock.resources[f"{spec['group']}/{version['name']}/{spec['names']['plural']}"] = (
            kmock.ResourceInfo(
                kind=kind,
                singular=spec["names"]["singular"],
                namespaced=True,
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources=set(version.get("subresources", {})),
                shortnames=set(spec["names"]["shortNames"]),
            )
        )
    return kmock


@pytest.fixture
async def api(kube):
    """A client, as kubectl would be: create, delete, and wait for an object's state."""
    # room for a watch event (one line) of an object near 1.5 MiB, the API server's limit
    async with aiohttp.ClientSession(base_url=str(kube.url), read_bufsize=2**22) as session:
        yield Api(session)


class Api:
    def __init__(self, session: aiohttp.ClientSession):
        self.session = session

    @staticmethod
    def path(plural: str, name: str | None = None) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{plural}" + (
            f"/{name}" if name else ""
        )

    async def create(self, plural: str, body: dict) -> None:
        body = json.loads(json.dumps(body))
        # what the API server adds to every object it creates (kmock leaves it to the client)
        body["metadata"] |= {
            "namespace": NAMESPACE,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "1",
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        }
        async with self.session.post(self.path(plural), json=body) as response:
            assert response.status < 300, await response.text()

    async def delete(self, plural: str, name: str) -> None:
        async with self.session.delete(self.path(plural, name)) as response:
            assert response.status < 300, await response.text()

    async def get(self, plural: str, name: str) -> dict | None:
        async with self.session.get(self.path(plural, name)) as response:
            return None if response.status == 404 else await response.json()

    async def wait(self, name: str, until, plural: str = "agentruns") -> dict | None:
        """The AgentRun `name` once `until(obj)` holds (obj None: deleted), read from a watch
        stream: the test waits for the event, never for a time. The stream is opened before
        the object is read, so no change between the two is missed."""
        async with asyncio.timeout(WAIT_SECONDS):
            params = {"watch": "true"}
            async with self.session.get(self.path(plural), params=params) as response:
                current = await self.get(plural, name)
                if until(current):
                    return current
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if obj.get("metadata", {}).get("name") != name:
                        continue
                    obj = None if event["type"] == "DELETED" else obj
                    if until(obj):
                        return obj
        raise AssertionError(f"the watch stream of {plural} ended before {name} got there")


def finished(obj: dict | None) -> bool:
    return obj is not None and (obj.get("status") or {}).get("phase") in (
        "Succeeded",
        "Failed",
        "Cancelled",
    )


def running(obj: dict | None) -> bool:
    return obj is not None and (obj.get("status") or {}).get("phase") == "Running"


def condition(obj: dict, kind: str) -> dict:
    found = [c for c in obj["status"].get("conditions", []) if c["type"] == kind]
    assert found, f"no {kind} condition in {obj['status']}"
    return found[0]


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'operator-runs.db'}"


@pytest.fixture
async def start_operator(kube, db, tmp_path):
    """Start an operator on the emulated API server; returns a coroutine function that stops
    it. The operator owns its event loop, as in its own process (at exit kopf cancels every
    task started while it ran), so it runs in a thread; every one started is stopped at the
    end of the test."""
    stops = []

    async def start(backend=None, cluster: Path | None = None):
        config = OperatorConfig(
            namespace=NAMESPACE, db=db, cluster=cluster, base_dir=tmp_path, server=str(kube.url)
        )
        stop, ready, errors = threading.Event(), threading.Event(), []

        def main():
            try:
                asyncio.run(operate(config, backend=backend, stop=stop, ready=ready))
            except BaseException as error:  # shown to the test below
                errors.append(error)
                ready.set()

        thread = threading.Thread(target=main, name="operator", daemon=True)
        thread.start()
        await asyncio.to_thread(ready.wait, WAIT_SECONDS)
        if errors:
            raise errors[0]
        assert ready.is_set(), "the operator did not get ready"

        async def halt():
            stop.set()
            await asyncio.to_thread(thread.join, WAIT_SECONDS)
            assert not thread.is_alive(), "the operator did not stop"
            if errors:
                raise errors[0]

        stops.append(halt)
        return halt

    yield start
    for halt in stops:
        await halt()


@pytest.fixture
async def operator(start_operator):
    """One operator with the real embedded (local) backend."""
    halt = await start_operator()
    yield
    await halt()


# -- tests ---------------------------------------------------------------------------------


async def test_agent_run_executes_and_its_status_reaches_succeeded_with_outputs(operator, api, db):
    await api.create("agentgraphs", GREETER)
    await api.create("agentruns", agent_run("hello", "greeter", {"name": "kube"}))

    obj = await api.wait("hello", finished)

    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["outputs"] == {"greeting": "Hello, kube!", "shouted": "HELLO, KUBE!\n"}
    assert status["startedAt"] and status["finishedAt"]
    submitted, succeeded = condition(obj, "Submitted"), condition(obj, "Succeeded")
    assert (submitted["status"], submitted["reason"]) == ("True", "RunCreated")
    assert (succeeded["status"], succeeded["reason"]) == ("True", "RunSucceeded")
    assert all(c["lastTransitionTime"] for c in status["conditions"])
    # the run id names the run in the operator's store, and the annotation keeps it too
    assert obj["metadata"]["annotations"][RUN_ID_ANNOTATION] == status["runId"]
    store = RunStore(db)
    run = store.get_run(status["runId"])
    assert (run.status, run.tenant, run.agent) == ("succeeded", NAMESPACE, "greeter")
    store.close()


async def test_run_of_a_missing_agent_graph_fails_with_a_clear_message_while_another_succeeds(
    operator, api
):
    await api.create("agentgraphs", GREETER)
    await api.create("agentruns", agent_run("lost", "no-such-agent"))
    await api.create("agentruns", agent_run("fine", "greeter", {"name": "x"}))

    lost = await api.wait("lost", finished)
    fine = await api.wait("fine", finished)

    assert lost["status"]["phase"] == "Failed"
    message = lost["status"]["message"]
    assert "AgentGraph 'no-such-agent' not found" in message and NAMESPACE in message
    assert "\n" not in message
    for kind in ("Submitted", "Succeeded"):
        found = condition(lost, kind)
        assert (found["status"], found["reason"]) == ("False", "AgentGraphNotFound")
    assert "runId" not in lost["status"]
    assert fine["status"]["phase"] == "Succeeded"


async def test_invalid_agent_graph_fails_naming_the_field_to_fix(operator, api):
    broken = json.loads(json.dumps(GREETER))
    broken["metadata"]["name"] = "broken"
    broken["spec"]["outputs"]["greeting"] = "${nodes.nowhere.outputs.text}"
    await api.create("agentgraphs", broken)
    await api.create("agentruns", agent_run("bad", "broken", {"name": "x"}))

    obj = await api.wait("bad", finished)

    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Submitted")["reason"] == "InvalidAgentGraph"
    message = obj["status"]["message"]
    assert message.startswith("AgentGraph 'broken': spec.outputs.greeting"), message
    assert "nowhere" in message


async def test_inputs_the_agent_does_not_take_fail_the_run_naming_the_input(operator, api):
    await api.create("agentgraphs", GREETER)
    await api.create("agentruns", agent_run("typo", "greeter", {"nmae": "x"}))

    obj = await api.wait("typo", finished)

    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Submitted")["reason"] == "InvalidInputs"
    assert "'nmae'" in obj["status"]["message"]


async def test_deleting_a_running_agent_run_cancels_its_run_and_the_object_goes(
    start_operator, api, db
):
    backend = GatedTools()
    await start_operator(backend)
    await api.create("agentgraphs", WAITER)
    await api.create("agentruns", agent_run("long", "waiter"))
    obj = await api.wait("long", running)
    await asyncio.to_thread(backend.started.wait, WAIT_SECONDS)  # the tool call is in flight
    run_id = obj["status"]["runId"]

    await api.delete("agentruns", "long")
    gone = await api.wait("long", lambda o: o is None)

    assert gone is None and await api.get("agentruns", "long") is None
    assert backend.cancelled == 1  # the tool call was stopped, not left to finish
    store = RunStore(db)
    assert store.get_run(run_id).status == "cancelled"
    store.close()


async def test_restarted_operator_follows_its_run_to_the_end_without_submitting_it_again(
    start_operator, api, db
):
    first = GatedTools()
    halt = await start_operator(first)
    await api.create("agentgraphs", WAITER)
    await api.create("agentruns", agent_run("survivor", "waiter"))
    obj = await api.wait("survivor", running)
    await asyncio.to_thread(first.started.wait, WAIT_SECONDS)
    run_id = obj["status"]["runId"]
    await halt()  # the operator goes away mid-run

    second = GatedTools(open=True)
    await start_operator(second)
    obj = await api.wait("survivor", finished)

    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"]["runId"] == run_id
    assert obj["status"]["outputs"] == {"out": "done"}
    assert second.calls == 1  # the unfinished tool call ran again, in the resumed run
    store = RunStore(db)
    assert [run.id for run in store.list_runs()] == [run_id]  # never submitted twice
    store.close()


async def test_device_pools_of_the_namespace_are_the_cluster_the_run_is_planned_on(
    operator, api, db
):
    pool = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DevicePool",
        "metadata": {"name": "workers"},
        "spec": {
            "name": "workers",
            "device": "host-cpu",
            "count": 2,
            "ownership": "owned",
            "pricePerHour": 0,
        },
    }
    await api.create("devicepools", pool)
    await api.create("agentgraphs", GREETER)
    await api.create("agentruns", agent_run("pooled", "greeter", {"name": "pool"}))

    obj = await api.wait("pooled", finished)

    assert obj["status"]["phase"] == "Succeeded"
    assert f"cluster {NAMESPACE}-devicepools" in condition(obj, "Submitted")["message"]
    store = RunStore(db)
    plan = store.get_run(obj["status"]["runId"]).plan
    assert {p["name"] for p in plan["pools"]} == {"workers"}
    store.close()


async def test_device_pool_with_an_unknown_device_fails_the_run_naming_the_pool(operator, api):
    pool = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DevicePool",
        "metadata": {"name": "mystery"},
        "spec": {"name": "mystery", "device": "quantum-9000", "count": 1},
    }
    await api.create("devicepools", pool)
    await api.create("agentgraphs", GREETER)
    await api.create("agentruns", agent_run("nowhere", "greeter", {"name": "x"}))

    obj = await api.wait("nowhere", finished)

    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Submitted")["reason"] == "InvalidDevicePools"
    assert obj["status"]["message"].startswith("DevicePool mystery: device: unknown device")


async def test_agent_run_policies_override_the_graph_s(operator, api, db):
    await api.create("agentgraphs", GREETER)
    run = agent_run("tuned", "greeter", {"name": "x"}, policies={"kvRetention": "lease"})
    await api.create("agentruns", run)

    obj = await api.wait("tuned", finished)

    store = RunStore(db)
    plan = store.get_run(obj["status"]["runId"]).plan
    assert plan["documents"][""]["spec"]["policies"] == {"kvRetention": "lease"}
    store.close()


async def test_without_device_pools_runs_are_planned_on_the_operator_s_cluster_file(
    start_operator, api
):
    await start_operator(cluster=ROOT / "examples/clusters/local.yaml")
    await api.create("agentgraphs", GREETER)
    await api.create("agentruns", agent_run("filed", "greeter", {"name": "file"}))

    obj = await api.wait("filed", finished)

    assert obj["status"]["phase"] == "Succeeded"
    assert "on cluster local " in condition(obj, "Submitted")["message"]


def test_operator_without_kubernetes_credentials_refuses_to_start_saying_what_to_give(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    with pytest.raises(OperatorError, match=r"no Kubernetes credentials.*--server"):
        run_operator(None, db=None, cluster=None, backend="local", address=None)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"backend": "spark"}, "unknown backend 'spark'; use local or ray"),
        ({"backend": "ray"}, "--backend ray needs --address"),
        ({"cluster": Path("no/such/cluster.yaml")}, "no/such/cluster.yaml"),
        ({"base_dir": Path("no/such/dir")}, "--base-dir no/such/dir: not a directory"),
    ],
)
def test_operator_refuses_a_configuration_it_cannot_start_with_in_one_line(
    options, complaint, kube
):
    given = {"db": None, "cluster": None, "backend": "local", "address": None} | options
    with pytest.raises(OperatorError) as refused:
        run_operator(NAMESPACE, server=str(kube.url), **given)
    assert complaint in str(refused.value) and "\n" not in str(refused.value)


class BrokenBackend(GatedTools):
    """A backend that cannot start its pools: a failure the operator did not foresee."""

    async def start(self, pools):
        raise RuntimeError("the pools' devices are gone")


async def test_an_unforeseen_failure_fails_that_run_and_the_operator_goes_on(start_operator, api):
    await start_operator(BrokenBackend())
    await api.create("agentgraphs", WAITER)
    await api.create("agentruns", agent_run("doomed", "waiter"))
    await api.create("agentruns", agent_run("missing", "no-such-agent"))

    doomed = await api.wait("doomed", finished)
    missing = await api.wait("missing", finished)

    assert doomed["status"]["phase"] == "Failed"
    assert condition(doomed, "Submitted")["reason"] == "InternalError"
    assert "the pools' devices are gone" in doomed["status"]["message"]
    assert condition(missing, "Submitted")["reason"] == "AgentGraphNotFound"


VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch"}
VERBS |= {"DELETE": "delete"}


def allowed(group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in RBAC_RULES
    )


async def test_the_operator_s_rbac_rules_allow_every_call_it_makes(start_operator, api, kube):
    backend = GatedTools()
    await start_operator(backend)
    await api.create("agentgraphs", WAITER)
    await api.create("agentruns", agent_run("audited", "waiter"))
    await api.create("agentruns", agent_run("unknown", "no-such-agent"))
    await api.wait("audited", running)
    await api.wait("unknown", finished)
    await api.delete("agentruns", "audited")
    await api.wait("audited", lambda o: o is None)

    calls = set()
    for request in kube:
        agent = request.headers.get("User-Agent", "")
        if not agent.startswith(("kopf/", "hetagent-operator")):
            continue  # the test's own calls
        if request.resource is None or request.resource.plural is None:
            continue  # API discovery, which every client may read (system:discovery)
        plural = request.resource.plural + (
            f"/{request.subresource}" if request.subresource else ""
        )
        calls.add((request.resource.group, plural, VERBS[request.action.name]))

    assert {(GROUP, "agentruns/status", "patch"), (GROUP, "agentgraphs", "get")} <= calls
    assert [call for call in calls if not allowed(*call)] == []


async def test_outputs_too_large_for_the_status_stay_in_the_run_store_and_the_status_says_so(
    operator, api, db
):
    await api.create("agentgraphs", GREETER)
    big = "x" * MAX_STATUS_OUTPUTS_BYTES  # the greeting alone is more
    await api.create("agentruns", agent_run("huge", "greeter", {"name": big}))

    obj = await api.wait("huge", finished)

    status = obj["status"]
    assert status["phase"] == "Succeeded" and status["outputs"] == {}
    assert "too large" in status["message"] and status["runId"] in status["message"]
    store = RunStore(db)
    assert store.get_run(status["runId"]).outputs["greeting"] == f"Hello, {big}!"
    store.close()
