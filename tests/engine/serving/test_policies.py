"""Scheduling and KV-retention policies through their narrow interfaces (no engine)."""

import pytest

from hetagent import policies
from hetagent.policies.kv_retention import Decision, LeaseView, MemoryView
from hetagent.policies.scheduling import QueueItem


def _lease(age: float, *, last_turn: bool = False, demoted: bool = False) -> LeaseView:
    return LeaseView(
        program_id="p",
        turn=1,
        last_turn=last_turn,
        tool="bash",
        tool_seconds=1.0,
        started=100.0,
        now=100.0 + age,
        num_blocks=4,
        num_tokens=64,
        bytes=4096,
        demoted=demoted,
    )


MEMORY = MemoryView(
    total_blocks=10,
    free_blocks=5,
    leased_blocks=4,
    demoted_blocks=0,
    blocked_blocks=0,
    running=1,
    bytes_per_block=1024,
)


def test_program_fcfs_puts_a_programs_next_turn_ahead_of_newer_programs():
    old_program_turn_2 = QueueItem("a2", arrival=10.0, seq=5, program_id="a", program_arrival=0.0)
    new_program = QueueItem("b1", arrival=5.0, seq=3, program_id="b", program_arrival=5.0)
    ordered = sorted(
        [new_program, old_program_turn_2], key=policies.get("scheduling", "program-fcfs").sort_key
    )
    assert [i.request_id for i in ordered] == ["a2", "b1"]
    ordered = sorted(
        [new_program, old_program_turn_2], key=policies.get("scheduling", "fcfs").sort_key
    )
    assert [i.request_id for i in ordered] == ["b1", "a2"]


def test_continuum_serves_turns_of_programs_holding_their_kv_before_older_programs():
    old = QueueItem("a2", arrival=10.0, seq=5, program_id="a", program_arrival=0.0)
    pinned = QueueItem("b2", arrival=11.0, seq=6, program_id="b", program_arrival=5.0,
                       holds_kv=True)  # fmt: skip
    new = QueueItem("c1", arrival=9.0, seq=4, program_id="c", program_arrival=9.0)
    key = policies.get("scheduling", "continuum").sort_key
    assert [i.request_id for i in sorted([new, old, pinned], key=key)] == ["b2", "a2", "c1"]


def test_preempted_requests_go_first_under_every_order():
    fresh = QueueItem("new", arrival=1.0, seq=1, holds_kv=True)
    preempted = QueueItem("old", arrival=2.0, seq=2, preempted=True)
    for name in ("fcfs", "program-fcfs", "continuum", "plas"):
        key = policies.get("scheduling", name).sort_key
        assert sorted([fresh, preempted], key=key)[0].request_id == "old"


def test_evict_releases_at_request_end():
    assert (
        policies.get("kv_retention", "evict").on_request_end(_lease(0), MEMORY) is Decision.RELEASE
    )


def test_fixed_ttl_holds_until_the_deadline_then_releases():
    policy = policies.get("kv_retention", "fixed-ttl", seconds=2.0)
    assert policy.on_request_end(_lease(0), MEMORY) is Decision.HOLD
    assert policy.on_step(_lease(1.9), MEMORY) is Decision.HOLD
    assert policy.on_step(_lease(2.0), MEMORY) is Decision.RELEASE


def test_fixed_ttl_never_holds_a_last_turn():
    policy = policies.get("kv_retention", "fixed-ttl")
    assert policy.on_request_end(_lease(0, last_turn=True), MEMORY) is Decision.RELEASE


def test_fixed_ttl_can_demote_to_host_before_releasing():
    policy = policies.get("kv_retention", "fixed-ttl", seconds=1.0, then="demote", host_seconds=5)
    assert policy.on_step(_lease(1.5), MEMORY) is Decision.DEMOTE
    assert policy.on_step(_lease(3.0, demoted=True), MEMORY) is Decision.HOLD
    assert policy.on_step(_lease(6.5, demoted=True), MEMORY) is Decision.RELEASE


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        policies.get("kv_retention", "forever")
