"""The declarative documents hetagent reads: `AgentGraph` and `Cluster`.

Kubernetes-style envelopes (`apiVersion`, `kind`, `metadata`, `spec`), camelCase keys, unknown keys
rejected. Validation runs in two stages so that every problem is reported with its path:
structure (pydantic) and then meaning (`check_agent_graph`, `check_cluster`: references resolve,
names are unique, the graph is acyclic, models and devices exist in the catalog).
`parse_document` runs both and raises `SpecError` listing every problem.

This module is a leaf: the catalog is passed in (see `KnownIds`), never imported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Literal, Protocol, get_args

import networkx as nx
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

API_VERSION = "hetagent.dev/v1alpha1"

# --------------------------------------------------------------------------------------------
# Errors


Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Issue:
    """One problem in a document: where (`spec.nodes[2].maxTokens`) and what to fix.

    `key` means the problem is the mapping key that ends `loc`: the path then names the mapping
    (the key is not a path anyone could follow) while `loc` still leads to the key's line.
    `line` is set when the text itself is wrong (YAML syntax), so there is no path.
    """

    loc: Loc
    message: str
    line: int | None = None
    key: bool = False

    @property
    def path(self) -> str:
        return format_path(self.loc[:-1] if self.key else self.loc)

    def __str__(self) -> str:
        where = self.path or (f"line {self.line}" if self.line else "")
        return f"{where}: {self.message}" if where else self.message


class SpecError(ValueError):
    """A document is invalid; `issues` lists every problem found, each with its path."""

    def __init__(self, issues: Iterable[Issue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def shown(value: Any, limit: int = 60) -> str:
    """A user's value in a message: repr (one line, control characters escaped), shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PLAIN_KEY = re.compile(r"[^\s\[\]'\"]+")


def format_path(loc: Iterable[Any]) -> str:
    """`('spec', 'nodes', 2, 'maxTokens')` -> `spec.nodes[2].maxTokens`.

    Keys that would garble the path or break the line (spaces, control characters, non-strings
    in free-form data such as `args`) are written as `[repr]`.
    """
    out = ""
    for part in loc:
        if isinstance(part, str) and _PLAIN_KEY.fullmatch(part) and part.isprintable():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


# --------------------------------------------------------------------------------------------
# Shared pieces


class SpecModel(BaseModel):
    """Base of every document model: camelCase keys only, unknown keys rejected, and values
    typed as the JSON Schema says (strict: `true` or `"8"` is no integer, though an integer is
    a number), with no infinities or NaNs."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=False,
        validate_by_alias=True,
        serialize_by_alias=True,
        strict=True,
        allow_inf_nan=False,
    )


def _raise_at(problems: Iterable[tuple[Loc, str]]) -> None:
    """Raise the rule violations a model validator found, each at the field it concerns (a plain
    ValueError would point at the whole object); pydantic prefixes the object's location."""
    errors = [
        InitErrorDetails(type=PydanticCustomError("rule", message), loc=loc, input=None)
        for loc, message in problems
    ]
    if errors:
        raise ValidationError.from_exception_data("rule", errors)


# A name's pattern -> what a user is told when a name does not match it.
PATTERN_HINTS: dict[str, str] = {}


def _named_string(pattern: str, hint: str) -> Any:
    PATTERN_HINTS[pattern] = hint
    return Annotated[str, StringConstraints(pattern=pattern), Field(description=hint)]


Name = _named_string(
    r"^[A-Za-z][A-Za-z0-9_-]{0,62}$",
    "a name starts with a letter, then letters, digits, '_' or '-' (at most 63)",
)
KebabName = _named_string(
    r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$",
    "a name is lowercase letters, digits, '-' and '.' (at most 63), like program-fcfs",
)
ToolName = _named_string(
    r"^([a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
    "a tool is a built-in (shell, python, files.read) or a Python function as module:function",
)
PositiveFloat = Annotated[float, Field(gt=0)]

# Anchored for the JSON Schema, whose patterns search; ASCII digits only (`\d` takes any script).
_MEMORY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|k)?\s*$")
_MEMORY_UNITS = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
MAX_MEMORY_BYTES = 2**63 - 1  # what cgroups and rlimits take
_CPU_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)(m?)\s*$")


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity (`512Mi`, `2G`, `1048576`) in bytes (exact: no float)."""
    if isinstance(quantity, int) and not isinstance(quantity, bool):
        return quantity
    match = _MEMORY_RE.fullmatch(quantity) if isinstance(quantity, str) else None
    if not match:
        raise ValueError(f"memory {shown(quantity)} is not a quantity such as 512Mi, 2Gi or 1G")
    return int(Fraction(match.group(1)) * _MEMORY_UNITS[match.group(2)])


def cpu_cores(quantity: str | float) -> float:
    """A Kubernetes CPU quantity (`2`, `0.5`, `500m`) in cores; always finite."""
    cores = None
    if isinstance(quantity, int | float) and not isinstance(quantity, bool):
        cores = float(quantity)
    elif isinstance(quantity, str) and (match := _CPU_RE.fullmatch(quantity)):
        cores = float(match.group(1)) / (1000 if match.group(2) else 1)
    if cores is None or not math.isfinite(cores):
        raise ValueError(f"cpu {shown(quantity)} is not a quantity such as 2, 0.5 or 500m")
    return cores


def _memory_quantity(value: Any) -> Any:
    if not 0 < memory_bytes(value) <= MAX_MEMORY_BYTES:
        raise ValueError(f"memory {shown(value)} is not between 1 byte and 8 EiB")
    return value


def _cpu_quantity(value: Any) -> Any:
    if cpu_cores(value) <= 0:
        raise ValueError(f"cpu {shown(value)} is not a positive quantity such as 2, 0.5 or 500m")
    return value


# One validator for the whole field, so a bad value is one issue at `memory` or `cpu` (a union
# of str and number would report a failure per member). The value stays as written.
MemoryQuantity = Annotated[
    str | int,
    PlainValidator(
        _memory_quantity,
        json_schema_input_type=Annotated[str, StringConstraints(pattern=_MEMORY_RE.pattern)]
        | Annotated[int, Field(gt=0)],
    ),
]
CpuQuantity = Annotated[
    str | int | float,
    PlainValidator(
        _cpu_quantity,
        json_schema_input_type=Annotated[str, StringConstraints(pattern=_CPU_RE.pattern)]
        | Annotated[float, Field(gt=0)],
    ),
]


class ResourceHints(SpecModel):
    """What one tool call is expected to need; the grant broker sizes its limits from these."""

    memory: MemoryQuantity | None = Field(
        None, description="Memory quantity (512Mi, 2Gi, or bytes)."
    )
    cpu: CpuQuantity | None = Field(None, description="CPU cores (2, 0.5 or 500m).")


class Retry(SpecModel):
    """Retry a failed step with exponential backoff."""

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    backoff_seconds: Annotated[float, Field(ge=0)] = 1.0
    backoff_multiplier: Annotated[float, Field(ge=1)] = 2.0


class Metadata(SpecModel):
    name: KebabName
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# References: ${inputs.x} and ${nodes.a.outputs.text}; `$${` is a literal `${`.

# A `${` without its `}` matches too (up to the end), so that it is reported as malformed.
_PLACEHOLDER_RE = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")
_INPUT_REF_RE = re.compile(r"^\s*inputs\.([A-Za-z][A-Za-z0-9_-]*)\s*$")
_NODE_REF_RE = re.compile(
    r"^\s*nodes\.([A-Za-z][A-Za-z0-9_-]*)\.outputs\.([A-Za-z][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_-]+)*)\s*$"
)


@dataclass(frozen=True)
class Reference:
    """A parsed `${...}` placeholder: `scope` is "inputs" or "nodes"."""

    scope: Literal["inputs", "nodes"]
    name: str
    output: str | None = None
    field_path: tuple[str, ...] = ()


def parse_references(text: str) -> Iterator[Reference | str]:
    """Yield each reference in `text`; a malformed `${...}` is yielded as its raw text."""
    for match in _PLACEHOLDER_RE.finditer(text):
        if match.group(0) == "$${":
            continue
        body = match.group(1)
        if not match.group(2):
            yield match.group(0)
        elif m := _INPUT_REF_RE.match(body):
            yield Reference("inputs", m.group(1))
        elif m := _NODE_REF_RE.match(body):
            fields = tuple(p for p in m.group(3).split(".") if p)
            yield Reference("nodes", m.group(1), m.group(2), fields)
        else:
            yield match.group(0)


def _strings(value: Any, path: Loc) -> Iterator[tuple[Loc, str]]:
    """Every string inside a value (nested lists and dicts), with its location."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


# --------------------------------------------------------------------------------------------
# AgentGraph nodes


class BaseNode(SpecModel):
    """Fields every node has."""

    # The outputs a node exposes to `${nodes.<name>.outputs.<output>}`.
    outputs: ClassVar[frozenset[str]] = frozenset({"text"})
    # Outputs whose value is structured, so a reference may continue into it (`.value.tables`).
    structured_outputs: ClassVar[frozenset[str]] = frozenset()

    name: Name
    type: str  # each node kind narrows it to its literal; declared here to come second in YAML
    description: str | None = None
    depends_on: list[Name] = Field(
        default_factory=list, description="Nodes that must finish first (besides referenced ones)."
    )
    retry: Retry | None = None
    timeout_seconds: PositiveFloat | None = None

    def templated_fields(self) -> Iterator[tuple[Loc, str]]:
        """Every string field that may hold references, with its location (aliases)."""
        data = self.model_dump(by_alias=True, exclude={"name", "type", "description", "depends_on"})
        yield from _strings(data, ())


class Message(SpecModel):
    role: Literal["system", "user", "assistant"]
    content: str


class LlmNode(BaseNode):
    """One LLM call: lowered to tokenize -> prefill -> decode -> detokenize."""

    type: Literal["llm"]
    model: Name = Field(description="A key of spec.models.")
    prompt: str | None = Field(None, description="The user message (or use messages).")
    messages: Annotated[list[Message], Field(min_length=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    expected_input_tokens: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Planner hint; estimated from the prompt when absent."
    )
    expected_output_tokens: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Planner hint; defaults to maxTokens."
    )

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> LlmNode:
        if self.prompt is None and self.messages is None:
            raise ValueError("give prompt or messages")
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give prompt or messages, not both")
        _raise_at(_output_tokens_within_max(self))
        return self


def _output_tokens_within_max(node: LlmNode | AgentNode) -> list[tuple[Loc, str]]:
    if node.expected_output_tokens and node.expected_output_tokens > node.max_tokens:
        return [(("expectedOutputTokens",), "expectedOutputTokens cannot exceed maxTokens")]
    return []


class ToolNode(BaseNode):
    """One tool call (a built-in such as `shell`, or a Python tool `module:function`)."""

    outputs: ClassVar[frozenset[str]] = frozenset({"text", "stdout", "stderr", "exitCode", "value"})
    structured_outputs: ClassVar[frozenset[str]] = frozenset({"value"})

    type: Literal["tool"]
    tool: ToolName
    args: dict[str, Any] = Field(default_factory=dict)
    resources: ResourceHints | None = None
    expected_duration_seconds: Annotated[float, Field(ge=0)] | None = Field(
        None, description="Planner hint; learned from the tool's history when absent."
    )


class RetrieveNode(BaseNode):
    """Vector search over an index: lowered to embed -> search."""

    outputs: ClassVar[frozenset[str]] = frozenset({"text", "documents"})
    structured_outputs: ClassVar[frozenset[str]] = frozenset({"documents"})

    type: Literal["retrieve"]
    index: Name = Field(description="A key of spec.indexes.")
    query: str
    k: Annotated[int, Field(ge=1, le=1000)] = 4


class Parse(SpecModel):
    """Parse a text into structured data."""

    input: str = Field(description="The text to parse, usually a reference.")
    format: Literal["json", "regex", "lines"]
    pattern: str | None = Field(None, description="For format regex: named groups become fields.")

    @model_validator(mode="after")
    def _pattern_matches_format(self) -> Parse:
        problem = None
        if self.format != "regex":
            if self.pattern is not None:
                problem = f"pattern applies only to format regex, not {self.format}"
        elif not self.pattern:
            problem = "format regex needs a pattern"
        else:
            try:
                re.compile(self.pattern)
            except (re.error, OverflowError, RecursionError) as err:
                problem = f"pattern is not a valid regular expression: {err}"
        _raise_at([(("pattern",), problem)] if problem else [])
        return self


class TransformNode(BaseNode):
    """A data step: render a template, or parse text into structured data."""

    outputs: ClassVar[frozenset[str]] = frozenset({"text", "value"})
    structured_outputs: ClassVar[frozenset[str]] = frozenset({"value"})

    type: Literal["transform"]
    template: str | None = None
    parse: Parse | None = None

    @model_validator(mode="after")
    def _template_or_parse(self) -> TransformNode:
        if self.template is None and self.parse is None:
            raise ValueError("give template or parse")
        if self.template is not None and self.parse is not None:
            raise ValueError("give template or parse, not both")
        return self


class AgentNode(BaseNode):
    """A ReAct loop: the model picks a tool or answers, until it answers or maxTurns is reached."""

    outputs: ClassVar[frozenset[str]] = frozenset({"text", "turns"})

    type: Literal["agent"]
    model: Name = Field(description="A key of spec.models.")
    instructions: str = Field(description="The system prompt of the loop.")
    prompt: str = Field(description="The task the loop starts from.")
    tools: list[ToolName] = Field(min_length=1)
    max_turns: Annotated[int, Field(ge=1, le=1000)] = 10
    expected_turns: Annotated[float, Field(ge=1)] | None = Field(
        None, description="Planner hint: mean number of turns."
    )
    p95_turns: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Planner hint: loops are unrolled to this many turns for the SLA."
    )
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 512
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    expected_input_tokens: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Planner hint: prompt tokens of one turn."
    )
    expected_output_tokens: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Planner hint: generated tokens of one turn."
    )
    expected_tool_seconds: dict[ToolName, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="Planner hint: expected duration of each tool's call."
    )
    resources: ResourceHints | None = Field(None, description="Hints for every tool call.")
    tool_resources: dict[ToolName, ResourceHints] = Field(
        default_factory=dict, description="Hints for one tool's calls; override resources."
    )

    @model_validator(mode="after")
    def _consistent(self) -> AgentNode:
        problems: list[tuple[Loc, str]] = []
        if self.p95_turns is not None and self.p95_turns > self.max_turns:
            problems.append((("p95Turns",), "p95Turns cannot exceed maxTurns"))
        if self.expected_turns is not None and self.expected_turns > (
            self.p95_turns or self.max_turns
        ):
            problems.append(
                (("expectedTurns",), "expectedTurns cannot exceed p95Turns (or maxTurns)")
            )
        for i, tool in enumerate(self.tools):
            if tool in self.tools[:i]:
                problems.append((("tools", i), f"{tool!r} is listed twice"))
        for field, named in (
            ("expectedToolSeconds", self.expected_tool_seconds),
            ("toolResources", self.tool_resources),
        ):
            for tool in named:
                if tool not in self.tools:
                    problems.append(((field, tool), f"{shown(tool)} is not in tools"))
        _raise_at(problems + _output_tokens_within_max(self))
        return self


class SubgraphNode(BaseNode):
    """Another AgentGraph file run as one step; its declared outputs are this node's outputs."""

    outputs: ClassVar[frozenset[str]] = frozenset()  # those of the referenced graph

    type: Literal["subgraph"]
    ref: str = Field(description="Path of the AgentGraph YAML, relative to this file.")
    inputs: dict[Name, Any] = Field(default_factory=dict)


NodeKind = LlmNode | ToolNode | RetrieveNode | TransformNode | AgentNode | SubgraphNode
Node = Annotated[NodeKind, Field(discriminator="type")]
NODE_TYPES = frozenset(
    type_ for kind in get_args(NodeKind) for type_ in get_args(kind.model_fields["type"].annotation)
)


# --------------------------------------------------------------------------------------------
# AgentGraph spec


class Input(SpecModel):
    type: Literal["string", "integer", "number", "boolean", "object", "array"] = "string"
    description: str | None = None
    default: Any = Field(None, description="Makes the input optional.")

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set

    @model_validator(mode="after")
    def _default_has_type(self) -> Input:
        python_types = {
            "string": str, "integer": int, "number": int | float, "boolean": bool,
            "object": dict, "array": list,
        }  # fmt: skip
        value = self.default
        if value is not None and (
            not isinstance(value, python_types[self.type])
            or isinstance(value, bool) != (self.type == "boolean")
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            _raise_at([(("default",), f"default {shown(value)} is not of type {self.type}")])
        return self


class Weights(SpecModel):
    """Where the engine finds a model's weights."""

    format: Literal["gguf", "safetensors", "dummy"]
    path: str | None = Field(
        None, description="File or directory; when absent, the model cache (hetagent models pull)."
    )

    @model_validator(mode="after")
    def _dummy_has_no_path(self) -> Weights:
        if self.format == "dummy" and self.path is not None:
            raise ValueError("dummy weights are random: remove path")
        return self


class ModelRef(SpecModel):
    id: str = Field(description="A model id of the planner's catalog (e.g. llama-3.1-8b).")
    weights: Weights | None = None


class Index(SpecModel):
    """A vector index built from documents."""

    documents: str = Field(description="A file, directory or glob, relative to this file.")
    embedding_model: Name = Field(description="A key of spec.models (an encoder).")
    chunk_tokens: Annotated[int, Field(ge=16, le=8192)] = 256


class Slo(SpecModel):
    p95_latency_seconds: PositiveFloat | None = Field(None, description="End to end, per run.")
    ttft_seconds: PositiveFloat | None = Field(None, description="Time to first token, per call.")
    tpot_seconds: PositiveFloat | None = Field(None, description="Time per output token.")


class Traffic(SpecModel):
    arrival_rate_per_second: Annotated[float, Field(ge=0)] = 1.0
    burstiness: Annotated[float, Field(ge=0)] = Field(
        1.0, description="Coefficient of variation of inter-arrival times (1 = Poisson)."
    )


class Policies(SpecModel):
    """Names of the policies in hetagent.policies; the runtime resolves them."""

    kv_retention: KebabName | None = None
    scheduling: KebabName | None = None
    placement: KebabName | None = None
    resources: KebabName | None = None


class AgentGraphSpec(SpecModel):
    inputs: dict[Name, Input] = Field(default_factory=dict)
    outputs: dict[Name, str] = Field(default_factory=dict)
    models: dict[Name, ModelRef] = Field(default_factory=dict)
    indexes: dict[Name, Index] = Field(default_factory=dict)
    slo: Slo | None = None
    traffic: Traffic | None = None
    policies: Policies | None = None
    nodes: list[Node] = Field(min_length=1)


class Document(SpecModel):
    """A Kubernetes-style envelope; subclasses fix `kind` and `spec`."""

    api_version: Literal["hetagent.dev/v1alpha1"]
    kind: str
    metadata: Metadata

    def to_dict(self) -> dict[str, Any]:
        """The document as YAML/JSON data: exactly the keys it was given (an explicit value equal
        to the default still means something: `default: null` makes an input optional)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    @classmethod
    def from_yaml(cls, text: str, *, known: KnownIds | None = None) -> Any:
        document = parse_document(load_yaml(text), known=known)
        if not isinstance(document, cls):
            raise SpecError(
                [Issue(("kind",), f"expected kind {cls.__name__}, got {document.kind}")]
            )
        return document


class AgentGraph(Document):
    kind: Literal["AgentGraph"]
    spec: AgentGraphSpec
    # The graphs of `subgraph` nodes by node name, filled when the graph is loaded from a file.
    _subgraphs: dict[str, AgentGraph] = PrivateAttr(default_factory=dict)

    @property
    def subgraphs(self) -> dict[str, AgentGraph]:
        return self._subgraphs

    def __eq__(self, other: object) -> bool:
        """Equal documents are equal graphs: the resolved subgraphs are not part of the text."""
        if not isinstance(other, AgentGraph):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def node(self, name: str) -> Node:
        for node in self.spec.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def dependencies(self, node: BaseNode) -> list[str]:
        """Explicit `dependsOn` plus every node the node references, in first-seen order."""
        deps = dict.fromkeys(node.depends_on)
        for _, text in node.templated_fields():
            for ref in parse_references(text):
                if isinstance(ref, Reference) and ref.scope == "nodes":
                    deps[ref.name] = None
        return list(deps)

    def templated_strings(self) -> Iterator[tuple[Loc, str, str | None]]:
        """Every string that may hold references: (location, text, the node that owns it)."""
        for i, node in enumerate(self.spec.nodes):
            for loc, text in node.templated_fields():
                yield ("spec", "nodes", i, *loc), text, node.name
        for name, text in self.spec.outputs.items():
            yield ("spec", "outputs", name), text, None

    def dag(self) -> nx.DiGraph:
        """The step graph: an edge a -> b when b depends on a (explicitly or by reference)."""
        graph = nx.DiGraph()
        for node in self.spec.nodes:
            graph.add_node(node.name, node=node)
        for node in self.spec.nodes:
            for dep in self.dependencies(node):
                if dep in graph:
                    graph.add_edge(dep, node.name)
        return graph


# --------------------------------------------------------------------------------------------
# Cluster


class Pool(SpecModel):
    """Identical devices of one type that operators can be placed on."""

    name: Name
    device: str = Field(description="A device id of the planner's catalog (e.g. h100).")
    count: Annotated[int, Field(ge=1, le=1_000_000)]
    ownership: Literal["rented", "owned"] = "rented"
    price_per_hour: Annotated[float, Field(ge=0)] | None = Field(
        None, description="$ per device-hour; overrides the catalog's cost for this pool."
    )
    purchase_price: Annotated[float, Field(ge=0)] | None = Field(
        None, description="$ per device, for owned pools; overrides the catalog's price."
    )


class LinkSpeed(SpecModel):
    bandwidth_gb_per_second: PositiveFloat = Field(alias="bandwidthGBps")
    latency_microseconds: Annotated[float, Field(ge=0)] = 10.0


class Link(LinkSpeed):
    """The network between two pools (both directions)."""

    pools: Annotated[list[Name], Field(min_length=2, max_length=2)]


class Energy(SpecModel):
    price_per_kwh: Annotated[float, Field(ge=0)] = Field(0.08, alias="pricePerKWh")
    pue: Annotated[float, Field(ge=1, le=5)] = 1.3
    utilization: Annotated[float, Field(ge=0, le=1)] = Field(
        1.0, description="Fraction of TDP drawn on average."
    )


class Amortization(SpecModel):
    years: Annotated[float, Field(gt=0, le=30)] = 4.0
    rate: Annotated[float, Field(ge=0, le=1)] = Field(0.08, description="Yearly interest rate.")


class ClusterSpec(SpecModel):
    pools: list[Pool] = Field(min_length=1)
    links: list[Link] = Field(default_factory=list)
    default_link: LinkSpeed | None = Field(None, description="For pairs of pools without a link.")
    energy: Energy = Field(default_factory=Energy)
    amortization: Amortization = Field(default_factory=Amortization)


class Cluster(Document):
    kind: Literal["Cluster"]
    spec: ClusterSpec

    def pool(self, name: str) -> Pool:
        for pool in self.spec.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


KINDS: dict[str, type[Document]] = {"AgentGraph": AgentGraph, "Cluster": Cluster}


# --------------------------------------------------------------------------------------------
# Meaning: what structure alone cannot check


class DeviceFacts(Protocol):
    rent_usd_per_hour: float | None
    purchase_usd: float | None


@dataclass(frozen=True)
class KnownIds:
    """What exists outside the document: the catalog's models and devices."""

    models: Mapping[str, Any]
    devices: Mapping[str, DeviceFacts]


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    names = sorted(known)
    listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"unknown {kind} {shown(name)}; known: {listed or '(none)'}"


def check_agent_graph(graph: AgentGraph, known: KnownIds | None = None) -> list[Issue]:
    """Every semantic problem of an AgentGraph, each with its path."""
    spec = graph.spec
    issues: list[Issue] = []

    def issue(loc: Loc, message: str) -> None:
        issues.append(Issue(loc, message))

    if known is not None:
        for key, model in spec.models.items():
            if model.id not in known.models:
                issue(("spec", "models", key, "id"), _unknown("model", model.id, known.models))

    def model_kind(key: str) -> str | None:
        """The catalog's kind of a declared model (decoder, encoder, ...), when known."""
        if known is None or key not in spec.models or spec.models[key].id not in known.models:
            return None
        return getattr(known.models[spec.models[key].id], "kind", None)

    for key, index in spec.indexes.items():
        if index.embedding_model not in spec.models:
            issue(
                ("spec", "indexes", key, "embeddingModel"),
                _unknown("model", index.embedding_model, spec.models),
            )
        elif model_kind(index.embedding_model) not in (None, "encoder"):
            issue(
                ("spec", "indexes", key, "embeddingModel"),
                f"{index.embedding_model} is not an embedding (encoder) model",
            )

    nodes_by_name: dict[str, BaseNode] = {}
    for i, node in enumerate(spec.nodes):
        if node.name in nodes_by_name:
            issue(("spec", "nodes", i, "name"), f"duplicate node name {node.name!r}")
        nodes_by_name.setdefault(node.name, node)

    def check_text(loc: Loc, text: str, owner: str | None) -> None:
        for ref in parse_references(text):
            if isinstance(ref, str):
                issue(
                    loc,
                    f"malformed reference {shown(ref)}; use ${{inputs.NAME}} or "
                    "${nodes.NAME.outputs.OUTPUT} (write $${ for a literal ${)",
                )
            elif ref.scope == "inputs":
                if ref.name not in spec.inputs:
                    issue(loc, _unknown("input", ref.name, spec.inputs))
            elif ref.name not in nodes_by_name:
                issue(loc, _unknown("node", ref.name, nodes_by_name))
            elif ref.name == owner:
                issue(loc, f"node {owner!r} references its own output")
            else:
                target = nodes_by_name[ref.name]
                if isinstance(target, SubgraphNode):
                    continue  # outputs of the referenced file, checked when it is loaded
                if ref.output not in target.outputs:
                    issue(
                        loc,
                        f"node {ref.name!r} ({target.type}) has no output {ref.output!r}; "
                        f"it has: {', '.join(sorted(target.outputs))}",
                    )
                elif ref.field_path and ref.output not in target.structured_outputs:
                    issue(
                        loc,
                        f"output {ref.output!r} of {ref.name!r} is text; "
                        "only structured outputs take a field path",
                    )

    for i, node in enumerate(spec.nodes):
        for j, dep in enumerate(node.depends_on):
            if dep not in nodes_by_name:
                issue(("spec", "nodes", i, "dependsOn", j), _unknown("node", dep, nodes_by_name))
            elif dep == node.name:
                issue(("spec", "nodes", i, "dependsOn", j), "a node cannot depend on itself")
        if isinstance(node, LlmNode | AgentNode) and node.model not in spec.models:
            issue(("spec", "nodes", i, "model"), _unknown("model", node.model, spec.models))
        elif isinstance(node, LlmNode | AgentNode) and model_kind(node.model) == "encoder":
            issue(
                ("spec", "nodes", i, "model"),
                f"{node.model} is an embedding model; use a generative one",
            )
        if isinstance(node, RetrieveNode) and node.index not in spec.indexes:
            issue(("spec", "nodes", i, "index"), _unknown("index", node.index, spec.indexes))
    for loc, text, owner in graph.templated_strings():
        check_text(loc, text, owner)

    dag = graph.dag()
    dag.remove_edges_from(list(nx.selfloop_edges(dag)))  # reported above, not as a cycle
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        pass
    else:
        names = [edge[0] for edge in cycle] + [cycle[0][0]]
        first = next(i for i, n in enumerate(spec.nodes) if n.name == cycle[0][1])
        issue(
            ("spec", "nodes", first),
            "the graph has a cycle: " + " -> ".join(names) + " (loops belong inside an agent node)",
        )
    return issues


def check_cluster(cluster: Cluster, known: KnownIds | None = None) -> list[Issue]:
    """Every semantic problem of a Cluster, each with its path."""
    spec = cluster.spec
    issues: list[Issue] = []

    def issue(loc: Loc, message: str) -> None:
        issues.append(Issue(("spec", *loc), message))

    names: set[str] = set()
    for i, pool in enumerate(spec.pools):
        if pool.name in names:
            issue(("pools", i, "name"), f"duplicate pool name {pool.name!r}")
        names.add(pool.name)
        if pool.ownership == "rented" and pool.purchase_price is not None:
            issue(("pools", i, "purchasePrice"), "purchasePrice applies to owned pools only")
        if known is None:
            continue
        device = known.devices.get(pool.device)
        if device is None:
            issue(("pools", i, "device"), _unknown("device", pool.device, known.devices))
        elif pool.price_per_hour is None:
            if pool.ownership == "rented" and device.rent_usd_per_hour is None:
                issue(
                    ("pools", i, "pricePerHour"),
                    f"the catalog has no rental price for {pool.device}; set pricePerHour",
                )
            if (
                pool.ownership == "owned"
                and pool.purchase_price is None
                and device.purchase_usd is None
            ):
                issue(
                    ("pools", i, "purchasePrice"),
                    f"the catalog has no purchase price for {pool.device}; set purchasePrice",
                )
    pairs: set[frozenset[str]] = set()
    for i, link in enumerate(spec.links):
        for j, name in enumerate(link.pools):
            if name not in names:
                issue(("links", i, "pools", j), _unknown("pool", name, names))
        pair = frozenset(link.pools)
        if len(pair) == 1:
            issue(("links", i, "pools"), "a link joins two different pools")
        elif pair in pairs:
            issue(("links", i, "pools"), f"pools {' and '.join(sorted(pair))} are linked twice")
        pairs.add(pair)
    return issues


# --------------------------------------------------------------------------------------------
# Parsing


def _drop_union_tags(loc: Loc) -> Loc:
    """Drop the union tag pydantic adds to a location (nodes.2.llm.x): users never wrote it."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if i > 1 and loc[i - 2] == "nodes" and isinstance(loc[i - 1], int) and part in NODE_TYPES:
            continue
        out.append(part)
    return tuple(out)


def _pydantic_issues(error: ValidationError) -> list[Issue]:
    issues = []
    for err in error.errors(include_url=False):
        loc = _drop_union_tags(tuple(err["loc"]))
        # A bad key: of a dict at (..., key, "[key]"), of a model (not a string) at (..., key).
        # An unknown field is named by its own key, even a key spelled "[key]".
        marker = loc[-1:] == ("[key]",) and err["type"] != "extra_forbidden"
        key = marker or err["type"] == "invalid_key"
        loc = loc[:-1] if marker else loc
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field {shown(loc[-1])}; remove it or check its spelling"
            if "_" in str(loc[-1]):
                message += " (keys are camelCase)"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "type")
            problem = "unknown" if err["type"] == "union_tag_invalid" else "missing"
            message = f"{problem} node type; use one of {', '.join(sorted(NODE_TYPES))}"
        elif err["type"] == "string_pattern_mismatch" and err["ctx"]["pattern"] in PATTERN_HINTS:
            hint = PATTERN_HINTS[err["ctx"]["pattern"]]
            message = hint if key else f"{shown(err['input'])} is not valid: {hint}"
        elif err["type"] == "literal_error" and loc == ("apiVersion",):
            message = f"apiVersion must be {API_VERSION}"
        if key:
            message = f"key {shown(loc[-1])} is not valid: {message}"
        issues.append(Issue(loc, message, key=key))
    return issues


def parse_document(data: Any, *, known: KnownIds | None = None) -> AgentGraph | Cluster:
    """Validate decoded YAML/JSON data as an AgentGraph or Cluster; raise SpecError otherwise."""
    if not isinstance(data, Mapping):
        raise SpecError(
            [Issue((), "a document must be a mapping with apiVersion, kind, metadata, spec")]
        )
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise SpecError([Issue(("kind",), f"kind must be one of {', '.join(KINDS)}, not {kind!r}")])
    try:
        document = KINDS[kind].model_validate(data)
    except ValidationError as err:
        raise SpecError(_pydantic_issues(err)) from None
    if isinstance(document, AgentGraph):
        issues = check_agent_graph(document, known)
    else:
        assert isinstance(document, Cluster)
        issues = check_cluster(document, known)
    if issues:
        raise SpecError(issues)
    return document


# --------------------------------------------------------------------------------------------
# YAML


MAX_YAML_NODES = 100_000  # values after aliases are expanded; the examples have about 1,000
MAX_YAML_DEPTH = 100


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects, before building the data, what would be silently lost or never
    finish: duplicate keys, keys that are lists or mappings, recursive aliases, alias bombs
    (billion laughs) and absurd nesting. Merge keys (`<<: *base`) work as usual."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check(node)
        return super().construct_document(node)

    def _check(self, root: yaml.Node) -> None:
        """Walk the document as its data would be (aliases expanded), stopping at the limits."""
        count = 0
        inside: set[int] = set()  # ids of the nodes on the way down to the current one
        stack: list[tuple[yaml.Node, int]] = [(root, 1)]  # depth -1: leaving the node
        while stack:
            node, depth = stack.pop()
            if depth < 0:
                inside.discard(id(node))
                continue
            count += 1
            if id(node) in inside:
                self._fail(
                    node, "an alias refers to a node that contains it: a recursive structure"
                )
            if depth > MAX_YAML_DEPTH:
                self._fail(node, f"the document is nested more than {MAX_YAML_DEPTH} levels deep")
            if count > MAX_YAML_NODES:
                self._fail(node, f"aliases expand the document to over {MAX_YAML_NODES:,} values")
            if isinstance(node, yaml.MappingNode):
                self._check_keys(node)
                children = [part for pair in node.value for part in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                continue
            inside.add(id(node))
            stack.append((node, -1))
            stack.extend((child, depth + 1) for child in reversed(children))

    def _check_keys(self, node: yaml.MappingNode) -> None:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden: they are no duplicates
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(key_node, f"a key must be a string, not a {key_node.id}")
            key = self.construct_object(key_node)
            if key in seen:
                self._fail(key_node, f"duplicate key {shown(key)}")
            seen.add(key)

    @staticmethod
    def _fail(node: yaml.Node, problem: str) -> None:
        raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


def load_yaml(text: str) -> Any:
    """Parse one YAML document strictly; an error becomes a SpecError with its line."""
    try:
        documents = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.reader.ReaderError as err:  # a character YAML does not allow
        line = text.count("\n", 0, err.position) + 1
        message = f"invalid YAML: character {chr(err.character)!r} is not allowed; escape it"
        raise SpecError([Issue((), message, line=line)]) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = " ".join(str(err.problem or err.context).split())  # one line
        where = f" (column {mark.column + 1})" if mark else ""
        line = mark.line + 1 if mark else None
        raise SpecError([Issue((), f"invalid YAML: {problem}{where}", line=line)]) from None
    except RecursionError:
        message = f"invalid YAML: the document is nested more than {MAX_YAML_DEPTH} levels deep"
        raise SpecError([Issue((), message)]) from None
    if len(documents) != 1:
        raise SpecError([Issue((), f"expected one YAML document, found {len(documents)}")])
    return documents[0]


class _BlockStringDumper(yaml.SafeDumper):
    """Writes multi-line strings as `|` blocks, so prompts stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStringDumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(
        data, Dumper=_BlockStringDumper, sort_keys=False, allow_unicode=True, width=100
    )
