"""`hetagent index`: build and query vector indexes of text documents.

hetagent index build examples/agents/data/rag-docs --name manual
hetagent index query manual "how do I descale the machine?" -k 3
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Build and query vector indexes (MiniLM embeddings, usearch).")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


@app.command()
def build(
    documents: Annotated[str, typer.Argument(help="A directory, file or glob of text files.")],
    name: Annotated[str, typer.Option("--name", help="The index name.")],
    chunk_tokens: Annotated[int, typer.Option(help="Most tokens per chunk.")] = 256,
) -> None:
    """Embed every text file under DOCUMENTS into the index NAME (replacing it)."""
    from hetagent.tools import vectorstore

    try:
        index = vectorstore.build_index(name, documents, base=Path.cwd(), chunk_tokens=chunk_tokens)
    except vectorstore.VectorIndexError as exc:
        _fail(str(exc))
    meta = index.meta
    print(f"index {name}: {meta['chunks']} chunks from {meta['files']} files -> {index.path}")


@app.command()
def sync(
    agent: Annotated[Path, typer.Argument(help="An AgentGraph YAML file.")],
) -> None:
    """Build (or refresh, when its documents changed) every index AGENT declares in
    spec.indexes, named <agent name>.<index key>."""
    from hetagent.documents import DocumentError, load_file
    from hetagent.spec import AgentGraph
    from hetagent.tools import vectorstore

    try:
        graph = load_file(agent)
    except DocumentError as exc:
        _fail(str(exc).splitlines()[0])
    if not isinstance(graph, AgentGraph):
        _fail(f"{agent} is not an AgentGraph")
    if not graph.spec.indexes:
        _fail(f"{agent} declares no spec.indexes")
    for key in graph.spec.indexes:
        try:
            index = vectorstore.graph_index(graph, key, agent.resolve().parent)
        except vectorstore.VectorIndexError as exc:
            _fail(str(exc))
        print(f"index {index.name}: {index.meta['chunks']} chunks from {index.meta['files']} files")


@app.command()
def query(
    name: Annotated[str, typer.Argument(help="The index name.")],
    text: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many passages.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
) -> None:
    """Print the passages of index NAME closest in meaning to TEXT, best first."""
    from hetagent.tools import vectorstore

    try:
        hits = vectorstore.open_index(name).query(text, k=k)
    except vectorstore.VectorIndexError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps([hit.as_dict() for hit in hits], indent=1))
        return
    for rank, hit in enumerate(hits, 1):
        print(f"{rank}. [{hit.source}] score {hit.score:.3f}")
        print("   " + hit.text.strip().replace("\n", "\n   "))
