"""AgentGraph and Cluster validation: what is accepted, and that every rejection names its path."""

import copy

import pytest

from hetagent.documents import known_ids
from hetagent.spec import (
    AgentGraph,
    Cluster,
    SpecError,
    cpu_cores,
    load_yaml,
    memory_bytes,
    parse_document,
)

GRAPH = {
    "apiVersion": "hetagent.dev/v1alpha1",
    "kind": "AgentGraph",
    "metadata": {"name": "qa"},
    "spec": {
        "inputs": {"question": {"type": "string"}},
        "outputs": {"answer": "${nodes.answer.outputs.text}"},
        "models": {"chat": {"id": "llama-3.1-8b"}, "embed": {"id": "minilm-l6"}},
        "indexes": {"docs": {"documents": "docs/", "embeddingModel": "embed"}},
        "nodes": [
            {"name": "search", "type": "retrieve", "index": "docs", "query": "${inputs.question}"},
            {
                "name": "answer",
                "type": "llm",
                "model": "chat",
                "prompt": "Context: ${nodes.search.outputs.text}\nQ: ${inputs.question}",
                "maxTokens": 128,
            },
        ],
    },
}

CLUSTER = {
    "apiVersion": "hetagent.dev/v1alpha1",
    "kind": "Cluster",
    "metadata": {"name": "two-pools"},
    "spec": {
        "pools": [
            {"name": "fast", "device": "h100", "count": 8},
            {"name": "cheap", "device": "gaudi3", "count": 8, "ownership": "owned"},
        ],
        "links": [{"pools": ["fast", "cheap"], "bandwidthGBps": 50}],
    },
}


def graph(**changes) -> dict:
    """GRAPH with spec keys replaced."""
    data = copy.deepcopy(GRAPH)
    data["spec"].update(changes)
    return data


def node(name: str, **fields) -> dict:
    return {"name": name, **fields}


def issues_of(data: dict, known=None) -> list[str]:
    with pytest.raises(SpecError) as error:
        parse_document(data, known=known)
    return [str(issue) for issue in error.value.issues]


def test_valid_agent_graph_parses_with_defaults():
    document = parse_document(GRAPH, known=known_ids())
    assert isinstance(document, AgentGraph)
    answer = document.node("answer")
    assert answer.max_tokens == 128 and answer.temperature == 0.0
    assert document.node("search").k == 4


def test_references_are_dependencies():
    document = parse_document(GRAPH)
    assert list(document.dag().edges) == [("search", "answer")]
    assert document.dependencies(document.node("answer")) == ["search"]


def test_unknown_field_names_its_path():
    data = graph()
    data["spec"]["nodes"][1]["maxTokenz"] = 5
    assert issues_of(data) == [
        "spec.nodes[1].maxTokenz: unknown field 'maxTokenz'; remove it or check its spelling"
    ]


def test_field_error_path_has_no_union_tag():
    data = graph()
    data["spec"]["nodes"][1]["maxTokens"] = 0
    (issue,) = issues_of(data)
    assert issue.startswith("spec.nodes[1].maxTokens: ")


def test_unknown_node_type_points_at_type():
    data = graph(nodes=[node("x", type="llm-call")])
    (issue,) = issues_of(data)
    assert issue.startswith("spec.nodes[0].type: unknown node type; use one of agent, llm")


def test_wrong_api_version_and_kind():
    assert issues_of({**GRAPH, "apiVersion": "v1"}) == [
        "apiVersion: apiVersion must be hetagent.dev/v1alpha1"
    ]
    assert issues_of({**GRAPH, "kind": "Pipeline"})[0].startswith("kind: kind must be one of")


def test_every_semantic_problem_is_reported_at_once():
    data = graph(
        nodes=[
            node(
                "a", type="llm", model="chat", prompt="${inputs.nope} ${nodes.ghost.outputs.text}"
            ),
            node("a", type="llm", model="nomodel", prompt="x", dependsOn=["a", "zz"]),
        ]
    )
    assert issues_of(data) == [
        "spec.nodes[1].name: duplicate node name 'a'",
        "spec.nodes[1].dependsOn[0]: a node cannot depend on itself",
        "spec.nodes[1].dependsOn[1]: unknown node 'zz'; known: a",
        "spec.nodes[1].model: unknown model 'nomodel'; known: chat, embed",
        "spec.nodes[0].prompt: unknown input 'nope'; known: question",
        "spec.nodes[0].prompt: unknown node 'ghost'; known: a",
        "spec.outputs.answer: unknown node 'answer'; known: a",
    ]


def test_reference_to_missing_output_lists_the_outputs_there_are():
    data = graph(outputs={"answer": "${nodes.answer.outputs.stdout}"})
    assert issues_of(data) == [
        "spec.outputs.answer: node 'answer' (llm) has no output 'stdout'; it has: text"
    ]


def test_field_path_only_into_structured_outputs():
    ok = graph(
        nodes=[
            node("p", type="transform", parse={"input": "${inputs.question}", "format": "json"}),
            node("t", type="transform", template="${nodes.p.outputs.value.tables.0}"),
        ],
        outputs={},
    )
    parse_document(ok)
    bad = graph(outputs={"answer": "${nodes.answer.outputs.text.first}"})
    assert "only structured outputs take a field path" in issues_of(bad)[0]


def test_malformed_reference_and_literal_escape():
    shell = node("run", type="tool", tool="shell", args={"command": "echo $${HOME} ${HOME}"})
    (issue,) = issues_of(graph(nodes=[*GRAPH["spec"]["nodes"], shell]))
    assert issue.startswith("spec.nodes[2].args.command: malformed reference ${HOME}")
    shell["args"]["command"] = "echo $${HOME}"
    parse_document(graph(nodes=[*GRAPH["spec"]["nodes"], shell]))


def test_cycle_is_rejected_and_named():
    data = graph(
        nodes=[
            node("a", type="llm", model="chat", prompt="${nodes.b.outputs.text}"),
            node("b", type="llm", model="chat", prompt="x", dependsOn=["a"]),
        ],
        outputs={},
    )
    (issue,) = issues_of(data)
    assert "the graph has a cycle: a -> b -> a" in issue


def test_catalog_ids_checked_only_when_known():
    data = graph(models={"chat": {"id": "gpt-17"}, "embed": {"id": "minilm-l6"}})
    parse_document(data)
    (issue,) = issues_of(data, known=known_ids())
    assert issue.startswith("spec.models.chat.id: unknown model 'gpt-17'; known: ")


def test_retrieve_needs_declared_index_with_declared_embedding_model():
    data = graph(indexes={"docs": {"documents": "d/", "embeddingModel": "nope"}})
    assert issues_of(data) == [
        "spec.indexes.docs.embeddingModel: unknown model 'nope'; known: chat, embed"
    ]
    data = graph(indexes={})
    assert issues_of(data) == ["spec.nodes[0].index: unknown index 'docs'; known: (none)"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "chat"}, "give exactly one of prompt or messages"),
        (
            {"model": "chat", "prompt": "a", "messages": []},
            "give exactly one of prompt or messages",
        ),
        (
            {"model": "chat", "prompt": "a", "maxTokens": 8, "expectedOutputTokens": 9},
            "expectedOutputTokens cannot exceed maxTokens",
        ),
    ],
)
def test_llm_node_rules(fields, message):
    (issue,) = issues_of(graph(nodes=[node("x", type="llm", **fields)], outputs={}))
    assert issue == f"spec.nodes[0]: {message}"


AGENT = {"type": "agent", "model": "chat", "instructions": "i", "prompt": "p", "tools": ["shell"]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"maxTurns": 5, "p95Turns": 6}, "p95Turns cannot exceed maxTurns"),
        ({"p95Turns": 3, "expectedTurns": 4}, "expectedTurns cannot exceed p95Turns"),
        ({"expectedToolSeconds": {"python": 1}}, "expectedToolSeconds names tools not in tools"),
        ({"tools": ["shell", "shell"]}, "tools lists a tool twice"),
    ],
)
def test_agent_node_rules(fields, message):
    (issue,) = issues_of(graph(nodes=[node("x", **AGENT | fields)], outputs={}))
    assert issue.startswith(f"spec.nodes[0]: {message}")


def test_tool_names_are_builtins_or_module_function():
    for name in ("shell", "files.read", "my_pkg.tools:count_words"):
        parse_document(graph(nodes=[node("t", type="tool", tool=name)], outputs={}))
    (issue,) = issues_of(graph(nodes=[node("t", type="tool", tool="rm -rf")], outputs={}))
    assert issue == (
        "spec.nodes[0].tool: 'rm -rf' is not valid: a tool is a built-in (shell, python, "
        "files.read) or a Python function as module:function"
    )


def test_transform_needs_template_or_valid_parse():
    for fields, message in [
        ({}, "give exactly one of template or parse"),
        ({"parse": {"input": "x", "format": "regex"}}, "format regex needs a pattern"),
        ({"parse": {"input": "x", "format": "regex", "pattern": "("}}, "not a valid regular"),
        ({"parse": {"input": "x", "format": "json", "pattern": "a"}}, "pattern applies only"),
    ]:
        (issue,) = issues_of(graph(nodes=[node("t", type="transform", **fields)], outputs={}))
        assert message in issue, issue


def test_resource_quantities():
    assert memory_bytes("512Mi") == 512 * 2**20
    assert memory_bytes("2G") == 2 * 10**9
    assert memory_bytes(1024) == 1024
    assert cpu_cores("500m") == 0.5 and cpu_cores(2) == 2.0
    bad = node("t", type="tool", tool="shell", resources={"memory": "lots", "cpu": "-1"})
    issues = issues_of(graph(nodes=[bad], outputs={}))
    assert [i.split(":")[0] for i in issues] == [
        "spec.nodes[0].resources.memory",
        "spec.nodes[0].resources.cpu",
    ]


def test_input_with_default_is_optional():
    data = graph(inputs={"question": {}, "k": {"type": "integer", "default": 4}})
    document = parse_document(data)
    assert document.spec.inputs["question"].required
    assert not document.spec.inputs["k"].required


def test_valid_cluster_parses_with_defaults():
    cluster = parse_document(CLUSTER, known=known_ids())
    assert isinstance(cluster, Cluster)
    assert cluster.spec.amortization.years == 4 and cluster.spec.energy.pue == 1.3
    assert cluster.pool("cheap").ownership == "owned"


def test_cluster_problems_name_their_paths():
    data = copy.deepcopy(CLUSTER)
    data["spec"]["pools"] += [
        {"name": "fast", "device": "tpu-v99", "count": 1},
        {"name": "npu", "device": "gaudi2", "count": 2},  # no public rental price
    ]
    data["spec"]["links"] += [
        {"pools": ["cheap", "fast"], "bandwidthGBps": 10},
        {"pools": ["fast", "nowhere"], "bandwidthGBps": 10},
        {"pools": ["npu", "npu"], "bandwidthGBps": 10},
    ]
    issues = issues_of(data, known=known_ids())
    assert issues[0] == "spec.pools[2].name: duplicate pool name 'fast'"
    assert issues[1].startswith("spec.pools[2].device: unknown device 'tpu-v99'")
    assert issues[2] == (
        "spec.pools[3].pricePerHour: the catalog has no rental price for gaudi2; set pricePerHour"
    )
    assert issues[3:] == [
        "spec.links[1].pools: pools cheap and fast are linked twice",
        "spec.links[2].pools[1]: unknown pool 'nowhere'; known: cheap, fast, npu",
        "spec.links[3].pools: a link joins two different pools",
    ]


def test_pool_price_override_satisfies_pricing():
    data = copy.deepcopy(CLUSTER)
    data["spec"]["pools"].append({"name": "npu", "device": "gaudi2", "count": 2, "pricePerHour": 2})
    parse_document(data, known=known_ids())


def test_yaml_duplicate_keys_and_syntax_errors_are_located():
    with pytest.raises(SpecError, match=r"line 2, column 1: duplicate key 'kind'"):
        load_yaml("kind: AgentGraph\nkind: Cluster\n")
    with pytest.raises(SpecError, match=r"invalid YAML: line 2, column 1: expected ',' or '\]'"):
        load_yaml("a: [1, 2\n")
    with pytest.raises(SpecError, match="expected one YAML document, found 2"):
        load_yaml("a: 1\n---\nb: 2\n")


def test_a_document_must_be_a_mapping():
    assert issues_of(["not", "a", "mapping"]) == [  # type: ignore[arg-type]
        "a document must be a mapping with apiVersion, kind, metadata, spec"
    ]


def test_model_kinds_fit_their_use():
    data = graph(models={"chat": {"id": "minilm-l6"}, "embed": {"id": "llama-3.1-8b"}})
    assert issues_of(data, known=known_ids()) == [
        "spec.indexes.docs.embeddingModel: embed is not an embedding (encoder) model",
        "spec.nodes[1].model: chat is an embedding model; use a generative one",
    ]


@pytest.mark.parametrize(
    ("declared", "ok"),
    [
        ({"type": "integer", "default": 3}, True),
        ({"type": "integer", "default": "3"}, False),
        ({"type": "integer", "default": True}, False),
        ({"type": "boolean", "default": False}, True),
        ({"type": "number", "default": 2}, True),
        ({"type": "array", "default": {}}, False),
        ({"type": "string", "default": None}, True),
    ],
)
def test_input_default_matches_its_type(declared, ok):
    data = graph(inputs={"question": {}, "extra": declared})
    if ok:
        parse_document(data)
    else:
        (issue,) = issues_of(data)
        assert issue.startswith("spec.inputs.extra: default ") and "is not of type" in issue


def test_agent_tool_resources_name_its_tools():
    fields = AGENT | {"toolResources": {"shell": {"memory": "4Gi"}}}
    document = parse_document(graph(nodes=[node("x", **fields)], outputs={}))
    assert document.node("x").tool_resources["shell"].memory == "4Gi"
    fields = AGENT | {"toolResources": {"python": {"memory": "4Gi"}}}
    (issue,) = issues_of(graph(nodes=[node("x", **fields)], outputs={}))
    assert issue == "spec.nodes[0]: toolResources names tools not in tools: python"


def test_policy_names_get_a_readable_hint():
    (issue,) = issues_of(graph(policies={"scheduling": "Program FCFS"}))
    assert issue == (
        "spec.policies.scheduling: 'Program FCFS' is not valid: a name is lowercase letters, "
        "digits, '-' and '.' (at most 63), like program-fcfs"
    )


def test_rented_pool_cannot_take_a_purchase_price():
    data = copy.deepcopy(CLUSTER)
    data["spec"]["pools"][0]["purchasePrice"] = 1000
    assert issues_of(data) == [
        "spec.pools[0].purchasePrice: purchasePrice applies to owned pools only"
    ]
