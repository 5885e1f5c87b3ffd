"""Reading AgentGraph and Cluster files: YAML, the catalog, subgraph files, errors with lines.

`load_file` is what the CLI, the SDK and the server use; it adds to `hetagent.spec.parse_document`
what needs the file system or the catalog: line numbers in errors, model and device ids checked
against the planner's catalog, and `subgraph` nodes resolved relative to the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from hetagent.spec import (
    AgentGraph,
    Cluster,
    Issue,
    KnownIds,
    Loc,
    Reference,
    SpecError,
    SubgraphNode,
    load_yaml,
    parse_document,
    parse_references,
)


@cache
def known_ids() -> KnownIds:
    """The ids of the planner's catalog, which documents are checked against."""
    from hetagent.planner.catalog import load_catalog

    catalog = load_catalog()
    return KnownIds(models=catalog.models, devices=catalog.devices)


@dataclass(frozen=True)
class FileIssue:
    """An Issue located in a file: `coding-agent.yaml:14: spec.nodes[2].maxTokens: ...`."""

    file: str
    line: int | None
    issue: Issue

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.issue}"


class DocumentError(Exception):
    """One or more files are invalid; `issues` locates every problem."""

    def __init__(self, issues: list[FileIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The line of the deepest YAML node that `loc` reaches (1-based)."""
    node, line = root, (root.start_mark.line + 1 if root else None)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            key, node = match[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_file(path: str | Path, *, check_catalog: bool = True) -> AgentGraph | Cluster:
    """Read and fully validate one document; raise DocumentError naming file, line and path."""
    return _load(Path(path), check_catalog, stack=())


def _load(path: Path, check_catalog: bool, stack: tuple[Path, ...]) -> AgentGraph | Cluster:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DocumentError(
            [FileIssue(name, None, Issue((), f"cannot read: {err.strerror}"))]
        ) from None
    except UnicodeDecodeError:
        raise DocumentError([FileIssue(name, None, Issue((), "not UTF-8 text"))]) from None
    try:
        document = parse_document(load_yaml(text), known=known_ids() if check_catalog else None)
        if isinstance(document, AgentGraph):
            issues = _check_subgraphs(document, path, check_catalog, (*stack, path.resolve()))
            if issues:
                raise SpecError(issues)
    except SpecError as err:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            root = None
        raise DocumentError(
            [FileIssue(name, _line_of(root, issue.loc), issue) for issue in err.issues]
        ) from None
    return document


def _check_subgraphs(
    graph: AgentGraph, path: Path, check_catalog: bool, stack: tuple[Path, ...]
) -> list[Issue]:
    """Subgraph files exist and are valid, get the inputs they need, and have the outputs used."""
    issues: list[Issue] = []
    children: dict[str, AgentGraph] = {}
    for i, node in enumerate(graph.spec.nodes):
        if not isinstance(node, SubgraphNode):
            continue
        loc = ("spec", "nodes", i)
        ref = (path.parent / node.ref).resolve()
        if ref in stack:
            issues.append(Issue((*loc, "ref"), f"{node.ref} includes itself (subgraph cycle)"))
            continue
        try:
            child = _load(ref, check_catalog, stack)
        except DocumentError as err:
            first = err.issues[0]
            issues.append(
                Issue(
                    (*loc, "ref"),
                    f"{node.ref} is invalid: {first.issue}"
                    + (f" (and {len(err.issues) - 1} more)" if len(err.issues) > 1 else ""),
                )
            )
            continue
        if not isinstance(child, AgentGraph):
            issues.append(Issue((*loc, "ref"), f"{node.ref} is a {child.kind}, not an AgentGraph"))
            continue
        children[node.name] = child
        graph.subgraphs[node.name] = child
        for key in node.inputs:
            if key not in child.spec.inputs:
                issues.append(Issue((*loc, "inputs", key), f"{node.ref} has no input {key!r}"))
        for key, declared in child.spec.inputs.items():
            if declared.required and key not in node.inputs:
                issues.append(Issue((*loc, "inputs"), f"{node.ref} needs input {key!r}"))
    for loc, text, _ in graph.templated_strings():
        for ref in parse_references(text):
            child = children.get(ref.name) if isinstance(ref, Reference) else None
            if child and ref.scope == "nodes" and ref.output not in child.spec.outputs:
                issues.append(Issue(loc, f"subgraph {ref.name!r} has no output {ref.output!r}"))
    return issues
