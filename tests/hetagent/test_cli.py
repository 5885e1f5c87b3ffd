"""The CLI as a user runs it: the installed `hetagent` script, in a subprocess."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.yaml"))
HETAGENT = str(Path(sys.executable).parent / "hetagent")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HETAGENT, *args], capture_output=True, text=True, cwd=ROOT, check=False, timeout=60
    )


def test_all_examples_are_valid():
    result = run("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(EXAMPLES)


def test_examples_include_the_named_reference_agents_and_clusters():
    names = {path.relative_to(ROOT / "examples").as_posix() for path in EXAMPLES}
    assert {
        "agents/coding-agent.yaml",
        "agents/rag-qa.yaml",
        "agents/text2sql.yaml",
        "agents/voice-agent.yaml",
        "agents/deep-research.yaml",
        "agents/quickstart.yaml",
        "clusters/mixed-generations.yaml",
        "clusters/h100-only.yaml",
        "clusters/local.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_unknown_field_is_one_line_naming_its_path(path: Path, tmp_path: Path):
    data = yaml.safe_load(path.read_text())
    first = data["spec"]["nodes" if data["kind"] == "AgentGraph" else "pools"][0]
    first["colour"] = "blue"
    broken = tmp_path / path.name
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run("validate", str(broken))
    assert result.returncode == 2
    section = "nodes" if data["kind"] == "AgentGraph" else "pools"
    assert result.stderr.splitlines() == [
        f"{broken}:{_line_of_key(broken, 'colour')}: spec.{section}[0].colour: "
        "unknown field 'colour'; remove it or check its spelling"
    ]
    assert "Traceback" not in result.stderr


def _line_of_key(path: Path, key: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if f"{key}:" in line)


def test_validate_reports_every_file_and_fails_if_any_is_invalid(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Robot\n")
    result = run("validate", str(EXAMPLES[0]), str(bad), str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert result.stdout.startswith(f"ok  {EXAMPLES[0]}")
    assert result.stderr.splitlines() == [
        f"{bad}:1: kind: kind must be one of AgentGraph, Cluster, not 'Robot'",
        f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory",
    ]


AGENT = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: x}
spec:
  models: {m: {id: smollm2-135m}}
  nodes:
"""
BOMB = "".join(f"    - &a{i + 1} [{', '.join([f'*a{i}'] * 10)}]\n" for i in range(7))
TOOL = "    - {name: t, type: tool, tool: shell, "
LLM = "    - {name: t, type: llm, model: m, "
SUB = "    - {name: t, type: subgraph, "
NASTY = {
    "unhashable-key": TOOL + "args: {[1, 2]: x}}\n",
    "huge-memory": TOOL + f'resources: {{memory: "{"9" * 300}Ti"}}}}\n',
    "nan-cpu": TOOL + 'resources: {cpu: "nan"}}\n',
    "inf-cpu": TOOL + "resources: {cpu: .inf}}\n",
    "infm-cpu": TOOL + 'resources: {cpu: "infm"}}\n',
    "recursive-alias": TOOL + "args: {a: &r [*r]}}\n",
    "alias-bomb": "    - &a0 [x, x, x, x, x, x, x, x, x, x]\n" + BOMB,
    "nul-ref": SUB + 'ref: "a\\0b"}\n',
    "dir-ref": SUB + "ref: .}\n",
    "dev-zero-ref": SUB + "ref: /dev/zero}\n",
    "empty-ref": SUB + 'ref: ""}\n',
    "unterminated-reference": LLM + 'prompt: "${inputs.q and more"}\n',
    "multi-line-value": '    - {name: t, type: tool, tool: "a\\nb"}\n',
    "control-character": LLM + 'prompt: "a\x07b"}\n',
    "bool-as-int": LLM + "prompt: x, maxTokens: true}\n",
    "snake-case": LLM + "prompt: x, max_tokens: 3}\n",
}


@pytest.mark.parametrize("case", NASTY)
def test_validate_rejects_what_used_to_crash_hang_or_pass_with_located_lines(case, tmp_path):
    path = tmp_path / f"{case}.yaml"
    path.write_text(AGENT + NASTY[case])
    result = run("validate", str(path))
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines
    for line in lines:
        assert re.match(rf"{re.escape(str(path))}:\d+: (spec\.nodes\[0\]\S*: |invalid YAML)", line)


def test_describe_reports_invalid_files_and_describes_the_others(tmp_path):
    agent = tmp_path / "agent.yaml"
    agent.write_text(
        AGENT.replace("{name: x}", "{name: x, description: 'see [/x] :x: [bold]'}")
        + "    - {name: t, type: subgraph, ref: '[red]sub.yaml'}\n"
    )
    (tmp_path / "[red]sub.yaml").write_text(
        AGENT + "    - {name: s, type: llm, model: m, prompt: x}\n"
    )
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        AGENT.split("spec:")[0].replace("AgentGraph", "Cluster")
        + "spec:\n  pools:\n"
        + "    - {name: p, device: gaudi2, count: 1, ownership: owned, purchasePrice: 0}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Robot\n")
    result = run("describe", str(bad), str(agent), str(cluster))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{bad}:1: kind: kind must be one of AgentGraph, Cluster, not 'Robot'"
    ]
    assert "AgentGraph x — see [/x] :x: [bold]" in result.stdout
    assert "[red]sub.yaml" in result.stdout
    assert "$0 each" in result.stdout


def test_schema_to_an_unwritable_path_is_a_user_error():
    result = run("schema", "Cluster", "-o", "/nonexistent/x.json")
    assert result.returncode == 2
    assert result.stderr == "cannot write /nonexistent/x.json: No such file or directory\n"


@pytest.mark.parametrize("kind", ["AgentGraph", "Cluster"])
def test_schema_is_a_json_schema_that_accepts_the_examples(kind: str):
    result = run("schema", kind)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    documents = [yaml.safe_load(path.read_text()) for path in EXAMPLES]
    checked = [d for d in documents if d["kind"] == kind]
    assert checked
    for document in checked:
        validator.validate(document)
    wrong = dict(checked[0], spec={**checked[0]["spec"], "colour": "blue"})
    assert not validator.is_valid(wrong)


def test_schema_of_an_unknown_kind_is_a_user_error():
    result = run("schema", "Robot")
    assert result.returncode == 2
    assert result.stderr.strip() == "unknown kind 'Robot'; use one of AgentGraph, Cluster"


def test_describe_summarizes_agents_and_clusters():
    result = run(
        "describe",
        str(ROOT / "examples/agents/rag-qa.yaml"),
        str(ROOT / "examples/clusters/mixed-generations.yaml"),
    )
    assert result.returncode == 0, result.stderr
    assert "AgentGraph rag-qa" in result.stdout
    assert "stages: " in result.stdout
    assert "Cluster mixed-generations" in result.stdout


@pytest.mark.parametrize("kind", ["AgentGraph", "Cluster"])
def test_committed_editor_schemas_are_current(kind: str):
    committed = (ROOT / "schemas" / f"{kind.lower()}.schema.json").read_text()
    assert run("schema", kind).stdout == committed, "run `make schemas` and commit the result"
