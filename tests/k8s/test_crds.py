"""hetagent's CRDs: structural schemas Kubernetes accepts, generated from the spec's models, and
custom resources checked against them with one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from hetagent.backends.k8s.crds import (
    GROUP,
    KINDS,
    RUN_PHASES,
    VERSION,
    crd,
    crds,
    structural,
    validate_custom,
)
from hetagent.documents import load_file
from hetagent.spec import AgentGraphSpec, NodeKind, Pool

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AGENTS = sorted((EXAMPLES / "agents").glob("*.yaml"))
JUNCTORS = ("oneOf", "anyOf", "allOf", "not")
# What Kubernetes forbids in a structural schema, or in apiextensions.k8s.io/v1 at all.
FORBIDDEN = ("$ref", "definitions", "$defs", "patternProperties", "dependencies", "const")


def _schemas(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Every schema in a schema: (path, schema, inside a junctor)."""
    yield from _walk(node, path, False)


def _walk(node: Any, path: str, junctor: bool) -> Iterator[tuple[str, dict[str, Any], bool]]:
    yield path, node, junctor
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}", junctor)
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]", junctor)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}", junctor)
    for key in JUNCTORS:
        for i, child in enumerate(node.get(key, []) if key != "not" else [node.get(key)]):
            if child is not None:
                yield from _walk(child, f"{path}<{key}{i}>", True)


def _schema(kind: str) -> dict[str, Any]:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _run(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentRun",
        "metadata": {"name": "nightly"},
        "spec": spec,
    }


def test_crds_are_namespaced_in_the_hetagent_group_with_their_plurals() -> None:
    names = {c["spec"]["names"]["kind"]: c for c in crds()}
    assert set(names) == {"AgentGraph", "AgentRun", "DevicePool"}
    for kind, plural in (("AgentGraph", "agentgraphs"), ("AgentRun", "agentruns")):
        assert names[kind]["spec"]["names"]["plural"] == plural
    assert names["DevicePool"]["metadata"]["name"] == "devicepools.hetagent.dev"
    for manifest in crds():
        assert manifest["spec"]["group"] == GROUP == "hetagent.dev"
        assert manifest["spec"]["scope"] == "Namespaced"
        (version,) = manifest["spec"]["versions"]
        assert version["name"] == VERSION == "v1alpha1"
        assert version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", list(KINDS))
def test_crd_schema_is_structural(kind: str) -> None:
    for path, node, junctor in _schemas(_schema(kind)):
        where = f"{kind}{path}"
        assert not set(FORBIDDEN) & set(node), f"{where} uses {set(FORBIDDEN) & set(node)}"
        assert node.get("additionalProperties") is not False, f"{where}: additionalProperties false"
        assert not ("properties" in node and "additionalProperties" in node), where
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{where}: {bound} must be OpenAPI's boolean"
        if junctor:  # value validations only inside oneOf/anyOf/allOf/not
            banned = {"type", "description", "default", "additionalProperties", "nullable"}
            assert not banned & set(node), f"{where} sets {banned & set(node)} in a junctor"
        else:
            typed = "type" in node or node.get("x-kubernetes-preserve-unknown-fields") is True
            typed = typed or node.get("x-kubernetes-int-or-string") is True
            assert typed, f"{where} has no type and does not preserve unknown fields"


def test_fields_in_a_junctor_are_also_declared_outside_it() -> None:
    """Kubernetes' structural rule: the node variants' oneOf only constrains declared fields."""
    nodes = _schema("AgentGraph")["properties"]["spec"]["properties"]["nodes"]["items"]
    declared = set(nodes["properties"])
    for branch in nodes["oneOf"]:
        assert set(branch.get("properties", {})) <= declared
        assert set(branch.get("required", [])) <= declared


@pytest.mark.parametrize("manifest", crds(), ids=lambda m: m["spec"]["names"]["kind"])
def test_crd_manifest_validates_as_apiextensions_v1(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, latest_version(), strict=True)


def test_agent_graph_schema_is_generated_from_the_spec_models() -> None:
    """Every field of every node kind, and of the spec, is in the CRD: nothing hand-copied."""
    spec = _schema("AgentGraph")["properties"]["spec"]
    assert spec == structural(AgentGraphSpec)
    fields = {
        f.alias or name for kind in get_args(NodeKind) for name, f in kind.model_fields.items()
    }
    assert fields == set(spec["properties"]["nodes"]["items"]["properties"])
    node_types = spec["properties"]["nodes"]["items"]["properties"]["type"]["enum"]
    assert set(node_types) == {"llm", "tool", "retrieve", "transform", "agent", "subgraph"}
    pool = _schema("DevicePool")["properties"]["spec"]
    assert set(pool["properties"]) == {f.alias for f in Pool.model_fields.values()}
    assert pool["required"] == ["name", "device", "count"]


def test_agent_run_has_its_printer_columns_and_status_fields() -> None:
    columns = crd("AgentRun")["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"]) for c in columns] == [
        ("Agent", ".spec.agent"),
        ("Phase", ".status.phase"),
        ("RunId", ".status.runId"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    status = _schema("AgentRun")["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == list(RUN_PHASES)
    assert RUN_PHASES == ("Pending", "Running", "Succeeded", "Failed", "Cancelled")
    assert status["outputs"]["x-kubernetes-preserve-unknown-fields"] is True
    assert status["startedAt"]["format"] == status["finishedAt"]["format"] == "date-time"
    condition = status["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "lastTransitionTime"} <= set(condition)
    spec = _schema("AgentRun")["properties"]["spec"]
    assert spec["required"] == ["agent"]
    assert set(spec["properties"]["policies"]["properties"]) == {
        "kvRetention",
        "scheduling",
        "resources",
    }


@pytest.mark.parametrize("path", AGENTS, ids=lambda p: p.stem)
def test_every_example_agent_is_a_valid_agent_graph_resource(path: Path) -> None:
    graph = load_file(path)
    validate_custom(
        {
            "apiVersion": graph.api_version,
            "kind": "AgentGraph",
            "metadata": {"name": graph.metadata.name},
            "spec": graph.to_dict()["spec"],
        }
    )


def test_a_finished_agent_run_with_status_is_valid() -> None:
    run = _run(agent="quickstart", inputs={"question": "why?", "n": [1, 2]})
    run["spec"]["policies"] = {"kvRetention": "continuum"}
    run["status"] = {
        "phase": "Succeeded",
        "runId": "r-1",
        "outputs": {"answer": "because", "turns": 2},
        "startedAt": "2026-11-22T05:00:00Z",
        "finishedAt": "2026-11-22T05:00:09.5+00:00",
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "RunSucceeded"}],
    }
    validate_custom(run)


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        (_run(), "AgentRun nightly: spec: 'agent' is a required property"),
        (
            _run(agent="quickstart", input={}),
            "AgentRun nightly: spec: unknown field 'input'; remove it or check its spelling",
        ),
        (
            _run(agent="quickstart") | {"status": {"phase": "Done"}},
            "AgentRun nightly: status.phase: 'Done' is not one of "
            "Pending, Running, Succeeded, Failed, Cancelled",
        ),
        (
            _run(agent="quickstart") | {"status": {"startedAt": "yesterday"}},
            "AgentRun nightly: status.startedAt: 'yesterday' is not a 'date-time'",
        ),
        (
            _run(agent="quickstart", policies={"scheduling": 3}),
            "AgentRun nightly: spec.policies.scheduling: 3 is not of type 'string', 'null'",
        ),
        (
            _run(agent="quickstart") | {"apiVersion": "hetagent.dev/v1"},
            "AgentRun nightly: apiVersion must be hetagent.dev/v1alpha1, not 'hetagent.dev/v1'",
        ),
        (
            _run(agent="quickstart") | {"metadata": {"name": "Nightly_1"}},
            "AgentRun Nightly_1: metadata.name: 'Nightly_1' is not valid: "
            "a Kubernetes name is lowercase letters, digits, '-' and '.'",
        ),
        (_run(agent="q") | {"kind": "Pod"}, "kind must be one of AgentGraph, AgentRun, DevicePool"),
    ],
    ids=[
        "no-agent",
        "unknown-field",
        "bad-phase",
        "bad-time",
        "bad-policy",
        "bad-version",
        "bad-name",
        "other-kind",
    ],
)
def test_bad_agent_run_is_rejected_with_one_line_naming_the_field(
    resource: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        validate_custom(resource)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_node_missing_its_kind_field_is_named_with_its_type() -> None:
    graph = {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "AgentGraph",
        "metadata": {"name": "g"},
        "spec": {"nodes": [{"name": "plan", "type": "llm", "prompt": "hi"}]},
    }
    with pytest.raises(
        ValueError,
        match=r"^AgentGraph g: spec\.nodes\[0\]: 'model' is a required "
        r"property \(for type 'llm'\)$",
    ):
        validate_custom(graph)
    graph["spec"]["nodes"][0]["type"] = "lm"
    with pytest.raises(ValueError, match=r"spec\.nodes\[0\]\.type: 'lm' is not one of llm, tool"):
        validate_custom(graph)


def test_device_pool_with_no_devices_is_rejected() -> None:
    pool = {
        "apiVersion": "hetagent.dev/v1alpha1",
        "kind": "DevicePool",
        "metadata": {"name": "h100"},
        "spec": {"name": "h100", "device": "h100", "count": 0},
    }
    with pytest.raises(ValueError, match=r"^DevicePool h100: spec\.count: 0 is less than"):
        validate_custom(pool)
