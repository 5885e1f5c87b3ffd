"""How much memory and CPU each tool call gets: `static`, `hint-static` and the grant `broker`.

A policy turns a call's declared hints (`resources` of a tool node in the AgentGraph spec) into
limits on a `ResourceGroup` from `hetagent.tools.resources`. The sandbox uses it as

    lease = policy.open(call_id, hints)          # the broker may block here while queued
    proc = Popen(..., preexec_fn=lease.preexec); lease.started(proc.pid)
    outcome = lease.close()                      # outcome.message replaces the result if set

`static` and `hint-static` set a fixed limit at which the kernel OOM-kills (the baselines, and
AgentCgroup's hint interface without BPF). The `broker` admits calls against one shared memory
budget by their hints (FIFO queue for what does not fit), and when a call reaches its grant it
grows the grant from the free pool or parks the call (held at its limit, no CPU, no overshoot).
If every admitted call is parked, the youngest is killed and gets "[OOM] peak X MB, budget Y MB"
as its result. Only tool-call groups are ever signalled: never the agent's own process.
"""

from __future__ import annotations

import abc
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hetagent.spec import ResourceHints, cpu_cores, memory_bytes
from hetagent.tools.resources import (
    Controller,
    Events,
    Limits,
    ResourceError,
    ResourceGroup,
    Usage,
)

log = logging.getLogger(__name__)
MiB = 1 << 20
DEFAULT_MEMORY = (
    256 * MiB
)  # AgentCgroup's "low" hint: what a call without a hint is assumed to need
DEFAULT_CPU = 1.0
MONITOR_NICE = -10
DEFAULT_PIDS = 512


def default_budget(share: float = 0.5) -> int:
    """Half the memory available now (MemAvailable), when a broker is named without a budget."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * share)
    raise ResourceError("no MemAvailable in /proc/meminfo: give the broker a budget_bytes")


def oom_message(peak: int, bound: int, what: str = "budget") -> str:
    return f"[OOM] peak {peak / MiB:.0f} MB, {what} {bound / MiB:.0f} MB"


@dataclass(frozen=True)
class LeaseOutcome:
    usage: Usage
    events: Events
    grant: int | None
    """The memory grant (bytes) the call ended with."""
    killed: bool
    """The call was ended by its memory limit (kernel OOM kill or the broker's deadlock kill)."""
    message: str | None
    """Set when killed: the tool's result the agent should see instead of a broken pipe."""
    queued_seconds: float = 0.0
    parked_seconds: float = 0.0


class Lease:
    """One admitted tool call: its group, and what the policy needs to hear about it."""

    def __init__(self, policy: ResourcePolicy, call_id: str, group: ResourceGroup) -> None:
        self.policy = policy
        self.call_id = call_id
        self.group = group
        self.limits = group.limits
        self.preexec = group.preexec
        self._outcome: LeaseOutcome | None = None

    def started(self, pid: int) -> None:
        self.group.started(pid)
        self.policy.started(self)

    def close(self) -> LeaseOutcome:
        """Remove the call's group and return what it used; idempotent."""
        if self._outcome is None:
            self._outcome = self.policy.finish(self)
        return self._outcome


def hint_memory(hints: ResourceHints | None, default: int) -> int:
    return default if hints is None or hints.memory is None else memory_bytes(hints.memory)


def hint_cpu(hints: ResourceHints | None, default: float | None) -> float | None:
    return default if hints is None or hints.cpu is None else cpu_cores(hints.cpu)


class ResourcePolicy(abc.ABC):
    """`parent` nests every call's group inside another group (cgroup backends only)."""

    name: str = ""

    def __init__(self, controller: Controller, parent: ResourceGroup | None = None) -> None:
        self.controller = controller
        self.parent = parent

    def create(self, call_id: str, limits: Limits) -> ResourceGroup:
        if self.parent is None:
            return self.controller.create(call_id, limits)
        return self.controller.create(call_id, limits, parent=self.parent)

    @abc.abstractmethod
    def open(
        self, call_id: str, hints: ResourceHints | None = None, timeout: float | None = None
    ) -> Lease: ...

    def started(self, lease: Lease) -> None:  # noqa: B027 (a hook: most policies need nothing)
        """The call's process runs."""

    def finish(self, lease: Lease) -> LeaseOutcome:
        events = lease.group.events()
        usage = lease.group.close()
        limit = lease.group.limits.memory_max
        killed = events.oom_kill > 0
        message = oom_message(usage.memory_peak, limit, "limit") if killed and limit else None
        return LeaseOutcome(usage, events, limit, killed, message)

    def close(self) -> None:  # noqa: B027 (a hook: only the broker has background work)
        """Stop background work (the broker's monitor)."""


class StaticPolicy(ResourcePolicy):
    """The same fixed limit for every call; the kernel OOM-kills at it."""

    name = "static"

    def __init__(
        self,
        controller: Controller,
        memory: int = 1024 * MiB,
        cpu: float | None = DEFAULT_CPU,
        pids: int | None = DEFAULT_PIDS,
        parent: ResourceGroup | None = None,
    ) -> None:
        super().__init__(controller, parent)
        self.limits = Limits(memory_max=memory, cpu_cores=cpu, pids=pids, oom_kill=True)

    def open(
        self, call_id: str, hints: ResourceHints | None = None, timeout: float | None = None
    ) -> Lease:
        return Lease(self, call_id, self.create(call_id, self.limits))


class HintStaticPolicy(ResourcePolicy):
    """The call's declared hint becomes its fixed limit (AgentCgroup's interface without BPF)."""

    name = "hint-static"

    def __init__(
        self,
        controller: Controller,
        default_memory: int = DEFAULT_MEMORY,
        default_cpu: float | None = DEFAULT_CPU,
        pids: int | None = DEFAULT_PIDS,
        parent: ResourceGroup | None = None,
    ) -> None:
        super().__init__(controller, parent)
        self.default_memory, self.default_cpu, self.pids = default_memory, default_cpu, pids

    def limits_for(self, hints: ResourceHints | None) -> Limits:
        return Limits(
            memory_max=hint_memory(hints, self.default_memory),
            cpu_cores=hint_cpu(hints, self.default_cpu),
            pids=self.pids,
            oom_kill=True,
        )

    def open(
        self, call_id: str, hints: ResourceHints | None = None, timeout: float | None = None
    ) -> Lease:
        return Lease(self, call_id, self.create(call_id, self.limits_for(hints)))


# ---------------------------------------------------------------------------------------------
# The grant broker.


@dataclass
class Call:
    call_id: str
    hint: int
    cpu: float | None
    order: int
    queued_at: float
    grant: int = 0
    state: str = "queued"  # queued | running | parked | killed | closing | done
    admitted_at: float | None = None
    parked_at: float | None = None
    parked_seconds: float = 0.0
    lease: Lease | None = None
    error: Exception | None = None
    admitted: threading.Event = field(default_factory=threading.Event)
    message: str | None = None


@dataclass(frozen=True)
class Action:
    """What the broker did and when: grow (at the limit), grow-early (past the early-warning
    level), park, unpark, kill; `noticed_at` is when the notification arrived."""

    kind: str
    call_id: str
    grant: int
    noticed_at: float
    applied_at: float


class Broker(ResourcePolicy):
    """Admit, grow, park and (to break a deadlock) kill tool calls within one memory budget.

    `early` (a fraction of the grant) sets an early-warning level: a call crossing it is grown
    ahead of its limit when the pool has a step to spare, so most calls never stall.
    `clock` and `watch=False` make it deterministic for tests: `check()` then runs one decision
    round by hand. With `watch=True` a monitor thread waits on every group's notification fd
    (v1 eventfd, v2 memory.events, the fallback poller's eventfd) and runs `check()` at once.
    """

    name = "broker"

    def __init__(
        self,
        controller: Controller,
        budget_bytes: int | None = None,
        *,
        default_memory: int = DEFAULT_MEMORY,
        min_step: int = 64 * MiB,
        default_cpu: float | None = DEFAULT_CPU,
        pids: int | None = DEFAULT_PIDS,
        clock: Callable[[], float] = time.monotonic,
        watch: bool = True,
        tick: float = 0.01,
        early: float | None = 0.75,
        on_action: Callable[[Action, ResourceGroup], None] | None = None,
        parent: ResourceGroup | None = None,
    ) -> None:
        super().__init__(controller, parent)
        budget_bytes = default_budget() if budget_bytes is None else budget_bytes
        if not isinstance(budget_bytes, int) or budget_bytes <= 0:
            raise ResourceError(f"broker budget {budget_bytes!r} must be a positive byte count")
        self.budget = budget_bytes
        self.default_memory, self.min_step = default_memory, min_step
        self.default_cpu, self.pids = default_cpu, pids
        self.clock = clock
        self.early = early
        self.on_action = on_action
        self.actions: deque[Action] = deque(maxlen=100_000)
        self._calls: dict[str, Call] = {}
        self._queue: list[Call] = []
        self._order = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._epoll = select.epoll()
        self._fds: dict[int, Call] = {}
        self._tick = tick
        self._monitor: threading.Thread | None = None
        self.monitor_nice: int | None = None
        if watch:
            self._monitor = threading.Thread(
                target=self._watch, name="hetagent-broker", daemon=True
            )
            self._monitor.start()

    # -- the pool ----------------------------------------------------------------------------

    @property
    def granted(self) -> int:
        return sum(
            c.grant for c in self._calls.values() if c.state in ("running", "parked", "closing")
        )

    @property
    def free(self) -> int:
        return self.budget - self.granted

    def state(self, call_id: str) -> str:
        return self._calls[call_id].state

    def grant(self, call_id: str) -> int:
        return self._calls[call_id].grant

    # -- admission ---------------------------------------------------------------------------

    def submit(self, call_id: str, hints: ResourceHints | None = None) -> Call:
        """Queue a call; it is admitted now if its hint fits and nobody is waiting before it."""
        with self._lock:
            if call_id in self._calls:
                raise ResourceError(f"tool call id {call_id!r} is already running")
            hint = min(hint_memory(hints, self.default_memory), self.budget)
            self._order += 1
            call = Call(call_id, hint, hint_cpu(hints, self.default_cpu), self._order, self.clock())
            self._calls[call_id] = call
            self._queue.append(call)
            self._rebalance(self.clock())
            return call

    def open(
        self, call_id: str, hints: ResourceHints | None = None, timeout: float | None = None
    ) -> Lease:
        call = self.submit(call_id, hints)
        if not call.admitted.wait(timeout):
            with self._lock:
                if call.state == "queued":
                    self._queue.remove(call)
                    del self._calls[call_id]
                    raise ResourceError(
                        f"tool call {call_id} waited {timeout} s for {call.hint / MiB:.0f} MB "
                        f"of the {self.budget / MiB:.0f} MB budget"
                    )
        if call.error is not None:
            raise call.error
        assert call.lease is not None
        return call.lease

    def _admit(self, call: Call, now: float) -> None:
        call.grant, call.state, call.admitted_at = call.hint, "running", now
        limits = self._limits(call)
        try:
            call.lease = Lease(self, call.call_id, self.create(call.call_id, limits))
        except ResourceError as exc:
            call.error, call.state, call.grant = exc, "done", 0
            del self._calls[call.call_id]
        call.admitted.set()

    # -- the decisions -----------------------------------------------------------------------

    def _limits(self, call: Call) -> Limits:
        # No memory_high: a v1 usage threshold costs the kernel an RCU grace period (10-30 ms
        # here) at every re-registration, which would sit inside every grow. The early level
        # is watched by reading usage on the monitor's tick instead.
        return Limits(memory_max=call.grant, cpu_cores=call.cpu, pids=self.pids)

    def _step(self, call: Call) -> int:
        return max(self.min_step, call.grant // 2)

    def _grow(
        self,
        call: Call,
        now: float,
        noticed: float,
        last_resort: bool = False,
        early: bool = False,
    ) -> bool:
        """Give a call at its limit more memory from the pool, if the pool has a step's worth
        (or, as a last resort before a kill, whatever is left)."""
        want = self._step(call)
        if self.free <= 0 or (self.free < self.min_step and not last_resort):
            return False
        call.grant += min(want, self.free)
        assert call.lease is not None
        group = call.lease.group
        group.set_limits(self._limits(call))
        kind = "unpark" if call.state == "parked" else "grow-early" if early else "grow"
        if call.state == "parked":
            if "hold" not in self.controller.features:
                group.thaw()
            call.parked_seconds += now - (call.parked_at or now)
            call.state, call.parked_at = "running", None
        self._record(kind, call, noticed)
        return True

    def _park(self, call: Call, now: float, noticed: float) -> None:
        assert call.lease is not None
        if "hold" not in self.controller.features:
            call.lease.group.freeze()  # v2 only throttles at memory.high: stop it outright
        call.state, call.parked_at = "parked", now
        self._record("park", call, noticed)

    def _kill(self, call: Call, now: float) -> None:
        assert call.lease is not None
        group = call.lease.group
        peak = group.usage().memory_peak
        group.kill()
        call.message = oom_message(max(peak, call.grant), self.budget)
        call.parked_seconds += now - (call.parked_at or now)
        call.state, call.grant = "killed", 0
        self._record("kill", call, now)

    def _record(self, kind: str, call: Call, noticed: float) -> None:
        action = Action(kind, call.call_id, call.grant, noticed, self.clock())
        self.actions.append(action)
        if self.on_action is not None and call.lease is not None:
            self.on_action(action, call.lease.group)

    def _rebalance(self, now: float) -> None:
        """After memory came back or a call arrived: unpark (oldest first), then admit (FIFO),
        and if every admitted call is parked, kill the youngest parked call."""
        while True:
            parked = sorted(
                (c for c in self._calls.values() if c.state == "parked"), key=lambda c: c.order
            )
            for call in parked:
                if not self._grow(call, now, now):
                    break
            if not any(c.state == "parked" for c in self._calls.values()):
                while self._queue and self._queue[0].hint <= self.free:
                    self._admit(self._queue.pop(0), now)
            live = [c for c in self._calls.values() if c.state in ("running", "parked", "closing")]
            if live and all(c.state == "parked" for c in live):
                if self._grow(min(live, key=lambda c: c.order), now, now, last_resort=True):
                    return
                self._kill(max(live, key=lambda c: c.order), now)
                continue  # its grant is free again
            return

    def _running(self, calls: list[Call] | None) -> list[Call]:
        return [
            c
            for c in (calls or list(self._calls.values()))
            if c.state == "running" and c.lease is not None and c.lease.group.pid is not None
        ]

    def check(self, calls: list[Call] | None = None, noticed: float | None = None) -> None:
        """Look at running calls' events: at its limit a call is grown or parked. `noticed` is
        when the notification arrived (the monitor's wake-up), for reaction times."""
        with self._lock:
            now = self.clock()
            noticed = now if noticed is None else noticed
            for call in self._running(calls):
                held = call.lease.group.events().held
                if held and not self._grow(call, now, noticed):
                    self._park(call, now, noticed)
            self._rebalance(now)

    def check_early(self) -> None:
        """Grow calls past the early-warning fraction of their grant ahead of their limit, when
        the pool has a step to spare (never parks: they have not reached their grant)."""
        if not self.early:
            return
        with self._lock:
            now = self.clock()
            for call in self._running(None):
                if call.lease.group.usage().memory_current >= call.grant * self.early:
                    self._grow(call, now, now, early=True)

    # -- the lease's life --------------------------------------------------------------------

    def started(self, lease: Lease) -> None:
        fd = lease.group.notify_fd()
        with self._lock:
            call = self._calls[lease.call_id]
            if fd is not None:
                self._fds[fd] = call
                self._epoll.register(fd, select.EPOLLIN | select.EPOLLPRI)
        self.check([call])  # it may already be at its limit

    def finish(self, lease: Lease) -> LeaseOutcome:
        with self._lock:
            call = self._calls[lease.call_id]
            fd = lease.group.notify_fd()
            if fd is not None and self._fds.pop(fd, None) is not None:
                self._epoll.unregister(fd)
            events = lease.group.events()
            killed = call.state == "killed"
            grant = None if killed else call.grant
            now = self.clock()
            if call.state == "parked":
                call.parked_seconds += now - (call.parked_at or now)
            if not killed:
                call.state = "closing"  # its grant stays reserved until its memory is freed
        try:
            usage = lease.group.close()  # outside the lock: removal may wait for exits
        finally:
            with self._lock:
                call.state, call.grant = ("killed" if killed else "done"), 0
                del self._calls[call.call_id]
                self._rebalance(self.clock())
        queued = (call.admitted_at or call.queued_at) - call.queued_at
        return LeaseOutcome(usage, events, grant, killed, call.message, queued, call.parked_seconds)

    def _watch(self) -> None:
        # Reaction time is this thread's wake-up: ask the scheduler to prefer it over tool
        # processes (needs CAP_SYS_NICE; without it the thread keeps the default priority and
        # `monitor_nice` says so).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MONITOR_NICE)
            self.monitor_nice = MONITOR_NICE
        except PermissionError:
            self.monitor_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        next_tick = self.clock()
        while not self._stop.is_set():
            ready = self._epoll.poll(max(0.0, next_tick - self.clock()))
            woke = self.clock()
            try:
                if ready:  # a notification: only the calls it names, at once
                    with self._lock:
                        calls = [self._fds[fd] for fd, _ in ready if fd in self._fds]
                    self.check(calls, woke)
                if woke >= next_tick:
                    # The tick: early growth, and every call (for backends whose notification
                    # a plain file cannot carry).
                    self.check_early()
                    self.check()
                    next_tick = woke + self._tick
            except (OSError, ResourceError) as exc:
                # One call's group failing (e.g. removed under us) must not stop the broker.
                log.warning("resource broker: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join()
        self._epoll.close()


POLICIES: dict[str, type[ResourcePolicy]] = {
    "static": StaticPolicy,
    "hint-static": HintStaticPolicy,
    "broker": Broker,
}


def resource_policy(name: str, controller: Controller, **options: Any) -> ResourcePolicy:
    """The policy named in an AgentGraph's `spec.policies.resources`."""
    if name not in POLICIES:
        raise ResourceError(f"resource policy {name!r} is not one of {', '.join(sorted(POLICIES))}")
    return POLICIES[name](controller, **options)
