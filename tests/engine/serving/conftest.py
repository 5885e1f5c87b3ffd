"""Fixtures for the serving side of the engine: a tiny random-weight Llama (mechanics: block
counts, ordering, lease states) and the real SmolLM2-135M (continuations that must match)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hetagent.backends.local.engine.batch import SamplingParams
from hetagent.backends.local.engine.engine import LLMEngine


class FakeClock:
    """The engine's clock, moved by the test (lease deadlines without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    """Two layers of 64 wide with the byte-level tokenizer: fast, noisy output."""
    from hetagent.backends.local.engine.model import LlamaModel, ModelConfig
    from hetagent.backends.local.engine.tokenizer import Tokenizer
    from hetagent.backends.local.engine.weights import init_dummy

    tokenizer = Tokenizer.bytes_only()
    config = ModelConfig(
        name="tiny",
        layers=2,
        hidden_size=64,
        heads=4,
        kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=tokenizer.vocab_size,
        max_context=1024,
    )
    model = LlamaModel(config)
    init_dummy(model, seed=0)
    return SimpleNamespace(model=model, tokenizer=tokenizer, config=config, name="tiny")


@pytest.fixture(scope="session")
def smollm() -> Any:
    """The real SmolLM2-135M-Instruct from the model cache (`hetagent models pull smollm2-135m`)."""
    from hetagent.backends.local.engine.models import load

    return load("smollm2-135m")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_engine(clock: FakeClock):
    def make(loaded: Any, **options: Any) -> LLMEngine:
        options.setdefault("clock", clock)
        options.setdefault("block_size", 4)
        options.setdefault("num_blocks", 64)
        return LLMEngine(loaded, **options)

    return make


GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0)


@pytest.fixture
def params():
    return greedy


@pytest.fixture(scope="module")
def server_url(smollm):
    """`hetagent engine serve`'s app on SmolLM2, on a free loopback port, in a thread."""
    import socket
    import threading
    import time

    import uvicorn

    from hetagent.backends.local.engine.engine import AsyncLLMEngine
    from hetagent.backends.local.engine.server import build_app

    engine = LLMEngine(smollm, kv_memory_mb=32, block_size=16)
    server = uvicorn.Server(uvicorn.Config(build_app(AsyncLLMEngine(engine)), log_level="warning"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(600):  # readiness, not timing: wait until uvicorn says it listens
        if server.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "the test server did not start"
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()
