"""The background-thread engine behind the server: concurrent streams, early close aborts."""

import asyncio

from hetagent.backends.local.engine.batch import SamplingParams
from hetagent.backends.local.engine.engine import AsyncLLMEngine


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0)


def test_concurrent_streams_get_the_same_tokens_as_one_at_a_time(make_engine, tiny_model):
    prompts = [[(7 * i + j) % 250 for j in range(12)] for i in range(3)]
    alone = [make_engine(tiny_model).generate(p, greedy(6)).output_token_ids for p in prompts]
    engine = AsyncLLMEngine(make_engine(tiny_model))
    engine.start()

    async def collect(prompt):
        return [t async for out in engine.generate(prompt, greedy(6)) for t in out.new_token_ids]

    async def main():
        return await asyncio.gather(*(collect(p) for p in prompts))

    try:
        assert asyncio.run(main()) == alone
    finally:
        engine.shutdown()


def test_closing_a_stream_early_aborts_the_request_and_frees_its_blocks(make_engine, tiny_model):
    inner = make_engine(tiny_model)
    engine = AsyncLLMEngine(inner)
    engine.start()

    async def main():
        stream = engine.generate(list(range(20)), greedy(200))
        await anext(stream)
        await stream.aclose()
        # the abort travels through the engine thread's inbox; a later request completing
        # proves the inbox (and so the abort) was processed
        async for _ in engine.generate(list(range(30, 40)), greedy(1)):
            pass

    try:
        asyncio.run(main())
        metrics = engine.metrics()
        assert (metrics.running, metrics.waiting, metrics.kv.used_blocks) == (0, 0, 0)
        assert metrics.counters.finished.get("abort") == 1
    finally:
        engine.shutdown()
