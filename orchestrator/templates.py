"""`${inputs.x}` and `${nodes.a.outputs.text}` filled in from a run's values.

The plan's `values` maps every reference to the value holding it; a value that several outputs
of one node share (a retrieval's `text` and `documents`) is a `NodeOutputs` dict and the
reference picks its field. A subgraph's document (path prefix `research/`) refers to its own
nodes, and to its inputs, which its parent binds in the subgraph node's `inputs`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from hetagent.compiler.frontend import SUBGRAPH_SEPARATOR
from hetagent.spec import Reference, parse_references

OUTPUTS = "$outputs"  # marks a value holding several outputs of one node
_PATH_PART = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


class TemplateError(ValueError):
    """A reference that the run's values cannot fill (a field the value does not have)."""


def node_outputs(**outputs: Any) -> dict[str, Any]:
    """A value standing for several outputs of one node (`text`, `documents`, ...)."""
    return {OUTPUTS: outputs}


def pick(value: Any, output: str | None) -> Any:
    """One output of a value (the value itself when it holds a single output)."""
    if isinstance(value, dict) and OUTPUTS in value:
        outputs = value[OUTPUTS]
        return outputs.get(output or "text", outputs.get("text"))
    return value


def as_text(value: Any) -> str:
    """How a value reads inside a prompt: text as is, anything else as JSON."""
    value = pick(value, "text")
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class Scope:
    """References resolved against one document of the plan (`prefix` "" is the agent's own)."""

    def __init__(
        self,
        documents: Mapping[str, dict[str, Any]],
        values: Mapping[str, str],
        env: Mapping[str, Any],
        prefix: str = "",
    ):
        self.documents, self.values, self.env, self.prefix = documents, values, env, prefix

    def document(self) -> dict[str, Any]:
        return self.documents[self.prefix.rstrip(SUBGRAPH_SEPARATOR)]

    def text_at(self, path: str) -> Any:
        """The document's field at `spec.nodes[3].prompt` (prefixed for a subgraph)."""
        prefix, _, path = path.rpartition(SUBGRAPH_SEPARATOR)
        node: Any = self.documents[prefix]
        for key, index in _PATH_PART.findall(path):
            node = node[int(index)] if index else node[key]
        return node

    def node(self, path: str) -> dict[str, Any]:
        """The spec of node `research/write` (or `write` in the agent's own document)."""
        prefix, _, name = path.rpartition(SUBGRAPH_SEPARATOR)
        nodes = self.documents[prefix]["spec"]["nodes"]
        return next(n for n in nodes if n["name"] == name)

    def for_node(self, path: str) -> Scope:
        """The scope a node's fields are written in (its document's)."""
        prefix, separator, _ = path.rpartition(SUBGRAPH_SEPARATOR)
        return Scope(self.documents, self.values, self.env, prefix + separator)

    def resolve(self, ref: Reference) -> Any:
        if ref.scope == "inputs":
            if self.prefix:  # a subgraph's input: what its parent binds in the node's inputs
                parent = self.prefix.rstrip(SUBGRAPH_SEPARATOR)
                binding = self.node(parent)["inputs"][ref.name]
                return self.for_node(parent).fill(binding)
            return self.env[self.values[f"inputs.{ref.name}"]]
        name = f"nodes.{self.prefix}{ref.name}.outputs.{ref.output}"
        value = pick(self.env[self.values[name]], ref.output)
        for field in ref.field_path:  # `${nodes.a.outputs.value.tables}`
            try:
                value = value[int(field)] if isinstance(value, list) else value[field]
            except (KeyError, IndexError, TypeError, ValueError):
                path = ".".join((name, *ref.field_path))
                raise TemplateError(f"${{{path}}}: the value has no {field!r}") from None
        return value

    def render(self, text: str) -> str:
        """The text with every reference replaced by its value's text."""

        def replace(match: re.Match) -> str:
            if match.group(0) == "$${":
                return "${"
            (ref,) = list(parse_references(match.group(0)))
            return as_text(self.resolve(ref)) if isinstance(ref, Reference) else match.group(0)

        return re.sub(r"\$\$\{|\$\{[^}]*\}", replace, text)

    def fill(self, value: Any) -> Any:
        """Templates anywhere in a structure (tool arguments); a string that is one reference
        keeps its value's type."""
        if isinstance(value, str):
            refs = list(parse_references(value))
            whole = re.fullmatch(r"\s*\$\{[^}]*\}\s*", value)
            if whole and len(refs) == 1 and isinstance(refs[0], Reference):
                return pick(self.resolve(refs[0]), refs[0].output)
            return self.render(value)
        if isinstance(value, dict):
            return {key: self.fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.fill(item) for item in value]
        return value
