"""Loading files: errors carry file and line; subgraph files are resolved and checked."""

from pathlib import Path

import pytest

import hetagent
from hetagent.documents import MAX_FILE_BYTES, DocumentError, FileIssue, load_file

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


def load_issues(path: Path) -> list[FileIssue]:
    with pytest.raises(DocumentError) as error:
        load_file(path)
    return error.value.issues


def issues(path: Path) -> list[str]:
    return [str(issue) for issue in load_issues(path)]


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
        f"{path}:6: spec.nodes[0].inputs.colour: 'child.yaml' has no input 'colour'",
        f"{path}:6: spec.nodes[0].inputs: 'child.yaml' needs input 'topic'",
        f"{path}:7: spec.nodes[1].template: subgraph 'research' has no output 'text'",
    ]


def test_subgraph_cycles_and_broken_children_are_reported(tmp_path):
    path = write(tmp_path, "loop.yaml", parent("loop.yaml", "{}", "x"))
    assert issues(path) == [
        f"{path}:6: spec.nodes[0].ref: 'loop.yaml' includes itself (subgraph cycle)"
    ]
    child = write(tmp_path, "broken.yaml", CHILD.replace("smollm2-135m", "gpt-99"))
    path = write(tmp_path, "parent.yaml", parent("broken.yaml", "{topic: x}", "x"))
    (parent_issue, child_issue) = issues(path)
    assert parent_issue == (
        f"{path}:6: spec.nodes[0].ref: 'broken.yaml' is invalid; its problems follow"
    )
    assert child_issue.startswith(f"{child}:6: spec.models.m.id: unknown model 'gpt-99'; known: ")


def test_a_broken_subgraph_used_twice_is_reported_once(tmp_path):
    child = write(tmp_path, "broken.yaml", CHILD.replace("prompt:", "maxTokenz: 1, prompt:"))
    path = write(
        tmp_path,
        "parent.yaml",
        HEADER
        + """\
metadata: {name: parent}
spec:
  nodes:
    - {name: a, type: subgraph, ref: broken.yaml, inputs: {topic: x}}
    - {name: b, type: subgraph, ref: broken.yaml, inputs: {topic: x}}
""",
    )
    assert issues(path) == [
        f"{path}:6: spec.nodes[0].ref: 'broken.yaml' is invalid; its problems follow",
        f"{path}:7: spec.nodes[1].ref: 'broken.yaml' is invalid; its problems follow",
        f"{child}:9: spec.nodes[0].maxTokenz: unknown field 'maxTokenz'; "
        "remove it or check its spelling",
    ]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ('"a\\0b"', "cannot read 'a\\x00b': embedded null byte"),
        ('""', "'' is not a regular file"),
        (".", "'.' is not a regular file"),
        ("/dev/zero", "'/dev/zero' is not a regular file"),
        ("missing.yaml", "cannot read 'missing.yaml': No such file or directory"),
    ],
)
def test_a_subgraph_ref_must_name_a_regular_file(tmp_path, ref, message):
    path = write(tmp_path, "parent.yaml", parent(ref, "{}", "x"))
    assert issues(path) == [f"{path}:6: spec.nodes[0].ref: {message}"]


def test_reading_stops_at_the_size_limit(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    assert issues(path) == [f"{path}: larger than 10 MiB; not a document"]
    assert issues(Path("/dev/zero")) == ["/dev/zero: larger than 10 MiB; not a document"]


def test_yaml_errors_carry_their_line_outside_the_message(tmp_path):
    path = write(tmp_path, "a.yaml", CHILD + "kind: Cluster\n")
    (issue,) = load_issues(path)
    assert (issue.line, str(issue)) == (
        10,
        f"{path}:10: invalid YAML: duplicate key 'kind' (column 1)",
    )
    path = write(tmp_path, "b.yaml", "")
    assert issues(path) == [f"{path}:1: expected one YAML document, found 0"]


def test_anchors_aliases_and_merge_keys_work_in_documents(tmp_path):
    text = CHILD.replace(
        "  nodes:\n",
        "  nodes:\n    - &w {name: w2, type: llm, model: m, prompt: hi, maxTokens: 8}\n"
        "    - {<<: *w, name: w3}\n",
    )
    graph = load_file(write(tmp_path, "a.yaml", text))
    assert [n.name for n in graph.spec.nodes] == ["w2", "w3", "write"]
    assert graph.node("w3").max_tokens == 8


def test_a_loaded_graph_equals_the_same_text_without_its_subgraphs(tmp_path):
    write(tmp_path, "child.yaml", CHILD)
    text = parent("child.yaml", "{topic: GPUs}", "${nodes.research.outputs.summary}")
    graph = hetagent.load(write(tmp_path, "parent.yaml", text))
    assert list(graph.subgraphs) == ["research"]
    assert graph.subgraphs["research"].metadata.name == "child"
    assert graph == hetagent.AgentGraph.from_yaml(text)
