"""Loading files: errors carry file and line; subgraph files are resolved and checked."""

from pathlib import Path

import pytest

import hetagent
from hetagent.documents import DocumentError, load_file

HEADER = "apiVersion: hetagent.dev/v1alpha1\nkind: AgentGraph\n"

CHILD = (
    HEADER
    + """\
metadata: {name: child}
spec:
  inputs: {topic: {}, depth: {type: integer, default: 1}}
  models: {m: {id: smollm2-135m}}
  outputs: {summary: "${nodes.write.outputs.text}"}
  nodes:
    - {name: write, type: llm, model: m, prompt: "Summarize ${inputs.topic}"}
"""
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def issues(path: Path) -> list[str]:
    with pytest.raises(DocumentError) as error:
        load_file(path)
    return [str(issue) for issue in error.value.issues]


def test_errors_name_file_line_and_path(tmp_path):
    path = write(tmp_path, "a.yaml", CHILD.replace("prompt:", "maxTokenz: 3, prompt:"))
    assert issues(path) == [
        f"{path}:9: spec.nodes[0].maxTokenz: unknown field 'maxTokenz'; "
        "remove it or check its spelling"
    ]


def test_semantic_errors_are_located_too(tmp_path):
    path = write(tmp_path, "a.yaml", CHILD.replace("${inputs.topic}", "${inputs.topc}"))
    assert issues(path) == [
        f"{path}:9: spec.nodes[0].prompt: unknown input 'topc'; known: depth, topic"
    ]


def test_missing_or_unreadable_files_are_user_errors(tmp_path):
    assert issues(tmp_path / "nope.yaml") == [
        f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    ]
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    assert issues(path) == [f"{path}: not UTF-8 text"]


def parent(ref: str, inputs: str, template: str) -> str:
    return (
        HEADER
        + f"""\
metadata: {{name: parent}}
spec:
  nodes:
    - {{name: research, type: subgraph, ref: {ref}, inputs: {inputs}}}
    - {{name: report, type: transform, template: "{template}"}}
"""
    )


def test_subgraph_is_resolved_relative_to_the_file(tmp_path):
    write(tmp_path, "child.yaml", CHILD)
    path = write(
        tmp_path,
        "parent.yaml",
        parent("child.yaml", "{topic: GPUs}", "${nodes.research.outputs.summary}"),
    )
    graph = hetagent.load(path)
    assert list(graph.dag().edges) == [("research", "report")]


def test_subgraph_inputs_and_outputs_are_checked(tmp_path):
    write(tmp_path, "child.yaml", CHILD)
    path = write(
        tmp_path,
        "parent.yaml",
        parent("child.yaml", "{colour: red}", "${nodes.research.outputs.text}"),
    )
    assert issues(path) == [
        f"{path}:6: spec.nodes[0].inputs.colour: child.yaml has no input 'colour'",
        f"{path}:6: spec.nodes[0].inputs: child.yaml needs input 'topic'",
        f"{path}:7: spec.nodes[1].template: subgraph 'research' has no output 'text'",
    ]


def test_subgraph_cycles_and_broken_children_are_reported(tmp_path):
    path = write(tmp_path, "loop.yaml", parent("loop.yaml", "{}", "x"))
    assert issues(path) == [
        f"{path}:6: spec.nodes[0].ref: loop.yaml includes itself (subgraph cycle)"
    ]
    write(tmp_path, "broken.yaml", CHILD.replace("smollm2-135m", "gpt-99"))
    path = write(tmp_path, "parent.yaml", parent("broken.yaml", "{topic: x}", "x"))
    (issue,) = issues(path)
    assert issue.startswith(
        f"{path}:6: spec.nodes[0].ref: broken.yaml is invalid: "
        "spec.models.m.id: unknown model 'gpt-99'"
    )
