"""The Python SDK builds the same AgentGraph as YAML, and YAML round-trips exactly."""

from pathlib import Path

import pytest

import hetagent
from hetagent.sdk import tool_info
from hetagent.spec import AgentGraph, Cluster, SpecError

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*/*.yaml"))


@hetagent.tool
def count_words(text: str, minimum_length: int = 1) -> int:
    """Count the words of a text."""
    return sum(1 for word in text.split() if len(word) >= minimum_length)


RAG_YAML = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata:
  name: rag
spec:
  inputs:
    question:
      description: What to ask.
  outputs:
    answer: ${nodes.answer.outputs.text}
  models:
    chat:
      id: llama-3.1-8b
    embed:
      id: minilm-l6
  indexes:
    docs:
      documents: docs/
      embeddingModel: embed
  slo:
    p95LatencySeconds: 5.0
  nodes:
  - name: search
    type: retrieve
    index: docs
    query: ${inputs.question}
    k: 3
  - name: words
    type: tool
    tool: test_sdk:count_words
    args:
      text: ${inputs.question}
    resources:
      memory: 64Mi
  - name: answer
    type: llm
    dependsOn:
    - words
    model: chat
    prompt: |-
      Context: ${nodes.search.outputs.text}
      Question: ${inputs.question}
    maxTokens: 64
""".replace("test_sdk:", f"{__name__}:")


def build_rag() -> hetagent.Graph:
    g = hetagent.Graph("rag")
    question = g.input("question", description="What to ask.")
    g.model("chat", "llama-3.1-8b")
    g.model("embed", "minilm-l6")
    g.index("docs", documents="docs/", embedding_model="embed")
    g.slo(p95_latency_seconds=5.0)
    search = g.retrieve("search", index="docs", query=question, k=3)
    words = g.tool("words", count_words, args={"text": question}, resources={"memory": "64Mi"})
    answer = g.llm(
        "answer",
        model="chat",
        prompt=f"Context: {search.text}\nQuestion: {question}",
        max_tokens=64,
        depends_on=[words],
    )
    g.output("answer", answer.text)
    return g


def test_sdk_graph_equals_the_yaml_document():
    built = build_rag().build()
    assert built == AgentGraph.from_yaml(RAG_YAML)
    assert built.to_yaml() == RAG_YAML


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_round_trip_exactly(path: Path):
    kind = AgentGraph if "agents" in path.parts else Cluster
    document = kind.from_yaml(path.read_text())
    text = document.to_yaml()
    again = kind.from_yaml(text)
    assert again == document
    assert again.to_yaml() == text


def test_tool_decorator_records_ref_description_and_schema():
    info = tool_info(count_words)
    assert info.ref == f"{__name__}:count_words"
    assert info.description == "Count the words of a text."
    assert info.parameters["required"] == ["text"]
    assert info.parameters["properties"]["minimum_length"]["type"] == "integer"
    assert count_words("a bb ccc", minimum_length=2) == 2  # still an ordinary function


def test_tool_decorator_rejects_functions_the_runtime_cannot_import():
    def local(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="must be a module-level function"):
        hetagent.tool(local)


def test_agent_tools_accept_decorated_functions():
    g = hetagent.Graph("loop")
    g.model("m", "smollm2-135m")
    g.agent(
        "solve",
        model="m",
        instructions="Be brief.",
        prompt="Count.",
        tools=["shell", count_words],
        max_turns=3,
    )
    assert g.build().node("solve").tools == ["shell", f"{__name__}:count_words"]


def test_build_errors_use_document_paths():
    g = hetagent.Graph("bad")
    g.model("m", "no-such-model")
    g.llm("x", model="m", prompt="hi", max_tokens=0)
    with pytest.raises(SpecError) as error:
        g.build()
    assert [i.path for i in error.value.issues] == ["spec.nodes[0].maxTokens"]
    g = hetagent.Graph("bad")
    g.model("m", "no-such-model")
    g.llm("x", model="m", prompt="hi")
    with pytest.raises(SpecError, match=r"spec\.models\.m\.id: unknown model 'no-such-model'"):
        g.build()


def test_input_with_default_is_optional():
    g = hetagent.Graph("opt")
    g.model("m", "smollm2-135m")
    g.llm("x", model="m", prompt=f"{g.input('a')} {g.input('b', type='integer', default=None)}")
    inputs = g.build().spec.inputs
    assert inputs["a"].required and not inputs["b"].required


def test_node_handles_are_node_refs():
    g = hetagent.Graph("refs")
    g.model("m", "smollm2-135m")
    first = g.llm("first", model="m", prompt="hi")
    assert isinstance(first, hetagent.NodeRef) and repr(first) == "NodeRef('first')"
    assert first.output("text") == first.text == "${nodes.first.outputs.text}"
    assert not hasattr(hetagent, "Node")
