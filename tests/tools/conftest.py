"""Fixtures of the tool tests: a sandbox per test, the registry, and one real index per session
(loading the MiniLM model once takes a few seconds)."""

import os
import shutil
from pathlib import Path

import pytest

from hetagent.tools.registry import ToolContext, ToolRegistry
from hetagent.tools.sandbox import CallLimits, Sandbox

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "agents"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def sandbox(workspace: Path):
    box = Sandbox(workspace)
    yield box
    box.cleanup()


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry()


@pytest.fixture
def ctx(sandbox: Sandbox) -> ToolContext:
    return ToolContext(sandbox, CallLimits(timeout_seconds=20, cpus=1, pids=128))


@pytest.fixture(scope="session")
def index_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Indexes of the session, never the user's ~/.cache."""
    store = tmp_path_factory.mktemp("indexes")
    previous = os.environ.get("HETAGENT_INDEXES")
    os.environ["HETAGENT_INDEXES"] = str(store)
    yield store
    if previous is None:
        os.environ.pop("HETAGENT_INDEXES", None)
    else:
        os.environ["HETAGENT_INDEXES"] = previous


@pytest.fixture(scope="session")
def rag_graph():
    from hetagent.documents import load_file

    return load_file(EXAMPLES / "rag-qa.yaml")


@pytest.fixture(scope="session")
def manual_index(index_store: Path, rag_graph):
    """The rag-qa example's `manual` index, built from examples/agents/data/rag-docs."""
    from hetagent.tools import vectorstore

    return vectorstore.graph_index(rag_graph, "manual", EXAMPLES, root=index_store)


@pytest.fixture
def docs_copy(tmp_path: Path) -> Path:
    """A private copy of the manual, for tests that change documents."""
    target = tmp_path / "rag-docs"
    shutil.copytree(EXAMPLES / "data" / "rag-docs", target)
    return target
