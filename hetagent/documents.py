"""Reading AgentGraph and Cluster files: YAML, the catalog, subgraph files, errors with lines.

`load_file` is what the CLI, the SDK and the server use; it adds to `hetagent.spec.parse_document`
what needs the file system or the catalog: line numbers in errors, model and device ids checked
against the planner's catalog, and `subgraph` nodes resolved relative to the file.
"""

from __future__ import annotations

import stat
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
    shown,
)


@cache
def known_ids() -> KnownIds:
    """The ids of the planner's catalog, which documents are checked against."""
    from hetagent.planner.catalog import load_catalog

    catalog = load_catalog()
    return KnownIds(models=catalog.models, devices=catalog.devices)


MAX_FILE_BYTES = 10 * 2**20  # far beyond any agent; reading stops here (think of /dev/zero)


@dataclass(frozen=True)
class FileIssue:
    """An Issue located in a file: `coding-agent.yaml:14: spec.nodes[2].maxTokens: ...`."""

    file: str
    line: int | None
    issue: Issue

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        path = f"{self.issue.path}: " if self.issue.path else ""
        return f"{where}: {path}{self.issue.message}"


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
            match = [(k, v) for k, v in node.value if k.value == str(part)]
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


def _read(path: Path) -> str:
    """The text of a file; OSError, UnicodeDecodeError, or ValueError when too large."""
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES // 2**20} MiB; not a document")
    return data.decode("utf-8")


def _compose(text: str) -> yaml.Node | None:
    """The YAML node tree, to find the line of a path (None when the text is not YAML)."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None


def _load(path: Path, check_catalog: bool, stack: tuple[Path, ...]) -> AgentGraph | Cluster:
    name = str(path)
    try:
        text = _read(path)
    except OSError as err:
        raise DocumentError(
            [FileIssue(name, None, Issue((), f"cannot read: {err.strerror or err}"))]
        ) from None
    except UnicodeDecodeError:
        raise DocumentError([FileIssue(name, None, Issue((), "not UTF-8 text"))]) from None
    except ValueError as err:
        raise DocumentError([FileIssue(name, None, Issue((), str(err)))]) from None
    child_issues: list[FileIssue] = []
    try:
        document = parse_document(load_yaml(text), known=known_ids() if check_catalog else None)
        if isinstance(document, AgentGraph):
            stack = (*stack, path.resolve())
            issues, child_issues = _check_subgraphs(document, path, check_catalog, stack)
            if issues:
                raise SpecError(issues)
    except SpecError as err:
        root = _compose(text)
        located = [
            FileIssue(name, issue.line or _line_of(root, issue.loc) or 1, issue)
            for issue in err.issues
        ]
        # dict.fromkeys: two nodes may name the same broken file
        raise DocumentError(list(dict.fromkeys(located + child_issues))) from None
    return document


def _check_subgraphs(
    graph: AgentGraph, path: Path, check_catalog: bool, stack: tuple[Path, ...]
) -> tuple[list[Issue], list[FileIssue]]:
    """Subgraph files exist and are valid, get the inputs they need, and have the outputs used.

    Returns the graph's issues and those of its invalid subgraph files, located in them.
    """
    issues: list[Issue] = []
    child_issues: list[FileIssue] = []
    children: dict[str, AgentGraph] = {}
    for i, node in enumerate(graph.spec.nodes):
        if not isinstance(node, SubgraphNode):
            continue
        loc = ("spec", "nodes", i)
        file = path.parent / node.ref
        try:
            resolved = file.resolve()
            regular = stat.S_ISREG(resolved.stat().st_mode)
        except (OSError, RuntimeError, ValueError) as err:  # missing, a symlink loop, a NUL
            reason = getattr(err, "strerror", None) or err
            issues.append(Issue((*loc, "ref"), f"cannot read {shown(node.ref)}: {reason}"))
            continue
        if not regular:  # a directory, a device, a pipe
            issues.append(Issue((*loc, "ref"), f"{shown(node.ref)} is not a regular file"))
            continue
        if resolved in stack:
            issues.append(
                Issue((*loc, "ref"), f"{shown(node.ref)} includes itself (subgraph cycle)")
            )
            continue
        try:
            child = _load(file, check_catalog, stack)
        except DocumentError as err:
            issues.append(
                Issue((*loc, "ref"), f"{shown(node.ref)} is invalid; its problems follow")
            )
            child_issues += err.issues
            continue
        if not isinstance(child, AgentGraph):
            issues.append(
                Issue((*loc, "ref"), f"{shown(node.ref)} is a {child.kind}, not an AgentGraph")
            )
            continue
        children[node.name] = child
        graph.subgraphs[node.name] = child
        for key in node.inputs:
            if key not in child.spec.inputs:
                issues.append(
                    Issue((*loc, "inputs", key), f"{shown(node.ref)} has no input {key!r}")
                )
        for key, declared in child.spec.inputs.items():
            if declared.required and key not in node.inputs:
                issues.append(Issue((*loc, "inputs"), f"{shown(node.ref)} needs input {key!r}"))
    for loc, text, _ in graph.templated_strings():
        for ref in parse_references(text):
            child = children.get(ref.name) if isinstance(ref, Reference) else None
            if child and ref.scope == "nodes" and ref.output not in child.spec.outputs:
                issues.append(Issue(loc, f"subgraph {ref.name!r} has no output {ref.output!r}"))
    return issues, child_issues
