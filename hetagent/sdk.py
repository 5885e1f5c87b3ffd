"""The Python face of AgentGraph: a `Graph` builder and the `@tool` decorator.

A `Graph` compiles to the same `AgentGraph` a YAML file does, so code and file are isomorphic
(`Graph.to_yaml()`, `AgentGraph.from_yaml()`). References are plain strings: `g.input("q")`
returns `"${inputs.q}"` and a node handle's `.text` returns `"${nodes.<name>.outputs.text}"`, so
f-strings build prompts:

    g = Graph("rag-qa")
    question = g.input("question")
    g.model("chat", "llama-3.1-8b")
    answer = g.llm("answer", model="chat", prompt=f"Answer: {question}")
    g.output("answer", answer.text)
    graph = g.build()
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import create_model
from pydantic.alias_generators import to_camel

from hetagent.spec import API_VERSION, AgentGraph, SpecError, parse_document

F = TypeVar("F", bound=Callable[..., Any])
_REQUIRED = object()  # marks an input declared without a default


@dataclass(frozen=True)
class ToolInfo:
    """What `@tool` records about a Python tool: how the runtime finds it and what it takes."""

    ref: str  # module:function, the name a node or an agent's tool list uses
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments, for LLM tool calling


def tool(fn: F | None = None, *, description: str | None = None) -> Any:
    """Mark a module-level function as a hetagent tool (usable as `g.tool(..., fn)`)."""

    def mark(func: F) -> F:
        if "." in func.__qualname__:  # a method, or a function defined in a function
            raise TypeError(
                f"@hetagent.tool: {func.__qualname__} must be a module-level function, "
                "so the runtime can import it as module:function"
            )
        fields: dict[str, Any] = {}
        for param in inspect.signature(func).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"@hetagent.tool: {func.__name__} cannot take *args or **kwargs")
            annotation = Any if param.annotation is param.empty else param.annotation
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, default)
        schema = create_model(func.__name__, **fields).model_json_schema()
        func.__hetagent_tool__ = ToolInfo(  # type: ignore[attr-defined]
            ref=f"{func.__module__}:{func.__name__}",
            description=description or inspect.getdoc(func) or "",
            parameters=schema,
        )
        return func

    return mark(fn) if fn is not None else mark


def tool_info(fn: Callable[..., Any]) -> ToolInfo:
    info = getattr(fn, "__hetagent_tool__", None)
    if info is None:
        raise TypeError(f"{getattr(fn, '__name__', fn)!r} is not marked with @hetagent.tool")
    return info


class NodeRef:
    """A handle to a node of a Graph: its outputs as reference strings, usable in prompts."""

    def __init__(self, name: str):
        self.name = name

    def output(self, output: str, *fields: str) -> str:
        """`${nodes.<name>.outputs.<output>[.field...]}`."""
        return "${" + ".".join(["nodes", self.name, "outputs", output, *fields]) + "}"

    @property
    def text(self) -> str:
        return self.output("text")

    def __repr__(self) -> str:
        return f"NodeRef({self.name!r})"


def _tool_name(value: str | Callable[..., Any]) -> str:
    return value if isinstance(value, str) else tool_info(value).ref


def _camel(options: dict[str, Any]) -> dict[str, Any]:
    """SDK keyword arguments (snake_case) as document keys (camelCase); None means unset."""
    return {to_camel(key): value for key, value in options.items() if value is not None}


class Graph:
    """Builds an AgentGraph node by node; `build()` validates it like a YAML file."""

    def __init__(self, name: str, *, description: str | None = None, labels: dict | None = None):
        self._metadata = _camel({"name": name, "description": description, "labels": labels})
        self._spec: dict[str, Any] = {"inputs": {}, "outputs": {}, "models": {}, "indexes": {}}
        self._nodes: list[dict[str, Any]] = []

    # -- graph-level declarations ------------------------------------------------------------

    def input(
        self,
        name: str,
        *,
        type: str | None = None,
        description: str | None = None,
        default: Any = _REQUIRED,
    ) -> str:
        """Declare an input (optional when it has a default; of type string unless `type` says
        otherwise); returns its reference."""
        declared = _camel({"type": type, "description": description})
        if default is not _REQUIRED:
            declared["default"] = default
        self._spec["inputs"][name] = declared
        return "${inputs." + name + "}"

    def output(self, name: str, value: str) -> None:
        self._spec["outputs"][name] = value

    def model(self, name: str, id: str, *, weights: dict[str, Any] | None = None) -> str:
        """Declare a model under a local name (`id` from the planner's catalog)."""
        self._spec["models"][name] = _camel({"id": id, "weights": weights})
        return name

    def index(
        self, name: str, *, documents: str, embedding_model: str, chunk_tokens: int | None = None
    ) -> str:
        self._spec["indexes"][name] = _camel(
            {
                "documents": documents,
                "embedding_model": embedding_model,
                "chunk_tokens": chunk_tokens,
            }
        )
        return name

    def slo(self, **options: Any) -> None:
        """p95_latency_seconds, ttft_seconds, tpot_seconds."""
        self._spec["slo"] = _camel(options)

    def traffic(self, **options: Any) -> None:
        """arrival_rate_per_second, burstiness."""
        self._spec["traffic"] = _camel(options)

    def policies(self, **names: str) -> None:
        """kv_retention, scheduling, placement, resources."""
        self._spec["policies"] = _camel(names)

    # -- nodes -------------------------------------------------------------------------------

    def _add(
        self,
        type: str,
        name: str,
        depends_on: Iterable[NodeRef | str] | None,
        fields: dict[str, Any],
    ) -> NodeRef:
        node = {"name": name, "type": type} | _camel(fields)
        if depends_on:
            node["dependsOn"] = [d.name if isinstance(d, NodeRef) else d for d in depends_on]
        self._nodes.append(node)
        return NodeRef(name)

    def llm(
        self,
        name: str,
        *,
        model: str,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        depends_on: Iterable[NodeRef | str] | None = None,
        **options: Any,
    ) -> NodeRef:
        """An LLM call. Options: max_tokens, temperature, expected_input_tokens, ..."""
        return self._add(
            "llm",
            name,
            depends_on,
            {"model": model, "prompt": prompt, "messages": messages, **options},
        )

    def tool(
        self,
        name: str,
        tool: str | Callable[..., Any],
        *,
        args: dict[str, Any] | None = None,
        depends_on: Iterable[NodeRef | str] | None = None,
        **options: Any,
    ) -> NodeRef:
        """A tool call: a built-in name (`shell`) or a function marked with @hetagent.tool."""
        return self._add(
            "tool", name, depends_on, {"tool": _tool_name(tool), "args": args, **options}
        )

    def retrieve(
        self,
        name: str,
        *,
        index: str,
        query: str,
        depends_on: Iterable[NodeRef | str] | None = None,
        **options: Any,
    ) -> NodeRef:
        return self._add("retrieve", name, depends_on, {"index": index, "query": query, **options})

    def transform(
        self,
        name: str,
        *,
        template: str | None = None,
        parse: dict[str, Any] | None = None,
        depends_on: Iterable[NodeRef | str] | None = None,
        **options: Any,
    ) -> NodeRef:
        return self._add(
            "transform", name, depends_on, {"template": template, "parse": parse, **options}
        )

    def agent(
        self,
        name: str,
        *,
        model: str,
        instructions: str,
        prompt: str,
        tools: Iterable[str | Callable[..., Any]],
        depends_on: Iterable[NodeRef | str] | None = None,
        **options: Any,
    ) -> NodeRef:
        """A ReAct loop. Options: max_turns, expected_turns, p95_turns, expected_tool_seconds..."""
        return self._add(
            "agent",
            name,
            depends_on,
            {
                "model": model,
                "instructions": instructions,
                "prompt": prompt,
                "tools": [_tool_name(t) for t in tools],
                **options,
            },
        )

    def subgraph(
        self,
        name: str,
        *,
        ref: str,
        inputs: dict[str, Any] | None = None,
        depends_on: Iterable[NodeRef | str] | None = None,
        **options: Any,
    ) -> NodeRef:
        return self._add("subgraph", name, depends_on, {"ref": ref, "inputs": inputs, **options})

    # -- output ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        spec = {key: value for key, value in self._spec.items() if value}
        return {
            "apiVersion": API_VERSION,
            "kind": "AgentGraph",
            "metadata": self._metadata,
            "spec": spec | {"nodes": self._nodes},
        }

    def build(self, *, check_catalog: bool = True) -> AgentGraph:
        """Validate and return the AgentGraph; raise SpecError listing every problem."""
        known = None
        if check_catalog:
            from hetagent.documents import known_ids

            known = known_ids()
        graph = parse_document(self.to_dict(), known=known)
        assert isinstance(graph, AgentGraph)
        return graph

    def to_yaml(self) -> str:
        return self.build().to_yaml()


__all__ = ["Graph", "NodeRef", "SpecError", "ToolInfo", "tool", "tool_info"]
