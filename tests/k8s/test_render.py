"""`hetagent k8s render`: KubeRay worker groups per pool sized by the fleet, the control plane,
the CRDs and custom resources, all validated; CLI errors are one line."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hetagent.backends.k8s import render as k8s
from hetagent.backends.k8s.cli import app
from hetagent.backends.k8s.crds import validate_custom
from hetagent.backends.ray.placement import pool_label, pool_resource
from hetagent.documents import load_file
from hetagent.planner.catalog import load_catalog
from hetagent.planner.plan import AgentPlan, plan_agent
from hetagent.spec import AgentGraph, Cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AGENTS = sorted((EXAMPLES / "agents").glob("*.yaml"))
MIXED = EXAMPLES / "clusters" / "mixed-generations.yaml"
LOCAL = EXAMPLES / "clusters" / "local.yaml"


@cache
def _rendered(agent: Path, cluster: Path) -> tuple[AgentGraph, Cluster, AgentPlan, k8s.Rendered]:
    graph, where = load_file(agent), load_file(cluster)
    plan = plan_agent(graph, where)
    return graph, where, plan, k8s.render(graph, where, plan, base_dir=agent.parent)


def _one(rendered: k8s.Rendered, kind: str) -> dict[str, Any]:
    (found,) = [m for _, m in rendered.manifests() if m["kind"] == kind]
    return found


def _cluster(device: str, count: int = 8) -> Cluster:
    return Cluster.model_validate(
        {
            "apiVersion": "hetagent.dev/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": "one"},
            "spec": {
                "pools": [{"name": "accel", "device": device, "count": count, "pricePerHour": 2.0}]
            },
        }
    )


def _quickstart_with(**traffic: float) -> AgentGraph:
    document = load_file(EXAMPLES / "agents" / "quickstart.yaml").to_dict()
    document["spec"]["traffic"] = traffic
    return AgentGraph.model_validate(document)


def _ray_resources(group: dict[str, Any]) -> dict[str, float]:
    """The rayStartParams resources, unquoted as `ray start --resources` reads them."""
    return json.loads(json.loads(group["rayStartParams"]["resources"]))


@pytest.mark.parametrize("agent", AGENTS, ids=lambda p: p.stem)
def test_every_example_renders_valid_manifests_on_mixed_generations(
    agent: Path, tmp_path: Path
) -> None:
    graph, _, _, rendered = _rendered(agent, MIXED)
    k8s.validate(rendered)
    written = rendered.write(tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == set(rendered.files)
    for path in written:  # what is on disk is what was validated
        name = path.relative_to(tmp_path).as_posix()
        assert list(yaml.safe_load_all(path.read_text())) == rendered.files[name]
    kinds = [m["kind"] for _, m in rendered.manifests()]
    for kind in ("RayCluster", "Deployment", "Service", "ConfigMap", "ServiceAccount", "Role"):
        assert kind in kinds
    assert kinds.count("CustomResourceDefinition") == 3
    assert _one(rendered, "AgentGraph")["metadata"]["name"] == graph.metadata.name


def test_quickstart_on_the_local_cluster_gets_one_cpu_worker_group_without_accelerators() -> None:
    _, _, _, rendered = _rendered(EXAMPLES / "agents" / "quickstart.yaml", LOCAL)
    k8s.validate(rendered)
    (group,) = _one(rendered, "RayCluster")["spec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu"
    spec = group["template"]["spec"]
    assert "nodeSelector" not in spec  # host-cpu: any node
    assert set(spec["containers"][0]["resources"]["limits"]) == {"cpu", "memory"}
    assert "num-gpus" not in group["rayStartParams"]


@pytest.mark.parametrize("agent", AGENTS, ids=lambda p: p.stem)
def test_worker_groups_are_the_pools_the_plan_uses_sized_by_the_fleet(agent: Path) -> None:
    _, where, plan, rendered = _rendered(agent, MIXED)
    placed = {a.pool for a in plan.assignments}
    fleet = {f.pool: f for f in plan.fleet.pools}
    used = placed | {name for name, f in fleet.items() if f.devices_needed}
    assert {g.pool.name for g in rendered.groups} == used
    specs = {g["groupName"]: g for g in _one(rendered, "RayCluster")["spec"]["workerGroupSpecs"]}
    for group in rendered.groups:
        spec = specs[group.name]
        assert (spec["replicas"], spec["maxReplicas"]) == (group.replicas, group.max_replicas)
        assert group.max_replicas * group.devices_per_pod <= where.pool(group.pool.name).count
        needed = fleet[group.pool.name].devices_needed if group.pool.name in fleet else 0
        if group.pool.name in placed:
            assert group.replicas >= 1
        if group.device.kind == "cpu":  # a pod per socket the fleet needs
            assert group.replicas == max(needed, 1 if group.pool.name in placed else 0)
            continue
        # pods as large as the largest tensor-parallel group; enough of them for the fleet
        groups = [int(k.rpartition(" x")[2]) for k in fleet[group.pool.name].replicas]
        assert group.devices_per_pod == max([1, *groups])
        assert group.replicas * group.devices_per_pod >= needed
        assert group.replicas <= max(needed, 1)


@pytest.mark.parametrize(
    ("device", "resource", "selector"),
    [
        ("h100", "nvidia.com/gpu", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
        ("l4", "nvidia.com/gpu", {"nvidia.com/gpu.product": "NVIDIA-L4"}),
        ("mi300x", "amd.com/gpu", {"amd.com/gpu.device-id": "74a1"}),
        ("gaudi3", "habana.ai/gaudi", {"feature.node.kubernetes.io/pci-1200_1da3.present": "true"}),
        ("xeon-8480", None, {"feature.node.kubernetes.io/cpu-model.id": "143"}),
    ],
)
def test_worker_group_requests_the_vendors_resource_on_its_labelled_nodes(
    device: str, resource: str | None, selector: dict[str, str]
) -> None:
    graph, where = _quickstart_with(arrivalRatePerSecond=0.05), _cluster(device)
    rendered = k8s.render(graph, where, plan_agent(graph, where))
    k8s.validate(rendered)
    (group,) = _one(rendered, "RayCluster")["spec"]["workerGroupSpecs"]
    (wg,) = rendered.groups
    pod = group["template"]["spec"]
    assert selector.items() <= pod["nodeSelector"].items()
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits == pod["containers"][0]["resources"]["requests"]
    extended = set(limits) - {"cpu", "memory"}
    if resource is None:  # a CPU socket: all its cores, no device plugin
        assert not extended
        assert limits["cpu"] == str(load_catalog().devices[device].cores)
    else:
        assert extended == {resource}
        assert limits[resource] == str(wg.devices_per_pod)
        assert pod["tolerations"][0]["key"] == resource
    ray = _ray_resources(group)
    assert ray[pool_resource("accel")] == 1  # the Ray backend's name for the pool, one per pod
    assert group["rayStartParams"]["labels"] == f"{pool_label('accel')}=true"
    if device in ("h100", "l4", "mi300x"):
        assert group["rayStartParams"]["num-gpus"] == str(wg.devices_per_pod)
    if device == "gaudi3":
        assert ray["HPU"] == wg.devices_per_pod


def test_every_catalog_device_has_a_kubernetes_mapping_with_a_source() -> None:
    table = k8s.accelerators()
    for device in load_catalog().devices.values():
        row = table[device.id]
        assert row.source
        assert bool(row.resource) == (device.kind != "cpu"), device.id
        assert row.ray_resource or device.kind == "cpu"


def test_traffic_beyond_the_cluster_is_capped_at_its_devices_with_a_warning() -> None:
    graph, where = _quickstart_with(arrivalRatePerSecond=5000.0), _cluster("l4", count=2)
    rendered = k8s.render(graph, where, plan_agent(graph, where))
    (group,) = rendered.groups
    assert group.replicas == group.max_replicas == 2
    (warning,) = rendered.warnings
    assert warning.startswith("pool accel: the traffic needs") and "sized to 2 pods" in warning


def test_control_plane_serves_on_the_ray_head_and_runs_the_operator() -> None:
    _, _, _, rendered = _rendered(EXAMPLES / "agents" / "rag-qa.yaml", MIXED)
    ray_name = _one(rendered, "RayCluster")["metadata"]["name"]
    deployment = _one(rendered, "Deployment")
    pod = deployment["spec"]["template"]
    server, operator = pod["spec"]["containers"]
    address = f"ray://{ray_name}-head-svc.hetagent.svc:{k8s.RAY_CLIENT_PORT}"
    assert server["args"][:1] == ["serve"]
    assert server["args"][server["args"].index("--backend") + 1] == "ray"
    assert server["args"][server["args"].index("--address") + 1] == address
    assert operator["args"][:2] == ["k8s", "operator"]
    assert operator["args"][operator["args"].index("--address") + 1] == address
    assert deployment["spec"]["replicas"] == 1  # one operator acts on AgentRuns
    service = _one(rendered, "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == _one(rendered, "ServiceAccount")["metadata"]["name"]


def test_config_map_holds_the_agent_the_plan_and_the_index_documents() -> None:
    graph, where, plan, rendered = _rendered(EXAMPLES / "agents" / "rag-qa.yaml", MIXED)
    data = _one(rendered, "ConfigMap")["data"]
    assert AgentGraph.from_yaml(data["agent.yaml"]) == graph
    assert Cluster.from_yaml(data["cluster.yaml"]) == where
    planned = json.loads(data["plan.json"])
    assert planned["agent"] == graph.metadata.name
    assert {f["pool"] for f in planned["fleet"]} == {f.pool for f in plan.fleet.pools}
    volume = _one(rendered, "Deployment")["spec"]["template"]["spec"]["volumes"][0]
    paths = {item["path"]: data[item["key"]] for item in volume["configMap"]["items"]}
    documents = sorted((EXAMPLES / "agents" / "data" / "rag-docs").glob("*.md"))
    for document in documents:  # mounted where the agent's relative path finds them
        assert paths[f"data/rag-docs/{document.name}"] == document.read_text()
    assert set(paths) == {"agent.yaml", "cluster.yaml", "plan.json"} | {
        f"data/rag-docs/{d.name}" for d in documents
    }


def test_operator_role_watches_and_patches_agent_runs_and_reads_graphs_and_pools() -> None:
    _, _, _, rendered = _rendered(EXAMPLES / "agents" / "quickstart.yaml", LOCAL)
    rules = _one(rendered, "Role")["rules"]

    def allowed(resource: str, verb: str) -> bool:
        return any(
            resource in r["resources"] and verb in r["verbs"] and "hetagent.dev" in r["apiGroups"]
            for r in rules
        )

    for verb in ("get", "list", "watch", "patch"):
        assert allowed("agentruns", verb)
    assert allowed("agentruns/status", "patch")
    for resource in ("agentgraphs", "devicepools"):
        assert allowed(resource, "watch") and not allowed(resource, "patch")
    binding = _one(rendered, "RoleBinding")
    assert binding["subjects"][0]["name"] == _one(rendered, "ServiceAccount")["metadata"]["name"]


def test_custom_resources_carry_the_agent_and_every_pool() -> None:
    graph, where, _, rendered = _rendered(EXAMPLES / "agents" / "text2sql.yaml", MIXED)
    resource = _one(rendered, "AgentGraph")
    assert resource["spec"] == graph.to_dict()["spec"]
    assert resource["metadata"]["annotations"]["description"] == graph.metadata.description
    pools = [m for _, m in rendered.manifests() if m["kind"] == "DevicePool"]
    assert [p["spec"]["name"] for p in pools] == [p.name for p in where.spec.pools]
    run = rendered.files["examples/agentrun.yaml"][0]
    assert run["spec"]["agent"] == graph.metadata.name
    assert set(run["spec"]["inputs"]) == set(graph.spec.inputs)
    for manifest in (resource, *pools, run):
        validate_custom(manifest)


def test_validation_names_the_file_object_and_field_of_a_broken_manifest() -> None:
    _, _, _, rendered = _rendered(EXAMPLES / "agents" / "quickstart.yaml", LOCAL)
    broken = copy.deepcopy(rendered)
    broken.files["40-control-plane.yaml"][0]["spec"]["replica"] = 1
    with pytest.raises(k8s.RenderError) as caught:
        k8s.validate(broken)
    assert str(caught.value) == (
        "40-control-plane.yaml: Deployment hetagent-quickstart-server: "
        "spec: Additional properties are not allowed ('replica' was unexpected)"
    )
    broken = copy.deepcopy(rendered)
    worker = broken.files["30-raycluster.yaml"][0]["spec"]["workerGroupSpecs"][0]
    worker["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = [2]
    with pytest.raises(
        k8s.RenderError,
        match=r"spec\.workerGroupSpecs\[0\]\.template\.spec\."
        r"containers\[0\]\.resources\.limits\.cpu: \[2\] is not valid",
    ):
        k8s.validate(broken)
    broken = copy.deepcopy(rendered)
    broken.files["30-raycluster.yaml"][0]["spec"]["workerGroupSpecs"][0]["rayStartParams"][
        "num-cpus"
    ] = 2
    with pytest.raises(k8s.RenderError, match=r"rayStartParams\.num-cpus: 2 is not of type"):
        k8s.validate(broken)


# -- the CLI


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_render_writes_the_manifests(tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    result = _cli(
        "render", EXAMPLES / "agents" / "quickstart.yaml", "--cluster", LOCAL, "-o", out,
        "--image", "registry.example/hetagent:dev", "--namespace", "agents",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "worker groups: cpu 1x1 host-cpu" in result.stdout
    ray = yaml.safe_load((out / "30-raycluster.yaml").read_text())
    assert ray["metadata"]["namespace"] == "agents"
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "registry.example/hetagent:dev"
    assert len(list(yaml.safe_load_all((out / "01-crds.yaml").read_text()))) == 3


@pytest.mark.parametrize(
    ("agent", "cluster", "expected"),
    [
        ("missing.yaml", LOCAL, "missing.yaml: cannot read"),
        (EXAMPLES / "agents" / "quickstart.yaml", "nowhere.yaml", "nowhere.yaml: cannot read"),
        (
            EXAMPLES / "agents" / "quickstart.yaml",
            EXAMPLES / "agents" / "rag-qa.yaml",
            "expected kind Cluster, got AgentGraph",
        ),
        (
            EXAMPLES / "agents" / "deep-research.yaml",
            LOCAL,
            "cannot plan deep-research on local:",
        ),
    ],
    ids=["missing-agent", "missing-cluster", "agent-as-cluster", "does-not-fit"],
)
def test_cli_errors_are_one_line_and_exit_2(
    agent: Path | str, cluster: Path | str, expected: str, tmp_path: Path
) -> None:
    result = _cli("render", agent, "--cluster", cluster, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_bad_cluster_document_is_one_line_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: hetagent.dev/v1alpha1\nkind: Cluster\nmetadata: {name: bad}\n"
        "spec:\n  pools:\n    - {name: gpu, device: h100, count: 0}\n"
    )
    result = _cli(
        "render", EXAMPLES / "agents" / "quickstart.yaml", "--cluster", bad, "-o", tmp_path
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{bad}:6: spec.pools[0].count:")
    assert result.stderr.count("\n") == 1


def test_cli_bad_namespace_is_one_line(tmp_path: Path) -> None:
    result = _cli(
        "render", EXAMPLES / "agents" / "quickstart.yaml", "--cluster", LOCAL, "-o", tmp_path,
        "--namespace", "Not_Valid",
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr == (
        "namespace 'Not_Valid' is not valid: lowercase letters, digits and '-', at most 63\n"
    )


def test_cli_crds_prints_the_three_definitions() -> None:
    result = _cli("crds")
    assert result.exit_code == 0
    kinds = [d["spec"]["names"]["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert kinds == ["AgentGraph", "AgentRun", "DevicePool"]
