"""The resource policies: static limits, hint-mapped limits, and the grant broker's decisions
(admission, queue, grow, park, deadlock kill) with an injected clock and a fake usage source,
then one broker run on real processes under the host's controller."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from hetagent.policies.resources import (
    Broker,
    HintStaticPolicy,
    StaticPolicy,
    resource_policy,
)
from hetagent.spec import ResourceHints
from hetagent.tools.resources import Limits, ResourceError
from hetagent.tools.resources.base import owner_tag, start_time

MiB = 1 << 20


def broker(controller, clock, budget_mib: int = 1000, **kw) -> Broker:
    return Broker(controller, budget_mib * MiB, min_step=64 * MiB, clock=clock, watch=False, **kw)


def hint(mib: int) -> ResourceHints:
    return ResourceHints(memory=f"{mib}Mi")


def run(b: Broker, call_id: str, mib: int):
    """Admit (must fit now) and start a call; returns its lease."""
    lease = b.open(call_id, hint(mib), timeout=0)
    lease.started(1_000_000 + len(b.actions))  # a pid the fake never signals
    return lease


# --- static and hint-static ---------------------------------------------------------------------


def test_static_gives_every_call_the_same_killing_limit(fake_controller):
    policy = StaticPolicy(fake_controller, memory=512 * MiB, cpu=1.0, pids=64)
    a = policy.open("a", hint(2000))
    b = policy.open("b", None)
    assert a.limits == b.limits == Limits(512 * MiB, None, 1.0, 64, oom_kill=True)


def test_hint_static_maps_the_declared_hint_to_a_fixed_limit(fake_controller):
    policy = HintStaticPolicy(fake_controller, default_memory=256 * MiB)
    lease = policy.open("a", ResourceHints(memory="1Gi", cpu="500m"))
    assert lease.limits.memory_max == 1024 * MiB and lease.limits.cpu_cores == 0.5
    assert lease.limits.oom_kill
    assert policy.open("b", None).limits.memory_max == 256 * MiB


def test_a_static_call_killed_at_its_limit_reports_oom_as_its_result(fake_controller):
    policy = HintStaticPolicy(fake_controller)
    lease = policy.open("a", hint(100))
    group = fake_controller.groups["a"]
    group.peak = 100 * MiB
    group.events = lambda: group._events(oom=1, oom_kill=1)
    outcome = lease.close()
    assert outcome.killed and outcome.message == "[OOM] peak 100 MB, limit 100 MB"


def test_policies_are_found_by_the_names_a_spec_uses(fake_controller):
    assert resource_policy("static", fake_controller).name == "static"
    assert resource_policy("hint-static", fake_controller).name == "hint-static"
    broker = resource_policy("broker", fake_controller, watch=False)
    assert broker.name == "broker" and broker.budget > 0  # half of MemAvailable by default


def test_unknown_policy_name_is_a_one_line_error(fake_controller):
    with pytest.raises(ResourceError, match="not one of broker, hint-static, static"):
        resource_policy("greedy", fake_controller)


# --- the broker's decisions ---------------------------------------------------------------------


def test_calls_are_admitted_by_hint_until_the_budget_is_reserved(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock)
    run(b, "a", 400)
    run(b, "b", 400)
    c = b.submit("c", hint(400))
    assert c.state == "queued" and b.free == 200 * MiB
    with pytest.raises(ResourceError, match="waited 0 s for 400 MB of the 1000 MB budget"):
        b.open("d", hint(400), timeout=0)


def test_a_queued_call_is_admitted_when_memory_comes_back(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock)
    a = run(b, "a", 600)
    c = b.submit("c", hint(600))
    assert c.state == "queued"
    a.close()
    assert c.state == "running" and c.lease.limits.memory_max == 600 * MiB


def test_queue_is_fifo_a_small_call_does_not_overtake_a_big_one(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock)
    run(b, "a", 700)
    big = b.submit("big", hint(500))
    small = b.submit("small", hint(100))
    assert (big.state, small.state) == ("queued", "queued")


def test_a_hint_above_the_budget_is_clamped_to_the_budget(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock, budget_mib=300)
    assert run(b, "a", 5000).limits.memory_max == 300 * MiB


def test_a_call_at_its_grant_grows_from_the_pool(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock)
    run(b, "a", 200)
    fake_controller.groups["a"].hit_limit()
    b.check()
    assert b.grant("a") == 200 * MiB + 100 * MiB  # half the grant (at least min_step)
    assert fake_controller.groups["a"].limits.memory_max == 300 * MiB
    assert not fake_controller.groups["a"].held  # raising the limit resumed it
    grow = b.actions[-1]
    assert (grow.kind, grow.call_id) == ("grow", "a") and grow.applied_at > grow.noticed_at


def test_a_call_past_its_early_warning_level_grows_before_it_stalls(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock, budget_mib=500)
    run(b, "a", 200)
    group = fake_controller.groups["a"]
    group.peak = 140 * MiB  # under three quarters of the grant: nothing to do
    b.check_early()
    assert b.grant("a") == 200 * MiB
    group.peak = 150 * MiB
    b.check_early()
    assert b.grant("a") == 300 * MiB and b.actions[-1].kind == "grow-early"
    assert group.limits.memory_max == 300 * MiB


def test_early_warning_never_parks_when_the_pool_is_empty(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock, budget_mib=400)
    run(b, "a", 200)
    run(b, "b", 200)
    fake_controller.groups["a"].peak = 190 * MiB
    b.check_early()
    assert b.state("a") == "running" and b.grant("a") == 200 * MiB and not b.actions


def test_a_call_is_parked_when_the_pool_is_empty_and_unparked_when_memory_returns(
    fake_controller, fake_clock
):
    b = broker(fake_controller, fake_clock, budget_mib=500)
    run(b, "a", 250)
    other = run(b, "b", 250)
    fake_controller.groups["a"].hit_limit()
    b.check()
    assert b.state("a") == "parked" and fake_controller.groups["a"].held
    queued = b.submit("c", hint(10))
    assert queued.state == "queued"  # nothing new is admitted while a call waits parked
    other.close()
    assert b.state("a") == "running" and b.grant("a") == 250 * MiB + 125 * MiB
    assert not fake_controller.groups["a"].held
    assert queued.state == "running"  # then the queue moves
    assert [a.kind for a in b.actions] == ["park", "unpark"]


def test_parking_freezes_where_the_backend_cannot_hold(fake_controller_class, fake_clock):
    v2_like = fake_controller_class(features=("memory", "notify", "freeze"))  # throttles only
    b = broker(v2_like, fake_clock, budget_mib=500)
    run(b, "a", 250)
    other = run(b, "b", 250)
    v2_like.groups["a"].hit_limit()
    b.check()
    assert b.state("a") == "parked" and v2_like.groups["a"].frozen
    other.close()
    assert b.state("a") == "running" and not v2_like.groups["a"].frozen


def test_deadlock_kills_the_youngest_parked_call_with_an_oom_result(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock, budget_mib=500)
    old = run(b, "old", 250)
    young = run(b, "young", 250)
    fake_controller.groups["old"].hit_limit()
    b.check()
    fake_controller.groups["young"].hit_limit()
    b.check()
    assert fake_controller.groups["young"].killed and not fake_controller.groups["old"].killed
    assert b.state("old") == "running" and b.grant("old") == 375 * MiB  # a step of young's
    outcome = young.close()
    assert outcome.killed and outcome.message == "[OOM] peak 250 MB, budget 500 MB"
    assert old.close().message is None


def test_a_lone_call_needing_more_than_the_budget_is_killed_not_hung(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock, budget_mib=100)
    lease = run(b, "a", 60)
    group = fake_controller.groups["a"]
    group.hit_limit()
    b.check()  # the last 40 MB are given as a last resort
    assert b.grant("a") == 100 * MiB and not group.killed
    group.hit_limit()
    b.check()
    assert group.killed
    assert lease.close().message == "[OOM] peak 100 MB, budget 100 MB"


def test_the_broker_never_kills_more_than_it_must(fake_controller, fake_clock):
    b = broker(fake_controller, fake_clock, budget_mib=600)
    for name in ("a", "b", "c"):
        run(b, name, 200)
    fake_controller.groups["a"].hit_limit()
    b.check()  # parked: b and c still run, no deadlock
    assert b.state("a") == "parked"
    assert not any(g.killed for g in fake_controller.groups.values())


def test_broker_blocks_open_until_admitted(fake_controller):
    b = Broker(fake_controller, 100 * MiB, watch=False)
    first = b.open("a", hint(80))
    got = []
    waiter = threading.Thread(target=lambda: got.append(b.open("b", hint(80), timeout=60)))
    waiter.start()
    while b._calls.get("b") is None:  # until the waiter has queued
        threading.Event().wait(0.001)
    first.close()
    waiter.join(60)
    assert got and got[0].limits.memory_max == 80 * MiB


# --- one real broker run ------------------------------------------------------------------------

ALLOCATE = "import sys\nb = [bytearray(1 << 20) for _ in range(int(sys.argv[1]))]\nprint('done')"


def test_broker_on_real_processes_grows_and_breaks_a_deadlock(real_controller):
    """Two calls that each need ~96 MB but declare 24 MB, in a 110 MB budget: they grow until
    the pool runs out, both park, the younger is killed with an [OOM] result and the older
    finishes. The agent (this process and its parent) survives; no group is left behind."""
    b = Broker(real_controller, 110 * MiB, min_step=16 * MiB, tick=0.01)
    results: dict[str, tuple[int, object]] = {}

    def call(lease) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", ALLOCATE, "90"],
            preexec_fn=lease.preexec,
            stdout=subprocess.PIPE,
            text=True,
        )
        lease.started(proc.pid)
        code = proc.wait(timeout=120)
        results[lease.call_id] = (code, lease.close())  # as the sandbox does: close at exit

    try:
        # Both admitted (48 of 110 MB reserved) before either allocates: a real deadlock.
        leases = [b.open(name, hint(24), timeout=60) for name in ("older", "younger")]
        threads = [threading.Thread(target=call, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    finally:
        b.close()
    (old_code, old), (young_code, young) = results["older"], results["younger"]
    assert old_code == 0 and not old.killed, [(a.kind, a.call_id, a.grant >> 20) for a in b.actions]
    assert young_code == -9 and young.killed
    assert young.message.startswith("[OOM] peak ") and young.message.endswith("budget 110 MB")
    kinds = {a.kind for a in b.actions}
    assert {"park", "kill"} <= kinds and kinds & {"grow", "grow-early"}
    assert start_time(os.getpid()) is not None and start_time(os.getppid()) is not None
    real_controller.close()
    tag = owner_tag()
    assert not [d for d in getattr(real_controller, "owners", {}).values() if (d / tag).exists()]
