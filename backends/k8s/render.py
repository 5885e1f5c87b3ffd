"""Kubernetes manifests for an agent on a cluster: KubeRay, the control plane, the CRDs.

`render` turns an agent, its cluster and the planner's plan into:

- a KubeRay `RayCluster` (ray.io/v1): a head group and one worker group per device pool the plan
  uses. A worker pod is one replica of the pool: `nodeSelector` on the node label that names the
  device (`accelerators.csv`, beside this module, one row per catalog device, each with its
  source), the device's extended resource (`nvidia.com/gpu`, `amd.com/gpu`, `habana.ai/gaudi`,
  ...) or CPU cores as requests and limits, and `rayStartParams` advertising the pool to Ray the
  way the Ray backend asks for it (`hetagent.backends.ray.placement`: one unit of
  `pool_resource(pool)` per pod, and the `pool_label` node label). Replicas come from the
  planner's fleet (`planner/fleet.py`): the pool's server replicas (a model on a tensor-parallel
  group of devices) packed into pods as large as the largest group;
- the control plane: a Deployment running `hetagent serve --backend ray` against the Ray head and
  the AgentRun operator (`hetagent k8s operator`) beside it, a Service, a ConfigMap with the
  agent, the cluster, the plan and the agent's index documents, and the operator's
  ServiceAccount, Role and RoleBinding;
- the hetagent CRDs, the agent as an `AgentGraph` resource and the cluster's pools as
  `DevicePool` resources; an example `AgentRun` under `examples/` (not applied by
  `kubectl apply -f DIR`, which does not descend into folders).

`validate` checks every manifest before anything is written: core kinds and the CRDs with
kubernetes-validate's schemas (strict: unknown fields are errors), hetagent's custom resources
against their CRDs (`crds.validate_custom`). KubeRay's RayCluster CRD ships in no package this
project can install (no PyPI or npm package carries it, and nothing else can be downloaded), so
a RayCluster is checked in two parts: the fields hetagent sets against `RAY_CLUSTER_SCHEMA`,
written from KubeRay's ray.io/v1 API types, and its head and worker pod templates as core
`PodTemplateSpec`s with kubernetes-validate.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

from hetagent import __version__
from hetagent.backends.k8s.crds import API_VERSION, DNS_SUBDOMAIN, KINDS, crds, validate_custom
from hetagent.backends.ray.placement import pool_label, pool_resource
from hetagent.planner.catalog import Device, load_catalog
from hetagent.planner.fleet import PoolFleet
from hetagent.planner.plan import AgentPlan
from hetagent.spec import AgentGraph, Cluster, Pool, SubgraphNode, format_path, shown

DEFAULT_NAMESPACE = "hetagent"
DEFAULT_IMAGE = f"hetagent/hetagent:{__version__}"  # hetagent and Ray, the same image everywhere
SERVER_PORT = 8080
RAY_CLIENT_PORT = 10001
CONFIG_DIR = "/etc/hetagent"
# The Ray head schedules no work (num-cpus 0): GCS, dashboard and the client server only.
HEAD_RESOURCES = {"cpu": "2", "memory": "8Gi"}
SERVER_RESOURCES = {"cpu": "1", "memory": "2Gi"}
OPERATOR_RESOURCES = {"cpu": "500m", "memory": "1Gi"}
CONFIGMAP_LIMIT = 1024 * 1024  # bytes: the API server's limit on a ConfigMap's data
# Optional Secret a user creates for a durable run store shared by restarts (PostgreSQL URL);
# without it each container keeps SQLite inside the pod, which a restart loses.
# Durable run stores (PostgreSQL URLs) a user may give in this Secret: one per component, since
# each resumes every unfinished run of its store when it starts
DB_SECRET = "hetagent-db"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class RenderError(ValueError):
    """The agent or cluster cannot be deployed as asked; the message says what to fix."""


# --------------------------------------------------------------------------------------------
# Devices on Kubernetes (accelerators.csv)


@dataclass(frozen=True)
class Accelerator:
    """How one catalog device appears on a Kubernetes node and to Ray."""

    device: str
    resource: str  # the device plugin's extended resource; "" for CPU sockets
    ray_resource: str  # "GPU" (num-gpus), or a Ray resource such as HPU; "" for CPUs
    ray_per_device: int
    node_labels: dict[str, str]
    cpu_per_device: float | None  # host cores a pod asks per device; None: the catalog's cores
    memory_gib_per_device: int
    source: str


@cache
def accelerators() -> dict[str, Accelerator]:
    """The rows of accelerators.csv by device id."""
    rows = {}
    text = files("hetagent.backends.k8s").joinpath("accelerators.csv").read_text("utf-8")
    for row in csv.DictReader(text.splitlines()):
        labels = dict(item.split("=", 1) for item in filter(None, row["node_labels"].split(";")))
        rows[row["device"]] = Accelerator(
            device=row["device"],
            resource=row["resource"],
            ray_resource=row["ray_resource"],
            ray_per_device=int(row["ray_per_device"] or 0),
            node_labels=labels,
            cpu_per_device=float(row["cpu_per_device"]) if row["cpu_per_device"] else None,
            memory_gib_per_device=int(row["memory_gib_per_device"]),
            source=row["source"],
        )
    return rows


# --------------------------------------------------------------------------------------------
# Worker groups: which pools, how many pods of how many devices


@dataclass(frozen=True)
class WorkerGroup:
    """One KubeRay worker group: the pods of one pool."""

    name: str  # the group's name (a DNS label made from the pool's name)
    pool: Pool
    device: Device
    accelerator: Accelerator
    devices_per_pod: int
    replicas: int
    min_replicas: int
    max_replicas: int

    @property
    def cpus_per_pod(self) -> float:
        per_device = self.accelerator.cpu_per_device
        if per_device is None:  # a CPU socket: all its cores
            per_device = float(self.device.cores or 1)
        return per_device * self.devices_per_pod

    @property
    def memory_per_pod(self) -> str:
        return f"{self.accelerator.memory_gib_per_device * self.devices_per_pod}Gi"


def _fleet_servers(fleet: PoolFleet) -> list[tuple[int, float]]:
    """(tensor-parallel group, replicas) of each server of a pool's fleet, from the planner's
    `"model xGROUP"` keys."""
    servers = []
    for key, replicas in fleet.replicas.items():
        model, _, group = key.rpartition(" x")
        if not model or not group.isdigit():
            raise RuntimeError(f"unexpected fleet server {key!r}: the planner's format changed")
        servers.append((int(group), replicas))
    return servers


def _pods_for(groups: list[int], capacity: int) -> int:
    """Pods of `capacity` devices that hold these tensor-parallel groups (first fit,
    largest first: a group never spans two pods)."""
    free: list[int] = []
    for group in sorted(groups, reverse=True):
        for i, room in enumerate(free):
            if room >= group:
                free[i] -= group
                break
        else:
            free.append(capacity - group)
    return len(free)


def worker_groups(plan: AgentPlan, cluster: Cluster) -> tuple[list[WorkerGroup], list[str]]:
    """The worker groups the plan needs, in the cluster's pool order, and warnings (a pool
    the traffic needs more of than the cluster has)."""
    catalog = load_catalog()
    table = accelerators()
    placed = {a.pool for a in plan.assignments}
    fleets = {f.pool: f for f in plan.fleet.pools}
    groups: list[WorkerGroup] = []
    warnings: list[str] = []
    names: set[str] = set()
    for pool in cluster.spec.pools:
        fleet = fleets.get(pool.name)
        needed = fleet.devices_needed if fleet else 0
        if pool.name not in placed and not needed:
            continue
        device = catalog.devices[pool.device]
        if pool.device not in table:
            raise RenderError(
                f"pool {pool.name}: device {pool.device} has no row in accelerators.csv "
                "(its Kubernetes resource and node label); add one"
            )
        servers = _fleet_servers(fleet) if fleet else []
        if device.kind == "cpu":  # servers share sockets: a pod is a socket
            per_pod, pods = 1, needed
        else:
            tensor_groups = [a.devices for a in plan.assignments if a.pool == pool.name]
            per_pod = max([1, *tensor_groups, *(g for g, _ in servers)])
            pods = _pods_for([g for g, n in servers for _ in range(math.ceil(n))], per_pod)
        minimum = 1 if pool.name in placed else 0
        most = max(1, pool.count // per_pod)
        pods = max(pods, minimum)
        if pods > most:
            warnings.append(
                f"pool {pool.name}: the traffic needs {pods} pods of {per_pod} {pool.device}, "
                f"the cluster has {pool.count} devices; sized to {most} pods"
            )
            pods = most
        name = _dns_label(pool.name, taken=names)
        groups.append(
            WorkerGroup(name, pool, device, table[pool.device], per_pod, pods, minimum, most)
        )
    return groups, warnings


def _dns_label(text: str, *, taken: set[str] | None = None, limit: int = 63) -> str:
    """A DNS-1035 label made from a name (Service and group names): lowercase letters,
    digits and '-', starting with a letter; unique among `taken`, which it joins."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    label = label if label[0].isalpha() else f"x-{label}"
    label = label[:limit].rstrip("-")
    if taken is not None:
        base, n = label, 2
        while label in taken:
            label = f"{base[: limit - len(str(n)) - 1]}-{n}"
            n += 1
        taken.add(label)
    return label


# --------------------------------------------------------------------------------------------
# Manifests


@dataclass
class Rendered:
    """The manifests by file name (each file a YAML stream), the groups and any warnings."""

    files: dict[str, list[dict[str, Any]]]
    groups: list[WorkerGroup]
    warnings: list[str] = field(default_factory=list)

    def manifests(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, documents in self.files.items():
            for document in documents:
                yield name, document

    def write(self, directory: Path) -> list[Path]:
        """Write every file under `directory` (created if needed); return the paths."""
        written = []
        for name, documents in self.files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dump_all(documents), encoding="utf-8")
            written.append(path)
        return written


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors, multi-line strings as `|` blocks (the ConfigMap's files)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_all(documents: Iterable[dict[str, Any]]) -> str:
    return yaml.dump_all(
        list(documents), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
    )


@dataclass(frozen=True)
class _Names:
    """The names of one deployment's objects, derived from the agent's name."""

    base: str
    namespace: str

    @property
    def ray_cluster(self) -> str:
        return self.base

    @property
    def head_service(self) -> str:  # KubeRay names the head's Service so
        return f"{self.base}-head-svc"

    @property
    def ray_address(self) -> str:
        return f"ray://{self.head_service}.{self.namespace}.svc:{RAY_CLIENT_PORT}"

    @property
    def server(self) -> str:
        return f"{self.base}-server"

    @property
    def config(self) -> str:
        return f"{self.base}-config"

    @property
    def operator(self) -> str:
        return f"{self.base}-operator"


def _labels(names: _Names, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "hetagent",
        "app.kubernetes.io/instance": names.base,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/version": __version__,
    }


def _meta(names: _Names, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": names.namespace, "labels": _labels(names, component)}


def render(
    graph: AgentGraph,
    cluster: Cluster,
    plan: AgentPlan,
    *,
    image: str = DEFAULT_IMAGE,
    namespace: str = DEFAULT_NAMESPACE,
    base_dir: Path | None = None,
) -> Rendered:
    """Every manifest for `graph` on `cluster` as `plan` places it. `base_dir` is where the
    agent's relative paths (index documents, subgraph files) resolve; None packages none."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
        raise RenderError(
            f"namespace {shown(namespace)} is not valid: lowercase letters, digits and '-', "
            "at most 63"
        )
    # KubeRay appends "-head-svc" and pod suffixes to the cluster's name: keep it short.
    names = _Names(_dns_label(f"hetagent-{graph.metadata.name}", limit=40), namespace)
    groups, warnings = worker_groups(plan, cluster)
    packaged = _agent_files(graph, base_dir) if base_dir is not None else {}
    config, items = _config_map(names, graph, cluster, plan, packaged)
    files: dict[str, list[dict[str, Any]]] = {}
    if namespace != "default":
        files["00-namespace.yaml"] = [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {"app.kubernetes.io/name": "hetagent"}},
            }
        ]
    files["01-crds.yaml"] = crds()
    files["10-rbac.yaml"] = _rbac(names)
    files["20-config.yaml"] = [config]
    files["30-raycluster.yaml"] = [_ray_cluster(names, groups, image)]
    files["40-control-plane.yaml"] = _control_plane(names, items, image)
    files["50-agentgraph.yaml"] = [_agent_graph(names, graph, warnings)]
    files["51-devicepools.yaml"] = _device_pools(names, cluster)
    files["examples/agentrun.yaml"] = [example_run(graph, namespace)]
    return Rendered(files, groups, warnings)


# -- the Ray cluster


def _ray_cluster(names: _Names, groups: list[WorkerGroup], image: str) -> dict[str, Any]:
    head_template = {
        "metadata": {"labels": _labels(names, "ray-head")},
        "spec": {
            "containers": [
                {
                    "name": "ray-head",
                    "image": image,
                    "ports": [
                        {"name": "gcs-server", "containerPort": 6379},
                        {"name": "dashboard", "containerPort": 8265},
                        {"name": "client", "containerPort": RAY_CLIENT_PORT},
                    ],
                    "resources": {"requests": HEAD_RESOURCES, "limits": HEAD_RESOURCES},
                    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                }
            ],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        },
    }
    spec: dict[str, Any] = {
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": head_template,
        },
        "workerGroupSpecs": [_worker_group(names, g, image) for g in groups],
    }
    version = _ray_version()
    if version:
        spec = {"rayVersion": version, **spec}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": _meta(names, names.ray_cluster, "ray"),
        "spec": spec,
    }


def _ray_version() -> str | None:
    """The Ray this hetagent has (the image is built from the same pins), if installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return None


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def _worker_group(names: _Names, group: WorkerGroup, image: str) -> dict[str, Any]:
    accelerator = group.accelerator
    devices = group.devices_per_pod
    amounts = {"cpu": _quantity(group.cpus_per_pod), "memory": group.memory_per_pod}
    if accelerator.resource:
        amounts[accelerator.resource] = str(devices)
    # Ray sees the pool as one unit of its custom resource per pod (the Ray backend's contract)
    # and its accelerators: GPUs through num-gpus, others (HPU, neuron_cores, TPU) as resources.
    ray_resources: dict[str, float] = {pool_resource(group.pool.name): 1}
    params = {"num-cpus": _quantity(group.cpus_per_pod)}
    if accelerator.ray_resource == "GPU":
        params["num-gpus"] = str(devices)
    elif accelerator.ray_resource:
        ray_resources[accelerator.ray_resource] = accelerator.ray_per_device * devices
    # KubeRay passes each parameter as `--key=value`; Ray's docs quote the JSON this way.
    params["resources"] = json.dumps(json.dumps(ray_resources))
    label = pool_label(group.pool.name)
    if label:
        params["labels"] = f"{label}=true"
    pod_labels = _labels(names, "ray-worker") | {"hetagent.dev/pool": group.name}
    pod_spec: dict[str, Any] = {
        "containers": [
            {
                "name": "ray-worker",
                "image": image,
                "env": [{"name": "HETAGENT_POOL", "value": group.pool.name}],
                "resources": {"requests": amounts, "limits": dict(amounts)},
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
            }
        ],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    if accelerator.node_labels:
        pod_spec["nodeSelector"] = dict(accelerator.node_labels)
    if accelerator.resource:  # accelerator nodes are commonly tainted with their resource
        pod_spec["tolerations"] = [
            {"key": accelerator.resource, "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        "rayStartParams": params,
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }


# -- the control plane


def _agent_files(graph: AgentGraph, base_dir: Path) -> dict[str, str]:
    """The files the agent needs at run time, by path relative to its folder: its subgraph
    files and its indexes' documents."""
    from hetagent.tools.vectorstore import VectorIndexError, collect_documents

    found: dict[str, str] = {}

    def add(path: Path, text: str, what: str) -> None:
        try:
            relative = path.resolve().relative_to(base_dir.resolve())
        except ValueError:
            raise RenderError(
                f"{what} {path} is outside the agent's folder {base_dir}; "
                "move it there so it can be packaged"
            ) from None
        found[PurePosixPath(*relative.parts).as_posix()] = text

    def walk(g: AgentGraph, folder: Path) -> None:
        for name, index in g.spec.indexes.items():
            try:
                _, paths = collect_documents(index.documents, folder)
            except VectorIndexError as error:
                raise RenderError(f"index {name}: {error}") from None
            for path in paths:
                add(path, path.read_text(encoding="utf-8"), f"index {name}: document")
        for node in g.spec.nodes:
            if isinstance(node, SubgraphNode) and node.name in g.subgraphs:
                sub = g.subgraphs[node.name]
                add(folder / node.ref, sub.to_yaml(), f"subgraph {node.name}:")
                walk(sub, (folder / node.ref).parent)

    walk(graph, base_dir)
    return found


def _config_map(
    names: _Names,
    graph: AgentGraph,
    cluster: Cluster,
    plan: AgentPlan,
    packaged: dict[str, str],
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The agent, the cluster, the plan and the agent's files, and the volume items that mount
    them: keys are flat, so the items give each file its path (data/docs/a.md)."""
    from hetagent.planner.report import plan_json

    data = {
        "agent.yaml": graph.to_yaml(),
        "cluster.yaml": cluster.to_yaml(),
        "plan.json": json.dumps(plan_json(plan), indent=2) + "\n",
    }
    for i, (path, text) in enumerate(sorted(packaged.items())):
        data[f"file-{i}-{re.sub(r'[^-._a-zA-Z0-9]', '_', path)[-200:]}"] = text
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    if size > CONFIGMAP_LIMIT:
        raise RenderError(
            f"the agent's files take {size // 1024} KiB, more than a ConfigMap holds (1 MiB); "
            "serve the index documents from a volume instead"
        )
    paths = [*list(data)[:3], *sorted(packaged)]
    items = [{"key": key, "path": path} for key, path in zip(data, paths, strict=True)]
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(names, names.config, "config"),
        "data": data,
    }
    return config, items


def _control_plane(names: _Names, items: list[dict[str, str]], image: str) -> list[dict[str, Any]]:
    labels = _labels(names, "control-plane")
    selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    selector["app.kubernetes.io/component"] = "control-plane"
    mount = {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}

    def db(component: str) -> dict[str, Any]:
        """The component's own run store from the Secret (key `<component>-url`), if given;
        else SQLite inside the container, lost when it restarts."""
        ref = {"name": DB_SECRET, "key": f"{component}-url", "optional": True}
        return {"name": "HETAGENT_DB", "valueFrom": {"secretKeyRef": ref}}

    common = ["--backend", "ray", "--address", names.ray_address]
    common += ["--cluster", f"{CONFIG_DIR}/cluster.yaml", "--base-dir", CONFIG_DIR]
    server = {
        "name": "server",
        "image": image,
        "command": ["hetagent"],
        "args": ["serve", "--host", "0.0.0.0", "--port", str(SERVER_PORT), *common],
        "ports": [{"name": "http", "containerPort": SERVER_PORT}],
        "env": [db("server")],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 30,
            "periodSeconds": 20,
        },
        "resources": {"requests": SERVER_RESOURCES, "limits": SERVER_RESOURCES},
        "volumeMounts": [mount],
    }
    operator = {
        "name": "operator",
        "image": image,
        "command": ["hetagent"],
        "args": ["k8s", "operator", "--namespace", "$(POD_NAMESPACE)", *common],
        "env": [
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            db("operator"),
        ],
        "resources": {"requests": OPERATOR_RESOURCES, "limits": OPERATOR_RESOURCES},
        "volumeMounts": [mount],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(names, names.server, "control-plane"),
        "spec": {
            # One replica, replaced rather than rolled: two operators would both act on runs.
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": names.operator,
                    "containers": [server, operator],
                    "volumes": [
                        {
                            "name": "config",
                            "configMap": {"name": names.config, "items": items},
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names, names.base, "control-plane"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http"}],
        },
    }
    return [deployment, service]


def _rbac(names: _Names) -> list[dict[str, Any]]:
    """What the operator may do in its namespace: follow and update AgentRuns (their status,
    finalizers and annotations), read AgentGraphs and DevicePools, post Events."""
    plural = {kind: KINDS[kind].plural for kind in KINDS}
    group = API_VERSION.split("/")[0]
    rules = [
        {
            "apiGroups": [group],
            "resources": [plural["AgentRun"]],
            "verbs": ["get", "list", "watch", "patch", "update"],
        },
        {
            "apiGroups": [group],
            "resources": [f"{plural['AgentRun']}/status"],
            "verbs": ["get", "patch", "update"],
        },
        {
            "apiGroups": [group],
            "resources": [plural["AgentGraph"], plural["DevicePool"]],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(names, names.operator, "operator"),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(names, names.operator, "operator"),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(names, names.operator, "operator"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": names.operator,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": names.operator, "namespace": names.namespace}
            ],
        },
    ]


# -- custom resources


def _agent_graph(names: _Names, graph: AgentGraph, warnings: list[str]) -> dict[str, Any]:
    """The agent as an AgentGraph resource: its spec as written; its description as the
    `description` annotation (what the operator reads back), its labels where Kubernetes
    allows them."""
    document = graph.to_dict()
    metadata: dict[str, Any] = {"name": graph.metadata.name, "namespace": names.namespace}
    labels = {}
    for key, value in graph.metadata.labels.items():
        if _label_key_ok(key) and LABEL_VALUE.fullmatch(value) and len(value) <= 63:
            labels[key] = value
        else:
            warnings.append(f"label {key}={value} is not a valid Kubernetes label; left out")
    if labels:
        metadata["labels"] = labels
    if graph.metadata.description:
        metadata["annotations"] = {"description": graph.metadata.description}
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentGraph",
        "metadata": metadata,
        "spec": document["spec"],
    }


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (
        0 < len(name) <= 63
        and bool(LABEL_VALUE.fullmatch(name))
        and (not prefix or (len(prefix) <= 253 and bool(re.fullmatch(DNS_SUBDOMAIN, prefix))))
    )


def _device_pools(names: _Names, cluster: Cluster) -> list[dict[str, Any]]:
    """Every pool of the cluster (not only those this agent uses: another agent may)."""
    taken: set[str] = set()
    pools = []
    for pool in cluster.spec.pools:
        pools.append(
            {
                "apiVersion": API_VERSION,
                "kind": "DevicePool",
                "metadata": {
                    "name": _dns_label(pool.name, taken=taken),
                    "namespace": names.namespace,
                    "labels": {"hetagent.dev/cluster": _dns_label(cluster.metadata.name)},
                },
                "spec": pool.model_dump(mode="json", exclude_unset=True),
            }
        )
    return pools


_PLACEHOLDERS = {"string": "", "integer": 0, "number": 0, "boolean": False}


def example_run(graph: AgentGraph, namespace: str) -> dict[str, Any]:
    """An AgentRun of the agent with each input's default (a typed blank when it has none)."""
    inputs = {}
    for name, declared in graph.spec.inputs.items():
        if declared.required:
            inputs[name] = _PLACEHOLDERS.get(declared.type, {} if declared.type == "object" else [])
        else:
            inputs[name] = declared.default
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentRun",
        "metadata": {"name": f"{graph.metadata.name}-example"[:253], "namespace": namespace},
        "spec": {"agent": graph.metadata.name, "inputs": inputs},
    }


# --------------------------------------------------------------------------------------------
# Validation


# The fields of KubeRay's ray.io/v1 RayCluster that hetagent writes, from KubeRay's API types
# (ray-operator/apis/ray/v1/raycluster_types.go): groupName and the templates are required,
# rayStartParams is a map of strings, replica counts are int32. Pod templates are checked
# separately as core PodTemplateSpecs. Fields hetagent does not write are allowed, not checked.
RAY_CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            # the head Service's name (NAME-head-svc) must be a DNS-1035 label
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]{0,45}[a-z0-9])?$"}
            },
        },
        "spec": {
            "type": "object",
            "required": ["headGroupSpec"],
            "properties": {
                "rayVersion": {"type": "string"},
                "headGroupSpec": {
                    "type": "object",
                    "required": ["template"],
                    "properties": {
                        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                        "rayStartParams": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "template": {"type": "object"},
                    },
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["groupName", "template"],
                        "properties": {
                            "groupName": {
                                "type": "string",
                                "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
                            },
                            "replicas": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                            "minReplicas": {"type": "integer", "minimum": 0},
                            "maxReplicas": {"type": "integer", "minimum": 0},
                            "rayStartParams": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "template": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def _kubernetes_version() -> str:
    from kubernetes_validate.utils import latest_version

    return latest_version()


def _core_error(manifest: dict[str, Any]) -> tuple[tuple[Any, ...], str] | None:
    """kubernetes-validate, strict (unknown fields are errors), at the newest version it has:
    the first problem's path and message, None when the manifest is valid."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    try:
        kubernetes_validate.validate(manifest, _kubernetes_version(), strict=True)
    except kubernetes_validate.ValidationError as error:
        return tuple(error.path), error.message
    except SchemaNotFoundError as error:
        return (), error.message
    return None


def _raise(loc: Iterable[Any], message: str) -> None:
    where = format_path(loc)
    raise ValueError(f"{where}: {message}" if where else message)


def _validate_ray_cluster(manifest: dict[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(RAY_CLUSTER_SCHEMA).iter_errors(manifest)
    )
    if error is not None:
        _raise(error.absolute_path, error.message)
    spec = manifest["spec"]
    templates = [(("spec", "headGroupSpec", "template"), spec["headGroupSpec"]["template"])]
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        templates.append((("spec", "workerGroupSpecs", i, "template"), group["template"]))
        if not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group["maxReplicas"]:
            _raise(
                ("spec", "workerGroupSpecs", i),
                "replicas must lie between minReplicas and maxReplicas",
            )
    for loc, template in templates:
        holder = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "template"},
            "template": template,
        }
        problem = _core_error(holder)
        if problem is not None:
            _raise((*loc, *problem[0][1:]), problem[1])  # [0] is the holder's "template"


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Check one manifest the way its kind is checked (see the module docstring); raise
    ValueError with one line saying where and what."""
    kind = manifest.get("kind")
    if manifest.get("apiVersion") == API_VERSION:
        validate_custom(manifest)
    elif kind == "RayCluster":
        _validate_ray_cluster(manifest)
    elif (problem := _core_error(manifest)) is not None:
        _raise(*problem)


def validate(rendered: Rendered) -> None:
    """Check every rendered manifest; raise RenderError naming the file and object."""
    for name, manifest in rendered.manifests():
        try:
            validate_manifest(manifest)
        except ValueError as error:
            what = f"{manifest.get('kind')} {manifest.get('metadata', {}).get('name')}: "
            text = str(error) if str(error).startswith(what) else what + str(error)
            raise RenderError(f"{name}: {text}") from None
