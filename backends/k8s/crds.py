"""The hetagent CustomResourceDefinitions: AgentGraph, AgentRun, DevicePool (hetagent.dev/v1alpha1).

The schemas are generated from the pydantic models of `hetagent.spec`, so a field added to the
spec reaches the CRD without a second definition. Kubernetes requires apiextensions.k8s.io/v1
schemas to be *structural*, which JSON Schema from pydantic is not; `structural` converts it:

- `$ref`s are inlined (no `$ref` or `definitions` in a CRD); titles and defaults are dropped
  (hetagent applies its own defaults when it parses the spec; the resource holds what was
  written);
- `anyOf [X, null]` (an optional field) becomes X with `nullable: true`; `const` becomes `enum`;
  numeric `exclusiveMinimum` becomes `minimum` plus OpenAPI v3.0's boolean `exclusiveMinimum`;
- `additionalProperties: false` is dropped (the API server prunes unknown fields, and kubectl's
  default strict field validation rejects them); `patternProperties` (not supported) becomes
  `additionalProperties`, so map keys are checked by hetagent when it parses the graph;
- the nodes' discriminated union becomes one object with every variant's fields and `type` as
  an enum, plus a `oneOf` of value validations (no types, as structural schemas require) naming
  each variant's required fields; a union of integer and string is `x-kubernetes-int-or-string`,
  other unions and `Any` are `x-kubernetes-preserve-unknown-fields`.

`validate_custom` checks a custom resource against its CRD's schema the way the API server would
with strict field validation (unknown fields rejected), raising a one-line ValueError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match
from pydantic import BaseModel

from hetagent.spec import API_VERSION as SPEC_API_VERSION
from hetagent.spec import AgentGraphSpec, Metadata, Policies, Pool, format_path, shown

GROUP = "hetagent.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
assert API_VERSION == SPEC_API_VERSION, "the CRDs serve the spec's apiVersion"

RUN_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Cancelled")
# The AgentRun policy overrides, as `hetagent run --policy` takes them (placement is the plan's).
RUN_POLICY_KEYS = ("kvRetention", "scheduling", "resources")
# What a name in metadata.name may be (RFC 1123 subdomain), checked as the API server would.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def pool_resource(pool_name: str) -> str:
    """The Ray custom resource that stands for one device of a pool (capacity): worker groups
    advertise it in `rayStartParams`, and the Ray backend asks for it to place an engine on the
    pool. One definition for both, here, so the names always agree."""
    return f"hetagent_pool_{pool_name}"


# --------------------------------------------------------------------------------------------
# JSON Schema (pydantic) -> structural OpenAPI v3 schema


# Keywords kept as they are on scalars and arrays (value validations Kubernetes supports).
_KEPT = ("description", "format", "pattern", "minLength", "maxLength", "minimum", "maximum")
_KEPT += ("minItems", "maxItems", "minProperties", "maxProperties", "multipleOf", "enum")
_PRESERVE = "x-kubernetes-preserve-unknown-fields"
_INT_OR_STRING = "x-kubernetes-int-or-string"


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model (see the module docstring)."""
    schema = model.model_json_schema(mode="validation")
    return _Converter(schema.pop("$defs", {})).convert(schema)


@dataclass
class _Converter:
    defs: Mapping[str, Any]

    def convert(self, node: Mapping[str, Any], inside: tuple[str, ...] = ()) -> dict[str, Any]:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name in inside:
                raise ValueError(f"{name} contains itself: a structural schema cannot recurse")
            here = {k: v for k, v in node.items() if k != "$ref"}  # a field's own description
            return self.convert({**self.defs[name], **here}, (*inside, name))
        branches = node.get("anyOf") or node.get("oneOf")
        if branches:
            return self._union(node, branches, inside)
        kind = node.get("type")
        if kind == "object" or "properties" in node:
            return self._object(node, inside)
        if kind == "array":
            out = {"type": "array", **_kept(node)}
            items = node.get("items")
            out["items"] = self.convert(items, inside) if items else {_PRESERVE: True}
            return out
        if kind is None and "const" not in node:  # Any: whatever was written is kept
            return {_PRESERVE: True, **_kept(node)}
        out = {"type": kind or _json_type(node["const"]), **_kept(node)}
        if "const" in node:
            out["enum"] = [node["const"]]
        for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if bound in node:  # JSON Schema 2020-12's number -> OpenAPI v3.0's boolean
                out[limit] = node[bound]
                out[bound] = True
        return out

    def _object(self, node: Mapping[str, Any], inside: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object", **_kept(node)}
        properties = node.get("properties", {})
        if properties:
            out["properties"] = {k: self.convert(v, inside) for k, v in properties.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
            return out
        # A map: its values' schema, whatever the keys' pattern (patternProperties is not
        # supported in CRDs); values of any type, or a free-form object, keep what was written.
        values = list(node.get("patternProperties", {}).values())
        additional = node.get("additionalProperties", True)
        value = values[0] if len(values) == 1 else additional
        if isinstance(value, Mapping) and value:
            converted = self.convert(value, inside)
            if _PRESERVE not in converted:
                out["additionalProperties"] = converted
                return out
        out[_PRESERVE] = True
        return out

    def _union(
        self, node: Mapping[str, Any], branches: list[Any], inside: tuple[str, ...]
    ) -> dict[str, Any]:
        present = [b for b in branches if b.get("type") != "null"]
        if len(present) == 1:
            out = self.convert(present[0], inside)
        elif all(self._tag_of(b) for b in present):
            out = self._variants(present, inside)
        else:
            types = {self._resolve(b).get("type") for b in present}
            # int-or-string is the one union a structural schema can type; anything else
            # (a number or a string, say) keeps whatever was written.
            out = {_INT_OR_STRING: True} if types == {"integer", "string"} else {_PRESERVE: True}
        if len(present) < len(branches):
            out["nullable"] = True
        if "description" in node:
            out["description"] = node["description"]
        return out

    def _resolve(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        if "$ref" in node:
            return self.defs[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def _tag_of(self, node: Mapping[str, Any]) -> str | None:
        """The discriminator value of a variant: its `type` field's constant."""
        tag = self._resolve(node).get("properties", {}).get("type", {})
        return tag.get("const") if isinstance(tag.get("const"), str) else None

    def _variants(self, branches: list[Any], inside: tuple[str, ...]) -> dict[str, Any]:
        """A discriminated union (on `type`) as one structural object: every variant's fields,
        `type` an enum of the variants, and a oneOf requiring each variant's own fields."""
        variants = [(self._tag_of(b), self.convert(b, inside)) for b in branches]
        properties: dict[str, Any] = {}
        for _, variant in variants:
            for name, field in variant["properties"].items():
                if name != "type":
                    properties[name] = (
                        _common(properties[name], field) if name in properties else field
                    )
        tags = [tag for tag, _ in variants]
        properties = {"type": {"type": "string", "enum": tags}, **properties}
        shared = set.intersection(*(set(v.get("required", ())) for _, v in variants))
        required = [name for name in variants[0][1].get("required", ()) if name in shared]
        one_of = []
        for tag, variant in variants:
            branch: dict[str, Any] = {"properties": {"type": {"enum": [tag]}}}
            own = [name for name in variant.get("required", ()) if name not in shared]
            if own:
                branch["required"] = own
            one_of.append(branch)
        return {"type": "object", "properties": properties, "required": required, "oneOf": one_of}


def _kept(node: Mapping[str, Any]) -> dict[str, Any]:
    return {key: node[key] for key in _KEPT if key in node}


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[type(value)]


def _common(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One schema for a field two variants both have: what both accept (their shared keywords;
    descriptions that differ are dropped)."""
    if a == b:
        return a
    if a.get("type") != b.get("type") or _PRESERVE in a or _PRESERVE in b:
        return {_PRESERVE: True}
    out = {key: value for key, value in a.items() if b.get(key) == value}
    if "properties" in a and "properties" in b:
        names = dict.fromkeys([*a["properties"], *b["properties"]])
        out["properties"] = {
            n: _common(a["properties"][n], b["properties"][n])
            if n in a["properties"] and n in b["properties"]
            else a["properties"].get(n) or b["properties"][n]
            for n in names
        }
    if a.get("nullable") or b.get("nullable"):
        out["nullable"] = True
    return out


# --------------------------------------------------------------------------------------------
# The three kinds


def _conditions() -> dict[str, Any]:
    """`status.conditions` as Kubernetes conventions have them (metav1.Condition's fields)."""
    return {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status"],
            "properties": {
                "type": {"type": "string"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "observedGeneration": {"type": "integer", "minimum": 0},
            },
        },
    }


def _agent_graph_spec() -> dict[str, Any]:
    return structural(AgentGraphSpec)


def _device_pool_spec() -> dict[str, Any]:
    return structural(Pool)


def _agent_run_spec() -> dict[str, Any]:
    policies = structural(Policies)
    policies["properties"] = {k: policies["properties"][k] for k in RUN_POLICY_KEYS}
    policies["description"] = "Policy overrides for this run (names from hetagent.policies)."
    agent = structural(Metadata)["properties"]["name"]
    agent["description"] = "The name of an AgentGraph in the same namespace."
    return {
        "type": "object",
        "required": ["agent"],
        "properties": {
            "agent": agent,
            "inputs": {
                "type": "object",
                _PRESERVE: True,
                "description": "The run's inputs, by the agent's input names.",
            },
            "policies": policies,
        },
    }


def _agent_run_status() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "phase": {"type": "string", "enum": list(RUN_PHASES)},
            "runId": {"type": "string", "description": "The run's id in hetagent's run store."},
            "outputs": {"type": "object", _PRESERVE: True},
            "message": {"type": "string"},
            "startedAt": {"type": "string", "format": "date-time"},
            "finishedAt": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "minimum": 0},
            "conditions": _conditions(),
        },
    }


def _plain_status() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "minimum": 0},
            "message": {"type": "string"},
            "conditions": _conditions(),
        },
    }


def _column(name: str, path: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, "jsonPath": path, **extra}


_AGE = _column("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class Kind:
    """One custom resource kind: its names, schema parts and printer columns."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec: Any  # () -> the spec's schema (built on first use: it walks pydantic models)
    status: Any  # () -> the status's schema
    columns: tuple[dict[str, Any], ...]

    @property
    def singular(self) -> str:
        return self.kind.lower()


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind(
            "AgentGraph",
            "agentgraphs",
            ("ag",),
            "An agent: a graph of LLM calls, tools, retrieval and data steps (hetagent.spec).",
            _agent_graph_spec,
            _plain_status,
            (
                _column("SLO", ".spec.slo.p95LatencySeconds", "number", description="p95 s"),
                _column("Rate", ".spec.traffic.arrivalRatePerSecond", "number"),
                _AGE,
            ),
        ),
        Kind(
            "AgentRun",
            "agentruns",
            ("ar",),
            "One run of an AgentGraph: its inputs in spec, its phase and outputs in status.",
            _agent_run_spec,
            _agent_run_status,
            (
                _column("Agent", ".spec.agent"),
                _column("Phase", ".status.phase"),
                _column("RunId", ".status.runId"),
                _AGE,
            ),
        ),
        Kind(
            "DevicePool",
            "devicepools",
            ("dp",),
            "A pool of identical devices of a hetagent Cluster (one of its spec.pools).",
            _device_pool_spec,
            _plain_status,
            (
                _column("Device", ".spec.device"),
                _column("Count", ".spec.count", "integer"),
                _column("Ownership", ".spec.ownership", priority=1),
                _AGE,
            ),
        ),
    )
}


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {shown(kind)}; hetagent's kinds: {', '.join(KINDS)}")
    return KINDS[kind]


@cache
def _schema(kind: str) -> dict[str, Any]:
    k = _kind(kind)
    return {
        "type": "object",
        "description": k.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": k.spec(),
            "status": k.status(),
        },
    }


def crd(kind: str) -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of a hetagent kind (namespaced)."""
    k = _kind(kind)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{k.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": k.kind,
                "listKind": f"{k.kind}List",
                "plural": k.plural,
                "singular": k.singular,
                "shortNames": list(k.short_names),
                "categories": ["hetagent"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    # A copy without shared parts, so YAML has no anchors and callers may edit it.
                    "schema": {"openAPIV3Schema": json.loads(json.dumps(_schema(kind)))},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in k.columns],
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    """Every hetagent CRD, AgentGraph, AgentRun, DevicePool."""
    return [crd(kind) for kind in KINDS]


# --------------------------------------------------------------------------------------------
# Validating custom resources


def _json_schema(node: Any) -> Any:
    """An OpenAPI v3.0 schema of a CRD as JSON Schema draft 4 (whose boolean exclusive bounds
    it shares): nullable and int-or-string as type lists, unknown fields rejected where the
    schema does not preserve them (kubectl's default strict field validation)."""
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: _json_schema(v) for name, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _json_schema(value)
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [_json_schema(v) for v in value]
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = value
    if node.get(_INT_OR_STRING):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if out.get("type") == "object" and "properties" in out and not node.get(_PRESERVE):
        out.setdefault("additionalProperties", False)
    return out


def _date_time(value: object) -> bool:
    """RFC 3339 date-time, as Kubernetes writes timestamps (2026-01-02T03:04:05Z)."""
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", value):
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(_date_time)


@cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    schema = _json_schema(_schema(kind))
    # What the API server checks of every object's metadata, besides the CRD's schema.
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {
                "type": "string",
                "maxLength": 253,
                "pattern": DNS_SUBDOMAIN,
                "description": "a Kubernetes name is lowercase letters, digits, '-' and '.'",
            },
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return jsonschema.Draft4Validator(schema, format_checker=_FORMATS)


def _explain(error: ValidationError) -> str:
    """One line: where (spec.nodes[2]) and what is wrong, the user's values shortened."""
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = set(error.schema.get("properties", {}))
        extra = [key for key in error.instance if key not in known]
        message = f"unknown field {shown(extra[0])}; remove it or check its spelling"
    elif error.validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value if v is not None)
        message = f"{shown(error.instance)} is not one of {allowed}"
    elif error.validator == "pattern" and error.schema.get("description"):
        message = f"{shown(error.instance)} is not valid: {error.schema['description']}"
    elif error.validator in ("oneOf", "anyOf"):
        message = "matches none of the allowed shapes"
    else:
        message = " ".join(error.message.split())
        message = message if len(message) <= 200 else message[:197] + "..."
    path = format_path(error.absolute_path)
    return f"{path}: {message}" if path else message


def _most_useful(errors: Iterator[ValidationError]) -> ValidationError | None:
    """The error to show: a plain one (a wrong `type` enum, say) before a union that failed;
    for a union of variants (nodes), the error of the variant whose `type` the object has."""
    found = list(errors)
    plain = [e for e in found if e.validator not in ("oneOf", "anyOf")]
    if plain or not found:
        return best_match(plain)
    union = found[0]
    by_branch: dict[Any, list[ValidationError]] = {}
    for error in union.context or ():
        by_branch.setdefault(error.relative_schema_path[0], []).append(error)
    for branch in by_branch.values():
        if not any(list(e.relative_path) == ["type"] for e in branch):
            tag = union.instance.get("type") if isinstance(union.instance, Mapping) else None
            chosen = best_match(branch)
            if chosen is not None and tag is not None:
                chosen.message += f" (for type {tag!r})"
            return chosen
    return union


def validate_custom(obj: Any) -> None:
    """Check a hetagent custom resource against its CRD's schema (unknown fields rejected, as
    kubectl's strict field validation does); raise ValueError with one line naming what to fix:
    `AgentRun nightly: spec.agent: 'agent' is a required property`."""
    if not isinstance(obj, Mapping):
        raise ValueError(
            "a custom resource must be a mapping with apiVersion, kind, metadata, spec"
        )
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {shown(kind)}")
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    label = f"{kind} {name}" if isinstance(name, str) else kind
    if obj.get("apiVersion") != API_VERSION:
        raise ValueError(
            f"{label}: apiVersion must be {API_VERSION}, not {shown(obj.get('apiVersion'))}"
        )
    error = _most_useful(_validator(kind).iter_errors(obj))
    if error is not None:
        raise ValueError(f"{label}: {_explain(error)}")
