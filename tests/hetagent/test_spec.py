"""AgentGraph and Cluster validation: what is accepted, and that every rejection names its path."""

import copy

import pytest

from hetagent.documents import known_ids
from hetagent.spec import (
    NODE_TYPES,
    AgentGraph,
    Cluster,
    Issue,
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
    assert issue.startswith("spec.nodes[2].args.command: malformed reference '${HOME}'")
    shell["args"]["command"] = "echo $${HOME}"
    parse_document(graph(nodes=[*GRAPH["spec"]["nodes"], shell]))


def test_unterminated_reference_is_malformed():
    data = graph()
    data["spec"]["nodes"][1]["prompt"] = "${inputs.question and more"
    (issue,) = issues_of(data)
    assert issue.startswith(
        "spec.nodes[1].prompt: malformed reference '${inputs.question and more'; use "
    )


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


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("fields", "issue"),
    [
        ({"model": "chat"}, "spec.nodes[0]: give prompt or messages"),
        (
            {"model": "chat", "prompt": "a", "messages": [USER]},
            "spec.nodes[0]: give prompt or messages, not both",
        ),
        (
            {"model": "chat", "messages": []},
            "spec.nodes[0].messages: List should have at least 1 item after validation, not 0",
        ),
        (
            {"model": "chat", "prompt": "a", "maxTokens": 8, "expectedOutputTokens": 9},
            "spec.nodes[0].expectedOutputTokens: expectedOutputTokens cannot exceed maxTokens",
        ),
    ],
)
def test_llm_node_rules_point_at_their_field(fields, issue):
    assert issues_of(graph(nodes=[node("x", type="llm", **fields)], outputs={})) == [issue]


AGENT = {"type": "agent", "model": "chat", "instructions": "i", "prompt": "p", "tools": ["shell"]}


@pytest.mark.parametrize(
    ("fields", "issue"),
    [
        ({"maxTurns": 5, "p95Turns": 6}, "p95Turns: p95Turns cannot exceed maxTurns"),
        (
            {"p95Turns": 3, "expectedTurns": 4},
            "expectedTurns: expectedTurns cannot exceed p95Turns (or maxTurns)",
        ),
        (
            {"expectedToolSeconds": {"python": 1}},
            "expectedToolSeconds.python: 'python' is not in tools",
        ),
        ({"tools": ["shell", "shell"]}, "tools[1]: 'shell' is listed twice"),
        (
            {"maxTokens": 8, "expectedOutputTokens": 9},
            "expectedOutputTokens: expectedOutputTokens cannot exceed maxTokens",
        ),
    ],
)
def test_agent_node_rules_point_at_their_field(fields, issue):
    assert issues_of(graph(nodes=[node("x", **AGENT | fields)], outputs={})) == [
        f"spec.nodes[0].{issue}"
    ]


def test_tool_names_are_builtins_or_module_function():
    for name in ("shell", "files.read", "my_pkg.tools:count_words"):
        parse_document(graph(nodes=[node("t", type="tool", tool=name)], outputs={}))
    (issue,) = issues_of(graph(nodes=[node("t", type="tool", tool="rm -rf")], outputs={}))
    assert issue == (
        "spec.nodes[0].tool: 'rm -rf' is not valid: a tool is a built-in (shell, python, "
        "files.read) or a Python function as module:function"
    )


def test_transform_needs_template_or_valid_parse():
    regex = {"input": "x", "format": "regex"}
    for fields, start in [
        ({}, "spec.nodes[0]: give template or parse"),
        ({"template": "t", "parse": regex | {"pattern": "a"}}, "spec.nodes[0]: give template"),
        ({"parse": regex}, "spec.nodes[0].parse.pattern: format regex needs a pattern"),
        ({"parse": regex | {"pattern": "("}}, "spec.nodes[0].parse.pattern: pattern is not a"),
        ({"parse": regex | {"pattern": "a{99999999999}"}}, "spec.nodes[0].parse.pattern: "),
        ({"parse": regex | {"pattern": "(" * 2000 + ")" * 2000}}, "spec.nodes[0].parse.pattern"),
        (
            {"parse": {"input": "x", "format": "json", "pattern": "a"}},
            "spec.nodes[0].parse.pattern: pattern applies only",
        ),
    ]:
        (issue,) = issues_of(graph(nodes=[node("t", type="transform", **fields)], outputs={}))
        assert issue.startswith(start), issue


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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu", "nan"),
        ("cpu", "infm"),
        ("cpu", float("inf")),
        ("cpu", float("nan")),
        ("cpu", "9" * 400),  # a float overflows to inf
        ("cpu", True),
        ("cpu", [1]),
        ("cpu", "0m"),
        ("memory", "9" * 300 + "Ti"),  # overflowed a float, then int()
        ("memory", True),
        ("memory", 0),
        ("memory", "\u0665Mi"),  # ARABIC-INDIC DIGIT FIVE: a digit, but not a quantity
    ],
)
def test_resource_quantities_are_finite_positive_and_one_issue(field, value):
    bad = node("t", type="tool", tool="shell", resources={field: value})
    (issue,) = issues_of(graph(nodes=[bad], outputs={}))
    assert issue.startswith(f"spec.nodes[0].resources.{field}: {field} ")


def test_resource_quantities_keep_their_written_form():
    for resources in ({"memory": "64Mi", "cpu": "500m"}, {"memory": 1048576, "cpu": 2}):
        good = node("t", type="tool", tool="shell", resources=resources)
        parsed = parse_document(graph(nodes=[good], outputs={}))
        assert parsed.to_dict()["spec"]["nodes"][0]["resources"] == resources
    assert memory_bytes("1.5Ki") == 1536 and memory_bytes("9" * 30 + "Ti") == int("9" * 30) * 2**40
    assert cpu_cores(" 250m ") == 0.25
    with pytest.raises(ValueError, match="not a quantity"):
        cpu_cores("inf")


def test_numbers_are_typed_strictly_and_finite():
    data = graph()
    answer = data["spec"]["nodes"][1]
    answer |= {"maxTokens": True, "temperature": 1, "timeoutSeconds": float("inf")}
    data["spec"]["slo"] = {"p95LatencySeconds": float("nan"), "ttftSeconds": "1"}
    assert issues_of(data) == [
        "spec.slo.p95LatencySeconds: Input should be a finite number",
        "spec.slo.ttftSeconds: Input should be a valid number",
        "spec.nodes[1].timeoutSeconds: Input should be a finite number",
        "spec.nodes[1].maxTokens: Input should be a valid integer",
    ]  # and an integer temperature is a number


def test_keys_are_camel_case_only():
    data = graph()
    data["spec"]["nodes"][1]["max_tokens"] = data["spec"]["nodes"][1].pop("maxTokens")
    assert issues_of(data) == [
        "spec.nodes[1].max_tokens: unknown field 'max_tokens'; remove it or check its spelling "
        "(keys are camelCase)"
    ]


def test_a_bad_mapping_key_names_the_mapping_and_the_key():
    assert issues_of(graph(inputs={"question": {}, "bad name": {}})) == [
        "spec.inputs: key 'bad name' is not valid: a name starts with a letter, then letters, "
        "digits, '_' or '-' (at most 63)"
    ]
    shell = node("run", type="tool", tool="shell", args={1: "x", "a\nb": "${"})
    assert issues_of(graph(nodes=[shell], outputs={})) == [
        "spec.nodes[0].args: key 1 is not valid: Input should be a valid string"
    ]
    del shell["args"][1]
    (issue,) = issues_of(graph(nodes=[shell], outputs={}))
    assert issue.startswith("spec.nodes[0].args['a\\nb']: malformed reference '${'")
    data = graph()
    data["spec"][None] = "x"
    assert issues_of(data) == ["spec: key 'None' is not valid: Keys should be strings"]


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


def yaml_issue(text: str) -> Issue:
    with pytest.raises(SpecError) as error:
        load_yaml(text)
    (issue,) = error.value.issues
    return issue


def test_yaml_duplicate_keys_and_syntax_errors_are_located():
    issue = yaml_issue("kind: AgentGraph\nkind: Cluster\n")
    assert (issue.line, issue.message) == (2, "invalid YAML: duplicate key 'kind' (column 1)")
    assert str(issue) == "line 2: invalid YAML: duplicate key 'kind' (column 1)"
    issue = yaml_issue("a: [1, 2\n")
    assert issue.line == 2 and issue.message.startswith("invalid YAML: expected ',' or ']'")
    assert yaml_issue("a: 1\n---\nb: 2\n").message == "expected one YAML document, found 2"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: 1\nargs: {[1, 2]: x}\n", 2, "a key must be a string, not a sequence"),
        ("a: 1\nb: {? {c: 1} : x}\n", 2, "a key must be a string, not a mapping"),
        ("a: &r [*r]\n", 1, "an alias refers to a node that contains it: a recursive structure"),
        ("a: &r {b: *r}\n", 1, "an alias refers to a node that contains it: a recursive structure"),
        (
            "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"a{i + 1}: &a{i + 1} [{', '.join([f'*a{i}'] * 10)}]\n" for i in range(8)),
            1,  # where the expansion crosses the limit: inside the first anchor
            "aliases expand the document to over 100,000 values",
        ),
        ("a: " + "[" * 150 + "]" * 150, 1, "the document is nested more than 100 levels deep"),
        ("a: b\x01c\n", 1, "character '\\x01' is not allowed; escape it"),
        ("a: {<<: 5}\n", 1, "expected a mapping or list of mappings for merging, but found scalar"),
    ],
)
def test_yaml_that_would_crash_hang_or_lose_data_is_rejected_with_its_line(text, line, message):
    issue = yaml_issue(text)
    assert issue.line == line
    assert issue.message.startswith(f"invalid YAML: {message}")
    assert len(str(issue).splitlines()) == 1


def test_yaml_nested_beyond_the_parser_is_rejected():
    issue = yaml_issue("a: " + "[" * 5000 + "]" * 5000)
    assert issue.message == "invalid YAML: the document is nested more than 100 levels deep"


def test_yaml_merge_keys_and_anchors_work():
    text = "base: &b {x: 1, k: 0}\nmid: {n: &m {<<: *b, k: 1}}\ntop: {<<: *m, k: 2, y: [*b]}\n"
    assert load_yaml(text) == {
        "base": {"x": 1, "k": 0},
        "mid": {"n": {"x": 1, "k": 1}},
        "top": {"x": 1, "k": 2, "y": [{"x": 1, "k": 0}]},
    }


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
        ({"type": "number", "default": float("inf")}, False),
    ],
)
def test_input_default_matches_its_type(declared, ok):
    data = graph(inputs={"question": {}, "extra": declared})
    if ok:
        parse_document(data)
    else:
        (issue,) = issues_of(data)
        assert issue.startswith("spec.inputs.extra.default: default ") and "is not of type" in issue


def test_agent_tool_resources_name_its_tools():
    fields = AGENT | {"toolResources": {"shell": {"memory": "4Gi"}}}
    document = parse_document(graph(nodes=[node("x", **fields)], outputs={}))
    assert document.node("x").tool_resources["shell"].memory == "4Gi"
    fields = AGENT | {"toolResources": {"python": {"memory": "4Gi"}}}
    (issue,) = issues_of(graph(nodes=[node("x", **fields)], outputs={}))
    assert issue == "spec.nodes[0].toolResources.python: 'python' is not in tools"


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


def test_an_explicit_null_default_round_trips_as_optional():
    data = graph(inputs={"question": {}, "style": {"default": None}})
    document = parse_document(data)
    again = AgentGraph.from_yaml(document.to_yaml())
    assert again == document and not again.spec.inputs["style"].required
    assert again.to_dict()["spec"]["inputs"]["style"] == {"default": None}


def test_node_types_are_those_of_the_node_models():
    assert {"llm", "tool", "retrieve", "transform", "agent", "subgraph"} == NODE_TYPES


def test_an_unknown_field_spelled_like_pydantics_key_marker_is_named():
    assert issues_of({**GRAPH, "[key]": None}) == [
        "['[key]']: unknown field '[key]'; remove it or check its spelling"
    ]
