"""The simulator's engine model and cluster: ordering, conservation, determinism, policies."""

import pytest

from hetagent.backends.sim import traces
from hetagent.backends.sim.simulator import Simulation, SimulationError
from hetagent.backends.sim.traces import Program, Trace, Turn

CAP_70B_2XH100 = 534 * 16  # KV tokens of llama-3.1-70b on 2 x H100 (tight memory, few programs)


def _run(trace, config):
    sim = Simulation(trace, config)
    return sim, sim.run()


def test_turns_follow_their_tool_calls_in_time(config, program, trace):
    t = trace(program("a", 0.0, (500, 20, 1.5), (100, 20, 0.25), (50, 10, None)))
    sim, metrics = _run(t, config())
    r1, r2, r3 = sim.requests
    assert r1.arrival == 0.0 and r1.first_token <= r1.finish
    assert r2.arrival == pytest.approx(r1.finish + 1.5)
    assert r3.arrival == pytest.approx(r2.finish + 0.25)
    assert metrics.jct == [pytest.approx(r3.finish)]


def test_simultaneous_arrivals_are_served_in_arrival_order_under_fcfs(config, program, trace):
    t = trace(*(program(f"p{i}", 1.0, (2000, 5, None)) for i in range(5)))
    sim, _ = _run(t, config(sched="fcfs"))
    firsts = [r.first_token for r in sim.requests]
    assert firsts == sorted(firsts)


def test_every_program_and_sub_agent_completes_exactly_once(config):
    t = traces.generate("deep-research", 12, rate=0.5, seed=3, model="llama-3.1-8b")
    sim, metrics = _run(t, config(replicas=2))
    assert metrics.completed == metrics.programs == 12
    total_turns = sum(_turns(p) for p in t.programs)
    assert len(sim.requests) == total_turns
    assert all(r.finish is not None and r.generated == r.output for r in sim.requests)
    assert len({r.id for r in sim.requests}) == total_turns


def _turns(p: Program) -> int:
    return sum(1 + sum(_turns(c) for c in t.fanout) for t in p.turns)


def test_fanout_turn_waits_for_all_sub_agents(config):
    child = Program("p/c", 0.0, (Turn(300, 10, "search", 5.0), Turn(100, 10)))
    parent = Program(
        "p", 0.0, (Turn(400, 10, "plan", 0.1, fanout=(child, Program("p/d", 0.0, (Turn(50, 5),)))),
                   Turn(200, 10)),
    )  # fmt: skip
    sim, _ = _run(Trace((parent,)), config())
    by_id = {r.id: r for r in sim.requests}
    assert by_id["p@2"].arrival == pytest.approx(by_id["p/c@2"].finish)
    assert by_id["p/c@2"].arrival >= by_id["p/c@1"].finish + 5.0


def test_same_seed_same_result_and_other_seed_differs(config):
    def summary(seed):
        t = traces.generate("swe", 30, rate=0.3, seed=seed, model="llama-3.1-8b")
        return Simulation(t, config(kv="fixed-ttl")).run().summary()

    assert summary(7) == summary(7)
    assert summary(7)["jct_mean_s"] != summary(8)["jct_mean_s"]


def test_closed_loop_keeps_at_most_concurrency_programs_in_flight(config, program, trace):
    t = trace(*(program(f"p{i}", 0.0, (1000, 50, 2.0), (100, 20, None)) for i in range(6)),
              concurrency=2)  # fmt: skip
    sim, metrics = _run(t, config())
    spans = sorted((r.start, r.end) for r in sim.top)
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    assert metrics.completed == 6


def _pressure_trace(program, trace, tool_seconds: float):
    """Program a's KV is needed again after a tool call while b waits for memory and c keeps
    the engine busy: holding a's KV across the call saves its re-prefill."""
    a_tokens, b_tokens = int(0.4 * CAP_70B_2XH100), int(0.55 * CAP_70B_2XH100)
    return trace(
        program("c", 0.0, (int(0.1 * CAP_70B_2XH100), 1500, None)),
        program("a", 0.001, (a_tokens, 8, tool_seconds), (64, 8, None)),
        program("b", 0.002, (b_tokens, 8, None)),
    )


def test_lease_held_across_short_tool_call_saves_prefill(config, program, trace):
    t = _pressure_trace(program, trace, tool_seconds=0.2)
    _, evict = _run(t, config("evict", model="llama-3.1-70b", devices=2))
    _, held = _run(t, config("fixed-ttl", model="llama-3.1-70b", devices=2, seconds=2.0))
    assert evict.reprefill_tokens > 0
    assert held.reprefill_tokens < 16  # only the last, partial block
    assert held.jct_by_program["a"] < evict.jct_by_program["a"]
    assert held.pinned_idle_gb_s > 0 == evict.pinned_idle_gb_s


def test_long_tool_call_releases_the_lease_at_its_ttl(config, program, trace):
    t = _pressure_trace(program, trace, tool_seconds=10.0)
    sim, held = _run(t, config("fixed-ttl", model="llama-3.1-70b", devices=2, seconds=2.0))
    assert held.reprefill_tokens > 0  # b took the memory once the lease ended
    engine = sim.engines[next(iter(sim.engines))][0]
    lease_bytes = int(0.4 * CAP_70B_2XH100) // 16 * engine.bytes_per_block
    assert held.pinned_idle_gb_s * 1e9 <= lease_bytes * 2.2  # held ~2 s, not the 10 s call


def test_pinned_memory_counts_as_contended_only_while_a_request_waits_for_it(
    config, program, trace
):
    options = {"model": "llama-3.1-70b", "devices": 2, "seconds": 2.0}
    _, pressured = _run(_pressure_trace(program, trace, tool_seconds=10.0), config(**options,
                        kv="fixed-ttl"))  # fmt: skip
    assert 0 < pressured.pinned_contended_gb_s <= pressured.pinned_idle_gb_s  # b waited on a
    alone = trace(program("a", 0.0, (int(0.4 * CAP_70B_2XH100), 8, 10.0), (64, 8, None)))
    _, unpressured = _run(alone, config(**options, kv="fixed-ttl"))
    assert unpressured.pinned_idle_gb_s > 0 == unpressured.pinned_contended_gb_s


def test_oracle_holds_only_what_returns_before_a_reprefill_would(config, program, trace):
    short = _pressure_trace(program, trace, tool_seconds=0.2)
    long = _pressure_trace(program, trace, tool_seconds=30.0)
    _, short_run = _run(short, config("oracle", model="llama-3.1-70b", devices=2))
    _, long_run = _run(long, config("oracle", model="llama-3.1-70b", devices=2))
    assert short_run.reprefill_tokens < 16
    assert long_run.pinned_idle_gb_s < 1e-3  # released at once under pressure


@pytest.mark.parametrize(("kv", "preempted"), [("lease", False), ("fixed-ttl", True)])
def test_a_lease_yields_before_a_running_request_is_preempted(
    config, program, trace, kv, preempted
):
    # a's KV waits out a 300 s tool call while c's decode grows past the memory a's lease leaves
    cap = CAP_70B_2XH100
    t = trace(
        program("a", 0.0, (int(0.4 * cap), 8, 300.0), (64, 8, None)),
        program("c", 2.0, (int(0.3 * cap), int(0.4 * cap), None)),
    )
    options = {"seconds": 600.0} if kv == "fixed-ttl" else {}
    _, metrics = _run(t, config(kv, model="llama-3.1-70b", devices=2, **options))
    assert metrics.completed == 2
    assert (metrics.preemptions > 0) is preempted


def test_evict_reuses_cached_prefix_when_memory_is_free(config, program, trace):
    t = trace(program("a", 0.0, (4000, 20, 1.0), (100, 20, None)))
    sim, metrics = _run(t, config("evict"))
    assert metrics.reprefill_tokens < 16  # only the last, partial block is recomputed
    assert sim.requests[1].cached_tokens >= 4000 - 16


def test_preempted_requests_still_complete(config, program, trace):
    # decodes outgrow memory: the engine preempts and recomputes, every program still finishes
    t = trace(*(program(f"p{i}", 0.0, (1500, 2500, None)) for i in range(4)))
    _, metrics = _run(t, config(model="llama-3.1-70b", devices=2))
    assert metrics.preemptions > 0
    assert metrics.completed == 4


def test_disaggregated_prefill_moves_kv_over_the_link(program, trace):
    from hetagent import policies
    from hetagent.backends.sim.simulator import Config, Route, Server

    pre, dec = Server("a", "h100", "llama-3.1-8b", 1, 1), Server("b", "a100", "llama-3.1-8b", 1, 1)
    config = Config(
        [pre, dec],
        {"llama-3.1-8b": Route(dec.key, pre.key)},
        lambda: policies.get("scheduling", "fcfs"),
        lambda e: policies.get("kv_retention", "evict"),
        default_model="llama-3.1-8b",
        links={frozenset(("a", "b")): (1e9, 1e-3)},
    )
    sim, metrics = _run(trace(program("x", 0.0, (3000, 50, None))), config)
    assert metrics.transfer_bytes > 0
    decode = sim.engines[dec.key][0]
    assert decode.prompt_tokens == 0  # its prompt arrived as KV, nothing was prefilled there
    assert metrics.completed == 1


def test_unserved_model_is_a_clear_error(config):
    t = Trace((Program("x", 0.0, (Turn(10, 5),), model="llama-3.1-70b"),))
    with pytest.raises(SimulationError, match=r"llama-3\.1-70b.*no pool serves"):
        Simulation(t, config())


def test_turn_longer_than_the_kv_pool_fails_its_program_only(config, program, trace):
    t = trace(
        program("big", 0.0, (100, 10, 0.1), (CAP_70B_2XH100 + 100, 10, None)),
        program("ok", 0.0, (500, 10, None)),
    )
    _, metrics = _run(t, config(model="llama-3.1-70b", devices=2))
    assert metrics.failed == 1 and metrics.completed == 1
    assert "big@2" in metrics.errors[0] and "exceed the KV pool" in metrics.errors[0]
    assert metrics.sla_attainment(slowdown=100.0) == 0.5


@pytest.mark.parametrize("kv", ["evict", "fixed-ttl", "oracle"])
def test_kv_blocks_are_conserved_through_preemption_and_leases(config, kv):
    t = traces.generate("bfcl", 40, concurrency=12, seed=5, model="llama-3.1-70b")
    sim, metrics = _run(t, config(kv, model="llama-3.1-70b", devices=2, replicas=2))
    assert metrics.completed + metrics.failed == 40 and metrics.preemptions > 0
    for engine in (e for es in sim.engines.values() for e in es):
        assert not engine.running and not engine.waiting and not engine.leases
        resident = engine.free + engine.lru_blocks + sum(engine.shared.values())
        assert resident == engine.total_blocks
        assert engine.leased_blocks == engine.demoted_blocks == 0
