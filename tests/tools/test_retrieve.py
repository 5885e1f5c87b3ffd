"""`retrieve` answers from a real index: MiniLM embeddings of the examples' documents, on disk."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hetagent.tools import vectorstore
from hetagent.tools.cli import app
from hetagent.tools.registry import ToolContext

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "agents"


@pytest.mark.parametrize(
    ("question", "document"),
    [
        ("What does error code E3 on the display mean?", "05-troubleshooting.md"),
        ("How often do I need to descale the machine?", "04-cleaning.md"),
        ("What grind size and dose should I use for a double espresso?", "03-brewing.md"),
        ("How long is the warranty on the boiler?", "05-troubleshooting.md"),
    ],
)
def test_question_ranks_the_document_about_it_first(manual_index, question, document):
    hits = manual_index.query(question, k=3)
    assert hits[0].source == document, [(h.source, round(h.score, 3)) for h in hits]
    assert hits[0].score > hits[-1].score or len({h.source for h in hits}) == 1


def test_embeddings_are_the_real_minilm_model():
    # Reference values of sentence-transformers/all-MiniLM-L6-v2 for "hello world".
    vector = vectorstore.embedder().encode(["hello world"])[0]
    assert vector.shape == (384,)
    np.testing.assert_allclose(vector[:3], [-0.0344773, 0.0310232, 0.0067350], atol=1e-4)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5


def test_retrieve_node_outputs_cite_their_sources(manual_index):
    outputs = vectorstore.retrieve_outputs(manual_index, "descaling procedure", k=2)
    assert outputs["text"].startswith("[04-cleaning.md]\n")
    assert len(outputs["documents"]) == 2
    assert {"source", "text", "score", "heading"} <= outputs["documents"][0].keys()


def test_retrieve_tool_answers_from_the_index(registry, sandbox, manual_index):
    ctx = ToolContext(sandbox, indexes=lambda name: {"manual": manual_index}[name])
    result = registry.call("retrieve", {"query": "E3 pump blocked", "index": "manual", "k": 1}, ctx)
    assert result.ok
    assert result.value[0]["source"] == "05-troubleshooting.md"
    assert result.stdout.startswith("[05-troubleshooting.md]")


def test_agent_retrieve_tool_finds_the_graphs_declared_index(
    registry, sandbox, rag_graph, index_store, manual_index
):
    indexes = vectorstore.graph_indexes(rag_graph, EXAMPLES, root=index_store)
    ctx = ToolContext(sandbox, indexes=indexes)
    result = registry.call("retrieve", {"query": "how often to descale", "index": "manual"}, ctx)
    assert result.value[0]["source"] == "04-cleaning.md"
    assert (
        "no index 'notes'" in registry.call("retrieve", {"query": "x", "index": "notes"}, ctx).error
    )


def test_retrieve_tool_names_an_unknown_index(registry, ctx, index_store):
    result = registry.call("retrieve", {"query": "anything", "index": "no-such-index"}, ctx)
    assert not result.ok and "no index 'no-such-index'" in result.error


def test_index_persists_and_reopens_by_name(manual_index, index_store):
    assert manual_index.name == "rag-qa.manual"
    reopened = vectorstore.open_index("rag-qa.manual", index_store)
    assert len(reopened) == len(manual_index) > 5
    question = "What does error code E3 mean?"
    assert [h.text for h in reopened.query(question)] == [
        h.text for h in manual_index.query(question)
    ]
    assert {p.name for p in reopened.path.iterdir()} == {
        "index.usearch",
        "chunks.sqlite",
        "meta.json",
    }


def test_chunks_respect_the_declared_token_budget(manual_index):
    embed = vectorstore.embedder()
    texts = [h.text for h in manual_index.query("machine", k=len(manual_index))]
    assert max(embed.count_tokens(texts)) <= manual_index.meta["chunk_tokens"] == 200


def test_directory_of_documents_is_indexed(index_store):
    from hetagent.documents import load_file

    graph = load_file(EXAMPLES / "quickstart.yaml")
    index = vectorstore.graph_index(graph, "notes", EXAMPLES, root=index_store)
    hit = index.query("What is the capital recovery factor of an owned GPU?", k=1)[0]
    assert hit.source == "owned-devices.md"


def test_unchanged_documents_reuse_the_index_and_changed_ones_rebuild_it(docs_copy, index_store):
    first = vectorstore.ensure_index("copy", docs_copy, chunk_tokens=128, root=index_store)
    again = vectorstore.ensure_index("copy", docs_copy, chunk_tokens=128, root=index_store)
    assert again.meta["fingerprint"] == first.meta["fingerprint"]
    assert os.path.samefile(again.path / "index.usearch", first.path / "index.usearch")
    (docs_copy / "06-milk.md").write_text("# Milk frothing\n\nUse cold whole milk for microfoam.\n")
    rebuilt = vectorstore.ensure_index("copy", docs_copy, chunk_tokens=128, root=index_store)
    assert rebuilt.meta["files"] == first.meta["files"] + 1
    assert rebuilt.query("how do I froth milk", k=1)[0].source == "06-milk.md"


def test_index_of_a_graph_needs_the_minilm_encoder(rag_graph, index_store):
    graph = rag_graph.model_copy(deep=True)
    graph.spec.models["embed"].id = "llama-3.1-8b"
    with pytest.raises(vectorstore.VectorIndexError, match="only minilm-l6 embeddings"):
        vectorstore.graph_index(graph, "manual", EXAMPLES, root=index_store)


def test_missing_documents_and_bad_names_are_one_line_errors(tmp_path, index_store):
    with pytest.raises(vectorstore.VectorIndexError, match="no such file or directory"):
        vectorstore.build_index("x", tmp_path / "absent", root=index_store)
    with pytest.raises(vectorstore.VectorIndexError, match="index name"):
        vectorstore.build_index("../up", tmp_path, root=index_store)
    with pytest.raises(vectorstore.VectorIndexError, match="build it with"):
        vectorstore.open_index("never-built", index_store)


def test_cli_builds_and_queries_an_index(docs_copy, index_store):
    runner = CliRunner()
    built = runner.invoke(app, ["build", str(docs_copy), "--name", "cli-manual"])
    assert built.exit_code == 0, built.output
    assert "chunks from 5 files" in built.output
    found = runner.invoke(app, ["query", "cli-manual", "error code E3", "-k", "2", "--json"])
    assert found.exit_code == 0
    assert json.loads(found.output)[0]["source"] == "05-troubleshooting.md"


def test_cli_syncs_the_indexes_an_agent_declares(index_store):
    result = CliRunner().invoke(app, ["sync", str(EXAMPLES / "quickstart.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("index quickstart.notes: ")
    assert vectorstore.open_index("quickstart.notes").meta["chunk_tokens"] == 128


def test_cli_sync_of_an_agent_without_indexes_exits_2(index_store):
    result = CliRunner().invoke(app, ["sync", str(EXAMPLES / "coding-agent.yaml")])
    assert result.exit_code == 2 and "declares no spec.indexes" in result.output


def test_cli_unknown_index_exits_2_with_one_line(index_store):
    result = CliRunner().invoke(app, ["query", "no-such-index", "anything"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no index named" in result.output
