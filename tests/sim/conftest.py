import pytest

from hetagent import policies
from hetagent.backends.sim.simulator import Config, Route, Server
from hetagent.backends.sim.traces import Program, Trace, Turn


@pytest.fixture
def config():
    """A config builder: `model` on `replicas` engines of `devices` x `device`, named policies."""

    def build(
        kv: str = "evict",
        sched: str = "program-fcfs",
        model: str = "llama-3.1-8b",
        device: str = "h100",
        devices: int = 1,
        replicas: int = 1,
        **kv_options,
    ) -> Config:
        from hetagent.backends.sim.oracle import Oracle

        server = Server("pool", device, model, devices, replicas)

        def retention(engine):
            if kv == "oracle":
                return Oracle(engine.prefill_seconds)
            return policies.get("kv_retention", kv, **kv_options)

        return Config(
            [server],
            {model: Route(server.key)},
            lambda: policies.get("scheduling", sched),
            retention,
            default_model=model,
            tell_true_tool_seconds=kv == "oracle",
            usd_per_device_second={"pool": 1.0 / 3600},
        )

    return build


@pytest.fixture
def program():
    """A program from (input, output, tool seconds or None) turns."""

    def build(pid: str, arrival: float, *turns: tuple[int, int, float | None]) -> Program:
        return Program(
            pid,
            arrival,
            tuple(Turn(i, o, None if s is None else "bash", s or 0.0) for i, o, s in turns),
        )

    return build


@pytest.fixture
def trace():
    def build(*programs: Program, concurrency: int | None = None) -> Trace:
        header = {"concurrency": concurrency} if concurrency else {}
        return Trace(tuple(sorted(programs, key=lambda p: p.arrival)), header)

    return build
