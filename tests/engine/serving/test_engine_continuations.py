"""What a user relies on with the real SmolLM2-135M: reusing KV (prefix cache, leases,
preemption, export/import) never changes the greedy continuation."""

from hetagent.backends.local.engine.batch import SamplingParams
from hetagent.backends.local.engine.request import Hints

QUESTION = [{"role": "user", "content": "Name three colors of the rainbow."}]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0)


def _second_turn(tokenizer, first_answer: str) -> list[dict]:
    return [
        *QUESTION,
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "And three more?"},
    ]


def test_reused_prefix_gives_the_same_continuation_as_a_cold_run(make_engine, smollm):
    warm = make_engine(smollm, block_size=16, num_blocks=64)
    first = warm.generate(messages=QUESTION, params=greedy(24))
    follow_up = _second_turn(smollm.tokenizer, first.text)
    reused = warm.generate(messages=follow_up, params=greedy(16))
    cold = make_engine(smollm, block_size=16, num_blocks=64).generate(
        messages=follow_up, params=greedy(16)
    )
    assert reused.num_cached_tokens >= 16
    assert cold.num_cached_tokens == 0
    assert reused.output_token_ids == cold.output_token_ids
    assert reused.text.strip()


def test_lease_across_a_tool_call_continues_like_a_cold_run(make_engine, smollm, clock):
    engine = make_engine(
        smollm,
        block_size=16,
        num_blocks=64,
        kv_retention="fixed-ttl",
        kv_retention_options={"seconds": 0.5, "then": "demote"},
    )
    hints = Hints(program_id="agent-1", turn=0, tool="bash", tool_seconds=1.0)
    first = engine.generate(messages=QUESTION, params=greedy(24), hints=hints)
    clock.advance(1.0)
    engine.step()  # the lease expires: demoted to host memory
    assert engine.metrics().kv.demoted_blocks > 0
    follow_up = _second_turn(smollm.tokenizer, first.text)
    second = engine.generate(
        messages=follow_up, params=greedy(16), hints=Hints(program_id="agent-1", turn=1)
    )
    cold = make_engine(smollm, block_size=16, num_blocks=64).generate(
        messages=follow_up, params=greedy(16)
    )
    assert second.num_cached_tokens >= 16
    assert second.output_token_ids == cold.output_token_ids


def test_preemption_by_recompute_keeps_greedy_outputs(make_engine, smollm):
    prompts = [
        [{"role": "user", "content": f"Count from {i} to {i + 20}, one number per line."}]
        for i in (1, 30, 60)
    ]
    alone = [
        make_engine(smollm, block_size=16, num_blocks=64).generate(messages=p, params=greedy(40))
        for p in prompts
    ]
    tight = make_engine(smollm, block_size=16, num_blocks=9)  # ~144 tokens for all three
    ids = [tight.add_request(messages=p, params=greedy(40)) for p in prompts]
    done = tight.run_until_done()
    assert tight.counters.preemptions > 0
    for rid, reference in zip(ids, alone, strict=True):
        got = [t for out in done[rid] for t in out.new_token_ids]
        assert got == reference.output_token_ids


def test_preemption_by_swap_to_host_keeps_greedy_outputs(make_engine, smollm):
    prompts = [
        [{"role": "user", "content": f"Count from {i} to {i + 20}, one number per line."}]
        for i in (1, 30, 60)
    ]
    alone = [
        make_engine(smollm, block_size=16, num_blocks=64).generate(messages=p, params=greedy(40))
        for p in prompts
    ]
    tight = make_engine(smollm, block_size=16, num_blocks=9, kv_retention="lease")
    ids = [
        tight.add_request(messages=p, params=greedy(40), hints=Hints(program_id=f"p{i}"))
        for i, p in enumerate(prompts)
    ]
    done = tight.run_until_done()
    stats = tight.metrics().kv
    assert tight.counters.preemptions > 0
    assert stats.swapped_out_blocks > 0 and stats.swapped_in_blocks > 0  # copied, not recomputed
    for rid, reference in zip(ids, alone, strict=True):
        got = [t for out in done[rid] for t in out.new_token_ids]
        assert got == reference.output_token_ids


def test_export_then_import_decodes_on_a_second_engine_like_one_engine(make_engine, smollm):
    whole = make_engine(smollm, block_size=16).generate(messages=QUESTION, params=greedy(20))

    prefill = make_engine(smollm, block_size=16)
    head = prefill.generate(messages=QUESTION, params=greedy(1), keep_kv=True)
    data = prefill.export_kv(head.request_id)
    assert prefill.metrics().kv.used_blocks == 0  # exported and released

    decode = make_engine(smollm, block_size=16)
    rid = decode.import_kv(data, greedy(19))
    outputs = decode.run_until_done()[rid]
    assert decode.counters.computed_tokens == len(outputs)  # decode only, no prefill
    tail = [t for out in outputs for t in out.new_token_ids]
    assert head.output_token_ids + tail == whole.output_token_ids
