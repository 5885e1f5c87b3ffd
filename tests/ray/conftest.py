"""One local Ray per test module (each start costs seconds on this machine), started by a
`RayBackend` with every pool the tests place work on; each test's backend uses that Ray, and
shares its named engine actors (a model loads once)."""

from pathlib import Path

import pytest

import hetagent
from hetagent.compiler import compile_plan
from hetagent.orchestrator.store import RunStore
from hetagent.planner.plan import plan_agent

ROOT = Path(__file__).parents[2]
LOCAL = ROOT / "examples/clusters/local.yaml"
POOLS = {"cpu": 1, "a": 1, "b": 1}


@pytest.fixture(scope="module")
def local_ray():
    """The backend that started the module's Ray (and shuts it down after its tests, so the
    rest of the suite does not share the machine with its engines)."""
    import asyncio

    from hetagent.backends.ray.backend import RayBackend

    owner = RayBackend(pools=POOLS)
    owner.connect()
    yield owner
    asyncio.run(owner.close())


@pytest.fixture
def ray_backend(local_ray):
    """Backends of a test on the module's Ray (each test closes its runtimes, which kills
    their tool executors; the engines stay for the next test)."""
    from hetagent.backends.ray.backend import RayBackend

    def make(policies=None, **options) -> RayBackend:
        return RayBackend(policies, kv_memory_mb=64, **options)

    return make


@pytest.fixture
def store(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    yield store
    store.close()


@pytest.fixture
def compile_agent(tmp_path):
    """The plan of an agent (a YAML file, or its text) on this machine's cluster (pool
    `cpu`)."""

    def make(agent: str | Path, name: str = "agent"):
        path = agent
        if isinstance(agent, str):
            path = tmp_path / f"{name}.yaml"
            path.write_text(agent)
        graph = hetagent.load(path)
        return compile_plan(graph, plan_agent(graph, hetagent.load(LOCAL)).placement)

    return make
