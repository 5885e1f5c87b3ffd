"""What happens to a program's KV cache between its turns (while a tool runs).

The engine's KV manager turns a finished request of a program into a *lease* on its full KV
blocks and asks the policy, at request end and again at every engine step, what to do with it:

- HOLD: keep the blocks on the device (the next turn reuses them without re-prefill);
- DEMOTE: copy them to host memory and free the device blocks (the next turn copies them back);
- PROMOTE: copy a demoted lease back to the device ahead of the next turn (prefetch);
- RELEASE: end the lease; its blocks fall into the LRU prefix cache (reusable until evicted).

A policy sees plain data (`LeaseView`, `MemoryView`), never tensors or engine objects, so the
discrete-event simulator can drive the same policies. Issue 7's continuum/lease policies use the
same hooks: the tool name and predicted duration, the footprint, and the memory pressure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Protocol

from hetagent.policies.tool_durations import ToolDurations, TurnStats


class Decision(Enum):
    HOLD = "hold"
    DEMOTE = "demote"
    PROMOTE = "promote"
    RELEASE = "release"


@dataclass(frozen=True)
class LeaseView:
    """One program's KV between two of its turns."""

    program_id: str
    turn: int  # the turn that just finished
    last_turn: bool  # the client said no turn follows
    tool: str | None  # the tool the program is about to run, if it said
    tool_seconds: float | None  # the client's prediction of the tool's duration
    started: float  # when the lease began (the turn finished), engine clock seconds
    now: float
    num_blocks: int  # footprint in blocks (device blocks if resident, host copies if demoted)
    num_tokens: int
    bytes: int  # footprint in bytes
    demoted: bool  # the KV sits in host memory

    @property
    def age(self) -> float:
        return self.now - self.started


@dataclass(frozen=True)
class MemoryView:
    """The device KV pool as a policy sees it."""

    total_blocks: int
    free_blocks: int  # free or evictable (unreferenced) blocks
    leased_blocks: int  # held on the device by leases
    demoted_blocks: int  # held in host memory by leases
    blocked_blocks: int  # blocks the first waiting request needs but cannot get (0: no pressure)
    running: int  # requests running this step
    bytes_per_block: int
    # a running request short of `blocked_blocks` is about to be preempted, and would recompute
    # this many tokens (0: the blocked request is a waiting one, which only waits a step)
    preempt_tokens: int = 0

    @property
    def pressure(self) -> bool:
        return self.blocked_blocks > 0


class KVRetentionPolicy(Protocol):
    name: ClassVar[str]

    def on_request_end(self, lease: LeaseView, memory: MemoryView) -> Decision:
        """Called once when a program's turn finishes (before the lease exists)."""
        ...

    def on_step(self, lease: LeaseView, memory: MemoryView) -> Decision:
        """Called every engine step for every live lease, and again under the pressure of a
        running request about to be preempted (`memory.preempt_tokens`): the engine asks its
        leases to yield before it preempts anything."""
        ...

    def on_turn_arrival(self, program_id: str, turn: int, now: float) -> None:
        """Called when a program's next turn arrives (policies may learn tool durations)."""
        ...


class Evict:
    """Free at request end, as vLLM: the blocks drop into the LRU prefix cache, where a next turn
    finds them only if nothing evicted them meanwhile."""

    name: ClassVar[str] = "evict"

    def on_request_end(self, lease: LeaseView, memory: MemoryView) -> Decision:
        return Decision.RELEASE

    def on_step(self, lease: LeaseView, memory: MemoryView) -> Decision:
        return Decision.RELEASE

    def on_turn_arrival(self, program_id: str, turn: int, now: float) -> None:
        return None


class FixedTTL:
    """Hold a program's KV for `seconds` after its turn unless it was the last turn (Continuum's
    flat pin, without the tool-duration gate); then release it, or with `then="demote"` move it to
    host memory and keep it there for `host_seconds` more."""

    name: ClassVar[str] = "fixed-ttl"

    def __init__(self, seconds: float = 2.0, then: str = "release", host_seconds: float = 60.0):
        if seconds < 0 or host_seconds < 0:
            raise ValueError("fixed-ttl: seconds and host_seconds must be 0 or more")
        if then not in ("release", "demote"):
            raise ValueError(f"fixed-ttl: then must be 'release' or 'demote', got {then!r}")
        self.seconds = seconds
        self.then = then
        self.host_seconds = host_seconds

    def on_request_end(self, lease: LeaseView, memory: MemoryView) -> Decision:
        return Decision.RELEASE if lease.last_turn else Decision.HOLD

    def on_step(self, lease: LeaseView, memory: MemoryView) -> Decision:
        if lease.age < self.seconds:
            return Decision.HOLD
        if self.then == "release":
            return Decision.RELEASE
        if lease.age < self.seconds + self.host_seconds:
            return Decision.HOLD if lease.demoted else Decision.DEMOTE
        return Decision.RELEASE

    def on_turn_arrival(self, program_id: str, turn: int, now: float) -> None:
        return None


class Continuum:
    """Continuum (Li et al., 2025): pin a program's KV for a time-to-live chosen per tool call,
    tau* = argmax_tau F_f(tau) * (Tbar * eta + reload) - tau, where F_f is the CDF of tool f's
    duration (exponential prior, then pooled, then per tool), Tbar the wait of a turn whose KV
    was evicted, eta = -Corr(k, N - k) over finished programs and `reload` the re-prefill time.
    The last turn is never pinned. A pin holds until its deadline, memory pressure or not (new
    requests wait behind pins: the paper's weakness); with at most one request running under
    pressure, the pin with the latest deadline is dropped."""

    name: ClassVar[str] = "continuum"

    def __init__(self, evicted_wait_seconds: float = 1.0, prefill_seconds_per_token: float = 2e-4):
        self.evicted_wait = evicted_wait_seconds
        self.prefill_per_token = prefill_seconds_per_token
        self.durations = ToolDurations()
        self.turns = TurnStats()
        self.deadlines: dict[str, float] = {}

    def ttl(self, lease: LeaseView) -> float:
        gain = self.evicted_wait * self.turns.eta() + lease.num_tokens * self.prefill_per_token
        best, best_value = 0.0, 0.0
        for tau in self.durations.quantiles(lease.tool):
            value = self.durations.cdf(lease.tool, tau) * gain - tau
            if value > best_value:
                best, best_value = tau, value
        return best

    def on_request_end(self, lease: LeaseView, memory: MemoryView) -> Decision:
        self.durations.turn_ended(lease.program_id, lease.tool, lease.now)
        if lease.last_turn:
            self.turns.program_finished(lease.turn)
            self.durations.forget(lease.program_id)
            return Decision.RELEASE
        ttl = self.ttl(lease)
        if ttl <= 0:
            return Decision.RELEASE
        self.deadlines[lease.program_id] = lease.now + ttl
        return Decision.HOLD

    def on_step(self, lease: LeaseView, memory: MemoryView) -> Decision:
        deadline = self.deadlines.get(lease.program_id, lease.now)
        squeezed = memory.pressure and memory.running <= 1  # then the latest pin goes
        if lease.now >= deadline or (squeezed and deadline >= max(self.deadlines.values())):
            self.deadlines.pop(lease.program_id, None)
            return Decision.RELEASE
        return Decision.HOLD

    def on_turn_arrival(self, program_id: str, turn: int, now: float) -> None:
        self.durations.turn_arrived(program_id, now)
        self.deadlines.pop(program_id, None)

    def on_program_end(self, program_id: str) -> None:
        """Optional hook: the program is over (it may have ended before its last turn)."""
        self.durations.forget(program_id)
        self.deadlines.pop(program_id, None)


class ContinuumPreview(Continuum):
    """Continuum as its public preview code behaves: a tool's duration is the running mean of
    its calls; pin for a flat 2 s if that mean is at most 2 s, else not; unknown tools count as
    0 s (pinned)."""

    name: ClassVar[str] = "continuum-preview"

    def __init__(self, pin_seconds: float = 2.0, **options):
        super().__init__(**options)
        self.pin_seconds = pin_seconds

    def ttl(self, lease: LeaseView) -> float:
        seen = self.durations.by_tool.get(lease.tool or "")
        mean = sum(seen.recent) / len(seen.recent) if seen else 0.0
        return self.pin_seconds if mean <= self.pin_seconds else 0.0


class Lease:
    """hetagent's lease, re-decided every engine step (kv-leases.md). Under memory pressure, keep
    a program's KV while the time it is expected to save in the next step, hazard(tool returns)
    x benefit, is worth more than the memory is to the request blocked on it: a step of waiting,
    or the recompute of a running request the engine would otherwise preempt. The benefit of a
    resident KV is the prefill it spares (the cached tokens at the engine's prefill rate),
    weighted by the turns the program still has to go. Without pressure it is kept. Otherwise
    demote it to host memory when copying it back is cheaper than recomputing it (else release
    it), prefetch a demoted KV once its tool is likely back, and swap a preempted request out
    rather than recompute it."""

    name: ClassVar[str] = "lease"

    def __init__(
        self,
        step_seconds: float = 0.05,
        prefill_seconds_per_token: float = 2e-4,
        host_bytes_per_second: float = 10e9,
    ):
        self.step = step_seconds
        self.prefill_per_token = prefill_seconds_per_token
        self.host_bandwidth = host_bytes_per_second
        self.durations = ToolDurations()
        self.turns = TurnStats()

    def _recompute(self, lease: LeaseView) -> float:
        return lease.num_tokens * self.prefill_per_token

    def _copy(self, lease: LeaseView) -> float:
        return lease.bytes / self.host_bandwidth

    def on_request_end(self, lease: LeaseView, memory: MemoryView) -> Decision:
        self.durations.turn_ended(lease.program_id, lease.tool, lease.now)
        if lease.last_turn:
            self.turns.program_finished(lease.turn)
            self.durations.forget(lease.program_id)
            return Decision.RELEASE
        return self.on_step(lease, memory)

    def on_step(self, lease: LeaseView, memory: MemoryView) -> Decision:
        if lease.demoted:
            soon = self.durations.hazard(lease.tool, lease.age, self._copy(lease) + self.step)
            if not memory.pressure and soon >= 0.5:
                return Decision.PROMOTE  # back on the device before the program is
            return Decision.HOLD
        if not memory.pressure:
            # memory nobody waits for costs no time (demoting it anyway costs two copies: in
            # the simulator that made mean JCT worse in five of six loaded cells)
            return Decision.HOLD
        worth_copying = self._copy(lease) < self._recompute(lease)
        remaining = 1.0 + self.turns.expected_remaining(lease.turn)
        saved = self.durations.hazard(lease.tool, lease.age, self.step) * (
            self._recompute(lease) * remaining
        )
        # the blocked request's lost time: a step of waiting, or its recompute if it is a
        # running request the engine would otherwise preempt
        lost = max(self.step, memory.preempt_tokens * self.prefill_per_token)
        blocked = memory.blocked_blocks * memory.bytes_per_block
        cost = lost * min(1.0, lease.bytes / blocked)
        if saved >= cost:
            return Decision.HOLD
        return Decision.DEMOTE if worth_copying else Decision.RELEASE

    def on_preempt(self, lease: LeaseView, memory: MemoryView) -> Decision:
        """Optional hook: a running request is preempted; DEMOTE swaps its KV to host memory
        (copied back when it is admitted again), anything else recomputes it (vLLM V1)."""
        return Decision.DEMOTE if self._copy(lease) < self._recompute(lease) else Decision.RELEASE

    def on_turn_arrival(self, program_id: str, turn: int, now: float) -> None:
        self.durations.turn_arrived(program_id, now)

    def on_program_end(self, program_id: str) -> None:
        self.durations.forget(program_id)


POLICIES: dict[str, type[KVRetentionPolicy]] = {
    p.name: p for p in (Evict, FixedTTL, Continuum, ContinuumPreview, Lease)
}
