"""KV retention policies decide on plain data (the same calls the engine and simulator make)."""

from dataclasses import replace

from hetagent import policies
from hetagent.policies.kv_retention import Decision, LeaseView, MemoryView
from hetagent.policies.scheduling import QueueItem

CALM = MemoryView(100, 80, 10, 0, blocked_blocks=0, running=2, bytes_per_block=1 << 20)
TIGHT = MemoryView(100, 0, 60, 0, blocked_blocks=20, running=2, bytes_per_block=1 << 20)


def lease(tool="bash", age=0.0, last=False, tokens=2000, demoted=False, turn=1):
    return LeaseView(
        program_id="p", turn=turn, last_turn=last, tool=tool, tool_seconds=None, started=100.0,
        now=100.0 + age, num_blocks=tokens // 16, num_tokens=tokens,
        bytes=(tokens // 16) << 20, demoted=demoted,
    )  # fmt: skip


def teach(policy, tool, seconds, times=120):
    """Programs that ran `tool` for `seconds` and came back."""
    for i in range(times):
        policy.durations.turn_ended(f"t{i}", tool, 0.0)
        policy.durations.turn_arrived(f"t{i}", seconds)


def test_every_policy_releases_a_programs_last_turn():
    for name in ("evict", "fixed-ttl", "continuum", "continuum-preview", "lease"):
        policy = policies.get("kv_retention", name)
        assert policy.on_request_end(lease(last=True), CALM) is Decision.RELEASE, name


def test_continuum_pins_for_about_the_tools_duration_then_releases():
    policy = policies.get("kv_retention", "continuum")
    teach(policy, "bash", 0.5)  # re-prefilling 2000 tokens costs far more than waiting 0.5 s
    assert policy.on_request_end(lease(), CALM) is Decision.HOLD
    assert policy.on_step(lease(age=0.4), TIGHT) is Decision.HOLD  # pins hold even under pressure
    assert policy.on_step(lease(age=0.6), CALM) is Decision.RELEASE


def test_continuum_does_not_pin_for_a_tool_slower_than_the_prefill_it_saves():
    policy = policies.get("kv_retention", "continuum")
    teach(policy, "build", 60.0)
    assert policy.on_request_end(lease(tool="build", tokens=160), CALM) is Decision.RELEASE


def test_the_preview_variant_pins_two_seconds_for_quick_or_unknown_tools_only():
    policy = policies.get("kv_retention", "continuum-preview")
    assert policy.on_request_end(lease(tool="never-seen"), CALM) is Decision.HOLD
    assert policy.on_step(lease(tool="never-seen", age=2.5), CALM) is Decision.RELEASE
    teach(policy, "slow", 5.0, times=3)
    assert policy.on_request_end(lease(tool="slow"), CALM) is Decision.RELEASE


def test_a_lease_is_held_while_no_one_waits_for_memory():
    policy = policies.get("kv_retention", "lease")
    teach(policy, "build", 30.0)
    assert policy.on_request_end(lease(tool="build"), CALM) is Decision.HOLD
    assert policy.on_step(lease(tool="build", age=29.0), CALM) is Decision.HOLD


def test_a_preempted_request_is_swapped_out_when_copying_beats_recomputing():
    policy = policies.get("kv_retention", "lease")
    assert policy.on_preempt(lease(tokens=2000), TIGHT) is Decision.DEMOTE
    slow_link = policies.get("kv_retention", "lease", host_bytes_per_second=1e6)
    assert slow_link.on_preempt(lease(tokens=2000), TIGHT) is Decision.RELEASE


def test_under_pressure_a_lease_unlikely_to_be_needed_soon_moves_to_host_memory():
    policy = policies.get("kv_retention", "lease")
    teach(policy, "bash", 30.0)  # its tool will be away for a long time
    assert policy.on_step(lease(age=1.0), TIGHT) is Decision.DEMOTE


def test_under_pressure_a_lease_whose_tool_is_about_to_return_is_kept():
    policy = policies.get("kv_retention", "lease")
    teach(policy, "bash", 1.02)
    assert policy.on_step(lease(age=1.0), TIGHT) is Decision.HOLD


def test_a_lease_worth_a_waiting_step_yields_to_a_running_request_facing_preemption():
    policy = policies.get("kv_retention", "lease")
    teach(policy, "bash", 1.02)
    assert policy.on_step(lease(age=1.0), TIGHT) is Decision.HOLD
    # the blocked request would recompute 8000 tokens: more than the lease's 2000 can save
    assert policy.on_step(lease(age=1.0), replace(TIGHT, preempt_tokens=8000)) is Decision.DEMOTE
    assert policy.on_step(lease(age=1.0), replace(TIGHT, preempt_tokens=100)) is Decision.HOLD


def test_a_demoted_lease_is_brought_back_before_its_tool_returns():
    policy = policies.get("kv_retention", "lease")
    teach(policy, "bash", 1.02)
    assert policy.on_step(lease(age=1.0, demoted=True), CALM) is Decision.PROMOTE
    assert policy.on_step(lease(age=0.1, demoted=True), CALM) is Decision.HOLD


def item(rid, arrival, attained, program=None):
    return QueueItem(rid, arrival, seq=int(arrival), program_id=program or rid,
                     program_arrival=arrival, attained_tokens=attained)  # fmt: skip


def test_plas_serves_the_program_with_the_least_service_first_and_ages_the_rest():
    plas = policies.get("scheduling", "plas", aging_tokens_per_second=100.0)
    long_program, short_program = item("long", 10.0, 5000), item("short", 12.0, 100)
    assert sorted([long_program, short_program], key=plas.sort_key)[0] is short_program
    starved = item("starved", 0.0, 5000)  # waited 60 s longer: 6000 tokens of aging
    newcomer = item("new", 60.0, 200)
    assert sorted([newcomer, starved], key=plas.sort_key)[0] is starved


def test_a_program_that_ends_early_is_forgotten():
    for name in ("continuum", "lease"):
        policy = policies.get("kv_retention", name)
        policy.on_request_end(lease(), CALM)  # the program left for a tool
        policy.on_program_end("p")  # and answered without another turn
        assert "p" not in policy.durations.away, name
