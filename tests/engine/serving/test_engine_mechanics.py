"""Continuous batching, admission, program-aware ordering, leases and demotion, on a tiny
random-weight model (the mechanics, not the text)."""

import pytest

from hetagent.backends.local.engine.batch import SamplingParams
from hetagent.backends.local.engine.request import Hints


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0)


def tokens(start: int, n: int) -> list[int]:
    """n distinct byte tokens (the tiny model's vocabulary is bytes)."""
    return [(start + i) % 250 for i in range(n)]


def test_one_step_mixes_decode_of_running_with_prefill_of_new(make_engine, tiny_model):
    engine = make_engine(tiny_model)
    engine.add_request(tokens(10, 10), greedy(20))
    engine.step()  # prefill
    engine.step()  # first decode
    engine.add_request(tokens(100, 15), greedy(5))
    engine.step()
    assert engine.last_step.num_decode_sequences == 1
    assert engine.last_step.num_prefill_sequences == 1


def test_long_prompt_is_prefilled_in_chunks_within_the_token_budget(make_engine, tiny_model):
    engine = make_engine(tiny_model, max_num_batched_tokens=8)
    rid = engine.add_request(tokens(0, 20), greedy(2))
    sizes, first_output_step = [], None
    for step in range(10):
        outputs = engine.step()
        sizes.append(engine.last_step.num_tokens)
        if outputs and first_output_step is None:
            first_output_step = step
        if not engine.has_unfinished():
            break
    assert sizes[:3] == [8, 8, 4]
    assert first_output_step == 2
    assert rid not in engine.requests  # finished and forgotten


def test_request_waits_for_free_blocks_then_runs(make_engine, tiny_model):
    engine = make_engine(tiny_model, num_blocks=8, block_size=4)  # 32 token slots
    first = engine.add_request(tokens(0, 24), greedy(4))  # its prompt takes 6 blocks
    second = engine.add_request(tokens(50, 12), greedy(4))  # 3 more do not fit: it waits
    engine.step()
    assert engine.metrics().running == 1
    assert engine.metrics().waiting == 1
    done = engine.run_until_done()
    assert done[first][-1].finished and done[second][-1].finished
    assert engine.metrics().kv.used_blocks == 0


def test_preemption_by_recompute_under_a_tiny_kv_budget_finishes_everything(
    make_engine, tiny_model
):
    engine = make_engine(tiny_model, num_blocks=10, block_size=4)
    ids = [engine.add_request(tokens(40 * i, 10), greedy(16)) for i in range(3)]
    done = engine.run_until_done()
    assert engine.counters.preemptions > 0
    for rid in ids:
        assert done[rid][-1].finished
    assert engine.metrics().kv.used_blocks == 0


@pytest.mark.parametrize(("policy", "first_served"), [("program-fcfs", "a"), ("fcfs", "b")])
def test_program_fcfs_serves_a_programs_next_turn_before_newer_programs(
    make_engine, tiny_model, clock, policy, first_served
):
    engine = make_engine(tiny_model, scheduling=policy, max_num_seqs=1)
    engine.generate(tokens(0, 8), greedy(2), Hints(program_id="a", turn=0))  # a started first
    clock.advance(1)
    engine.add_request(tokens(20, 8), greedy(4), Hints(program_id="x"))
    engine.step()  # x occupies the only slot
    clock.advance(1)
    b = engine.add_request(tokens(40, 8), greedy(2), Hints(program_id="b", turn=0))
    clock.advance(1)
    a2 = engine.add_request(tokens(60, 8), greedy(2), Hints(program_id="a", turn=1))
    first = None
    while first is None:
        for out in engine.step():
            if out.request_id in (a2, b) and first is None:
                first = "a" if out.request_id == a2 else "b"
    assert first == first_served


def _program_then_interference(engine, clock, prompt):
    """Turn 0 of program p, then a 'tool call' during which two other requests run, each
    needing most of the pool; returns turn 0's request."""
    turn0 = engine.generate(prompt, greedy(4), Hints(program_id="p", turn=0, tool="bash"))
    for i in range(2):
        clock.advance(0.5)
        engine.generate(tokens(100 + 50 * i, 44), greedy(2))
    clock.advance(0.5)
    return turn0


def test_lease_held_across_short_tool_call_saves_prefill(make_engine, tiny_model, clock):
    prompt = tokens(0, 32)  # 8 full blocks of 4
    results = {}
    for policy in ("fixed-ttl", "evict"):
        engine = make_engine(
            tiny_model, num_blocks=20, kv_retention=policy, max_num_batched_tokens=64
        )
        turn0 = _program_then_interference(engine, clock, prompt)
        context = turn0.all_token_ids + tokens(200, 5)
        turn1 = engine.generate(context, greedy(2), Hints(program_id="p", turn=1))
        results[policy] = turn1
    held, evicted = results["fixed-ttl"], results["evict"]
    assert held.num_cached_tokens == 32
    assert evicted.num_cached_tokens == 0
    assert held.num_forward_tokens == evicted.num_forward_tokens - 32


# a host link too slow to be worth copying over: `lease` keeps its KV on the device until
# memory is needed, then releases it
SLOW_HOST = {"host_bytes_per_second": 1e3}


@pytest.mark.parametrize(
    ("policy", "options", "preempted"),
    [("lease", SLOW_HOST, False), ("fixed-ttl", {"seconds": 60.0}, True)],
)
def test_a_lease_yields_its_blocks_before_a_running_request_is_preempted(
    make_engine, tiny_model, clock, policy, options, preempted
):
    engine = make_engine(
        tiny_model, num_blocks=20, kv_retention=policy, kv_retention_options=options
    )
    engine.generate(tokens(0, 32), greedy(3), Hints(program_id="p", tool="bash"))
    assert engine.metrics().kv.leased_blocks == 8  # held: nobody needs the memory yet
    clock.advance(1.0)
    # 40 prompt + 24 output tokens need 16 blocks; 12 are free, so it runs short while decoding
    other = engine.generate(tokens(100, 40), greedy(24))
    assert other.finished
    assert (engine.counters.preemptions > 0) is preempted


def test_lease_is_released_by_policy_after_its_ttl(make_engine, tiny_model, clock):
    engine = make_engine(
        tiny_model, kv_retention="fixed-ttl", kv_retention_options={"seconds": 2.0}
    )
    engine.generate(tokens(0, 32), greedy(3), Hints(program_id="p", tool="search"))
    stats = engine.metrics().kv
    assert (stats.num_leases, stats.leased_blocks) == (1, 8)
    clock.advance(1.0)
    engine.step()
    assert engine.metrics().kv.num_leases == 1
    clock.advance(1.5)
    engine.step()
    stats = engine.metrics().kv
    assert (stats.num_leases, stats.leased_blocks, stats.used_blocks) == (0, 0, 0)
    assert stats.cached_free_blocks == 8  # released into the prefix cache, still reusable


def test_last_turn_is_never_leased(make_engine, tiny_model):
    engine = make_engine(tiny_model, kv_retention="fixed-ttl")
    engine.generate(tokens(0, 32), greedy(3), Hints(program_id="p", last_turn=True))
    assert engine.metrics().kv.num_leases == 0


def test_demoted_lease_is_swapped_back_in_and_continues_identically(make_engine, tiny_model, clock):
    prompt = tokens(0, 32)
    outputs = {}
    for then in ("demote", "release"):
        engine = make_engine(
            tiny_model,
            num_blocks=20,
            kv_retention="fixed-ttl",
            kv_retention_options={"seconds": 10.0 if then == "release" else 0.1, "then": then},
            max_num_batched_tokens=64,
        )
        turn0 = engine.generate(prompt, greedy(4), Hints(program_id="p", turn=0))
        clock.advance(0.5)
        engine.step()  # the policy runs: demote (or keep holding)
        if then == "demote":
            stats = engine.metrics().kv
            assert (stats.demoted_blocks, stats.leased_blocks) == (8, 0)
        for i in range(2):  # other traffic takes the whole pool: the device copies are gone
            engine.generate(tokens(100 + 50 * i, 44), greedy(2))
        context = turn0.all_token_ids + tokens(200, 5)
        turn1 = engine.generate(context, greedy(6), Hints(program_id="p", turn=1))
        assert turn1.num_cached_tokens == 32  # no re-prefill of the first turn
        outputs[then] = turn1.output_token_ids
        if then == "demote":
            stats = engine.metrics().kv
            assert (stats.swapped_out_blocks, stats.swapped_in_blocks) == (8, 8)
            assert stats.demoted_blocks == 0
    assert outputs["demote"] == outputs["release"]


def test_stop_string_max_tokens_and_stop_token_set_the_finish_reason(make_engine, tiny_model):
    engine = make_engine(tiny_model)
    done = engine.generate(tokens(0, 8), greedy(5))
    assert (
        done.finish_reason == "length" or done.output_token_ids[-1] == engine.tokenizer.eos_token_id
    )
    reference = done.output_token_ids
    stopped = engine.generate(
        tokens(0, 8), SamplingParams(max_tokens=5, stop_token_ids=(reference[1],))
    )
    assert stopped.finish_reason == "stop"
    assert stopped.output_token_ids == reference[: reference.index(reference[1]) + 1]


def test_prompt_longer_than_the_context_is_refused_with_a_clear_message(make_engine, tiny_model):
    engine = make_engine(tiny_model, num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="at most 15 prompt tokens"):
        engine.add_request(tokens(0, 40), greedy(2))
    assert not engine.has_unfinished()


def test_aborted_request_frees_its_blocks(make_engine, tiny_model):
    engine = make_engine(tiny_model)
    rid = engine.add_request(tokens(0, 30), greedy(50))
    engine.step()
    assert engine.metrics().kv.used_blocks > 0
    engine.abort(rid)
    assert engine.metrics().kv.used_blocks == 0
    assert not engine.has_unfinished()


def test_a_programs_lease_survives_while_its_other_request_still_decodes(
    make_engine, tiny_model, clock
):
    engine = make_engine(tiny_model, kv_retention="fixed-ttl")
    short = engine.add_request(tokens(0, 16), greedy(1), Hints(program_id="p"))
    engine.add_request(tokens(100, 16), greedy(10), Hints(program_id="p"))
    outputs = engine.step()  # both prefill; the short one finishes
    assert any(o.request_id == short and o.finished for o in outputs)
    engine.step()
    engine.step()
    assert engine.metrics().kv.num_leases == 1


def test_export_needs_keep_kv_and_import_checks_the_block_size(make_engine, tiny_model):
    engine = make_engine(tiny_model)
    plain = engine.generate(tokens(0, 8), greedy(2))
    with pytest.raises(ValueError, match="keep_kv=True"):
        engine.export_kv(plain.request_id)
    kept = engine.generate(tokens(0, 8), greedy(2), keep_kv=True)
    data = engine.export_kv(kept.request_id)
    other = make_engine(tiny_model, block_size=8)
    with pytest.raises(ValueError, match="blocks of 4 tokens"):
        other.import_kv(data, greedy(2))
    with pytest.raises(ValueError, match="not a hetagent sequence export"):
        other.import_kv(b"garbage", greedy(2))
    assert not other.has_unfinished()


def test_a_demoted_lease_stays_in_host_memory_until_its_request_can_start(
    make_engine, tiny_model, clock
):
    engine = make_engine(tiny_model, num_blocks=20, kv_retention="lease")
    turn0 = engine.generate(tokens(0, 32), greedy(3), Hints(program_id="p", tool="bash"))
    engine.generate(tokens(100, 52), greedy(2))  # needs 13 of the 12 free blocks: p's KV goes
    assert engine.metrics().kv.demoted_blocks == 8
    engine.add_request(tokens(150, 40), greedy(30))  # runs a while on 10 of the 20 blocks
    engine.step()
    # p's next turn: its 8 blocks would fit again, but not with its first chunk after them
    context = turn0.all_token_ids + tokens(200, 24)
    engine.add_request(context, greedy(2), Hints(program_id="p", turn=1))
    copied = engine.metrics().kv.swapped_out_blocks
    for _ in range(5):
        engine.step()
    stats = engine.metrics().kv
    assert (stats.swapped_out_blocks, stats.swapped_in_blocks) == (copied, 0)  # no ping-pong
    done = engine.run_until_done()
    assert all(outputs[-1].finished for outputs in done.values())
    assert engine.metrics().kv.swapped_in_blocks > 0  # copied back once there was room
