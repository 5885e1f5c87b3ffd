"""Waiting-queue order for the engine's scheduler (and the simulator's engine model).

A policy only ranks queued requests: it sees a `QueueItem` (what a scheduler knows about a waiting
request, no tensors) and returns a sort key, lowest first. Admission, memory and preemption stay
in the scheduler, so a policy change touches this file alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol


@dataclass(frozen=True)
class QueueItem:
    """A waiting request as a policy sees it.

    `arrival` is when this request (turn) arrived; `program_arrival` when its program's first turn
    arrived (equal to `arrival` for requests without a program). `seq` breaks ties in arrival order.
    """

    request_id: str
    arrival: float
    seq: int
    program_id: str | None = None
    program_arrival: float | None = None
    turn: int = 0
    preempted: bool = False
    holds_kv: bool = False  # the program's KV is leased (resident or demoted) for this turn
    attained_tokens: int = 0  # tokens the engine has computed for the program's earlier turns

    @property
    def program_start(self) -> float:
        """When the program began (the request's own arrival without a program)."""
        return self.program_arrival if self.program_arrival is not None else self.arrival


class SchedulingPolicy(Protocol):
    name: ClassVar[str]

    def sort_key(self, item: QueueItem) -> tuple: ...


class FCFS:
    """First come, first served per request, as vLLM: a program's next turn queues behind every
    request that arrived before it. Preempted requests go first (they already waited)."""

    name: ClassVar[str] = "fcfs"

    def sort_key(self, item: QueueItem) -> tuple:
        return (not item.preempted, item.arrival, item.seq)


class ProgramFCFS:
    """First come, first served per program: a turn is ranked by its program's first arrival, so
    a program's next turn goes ahead of programs that started after it (no scheduling bubble)."""

    name: ClassVar[str] = "program-fcfs"

    def sort_key(self, item: QueueItem) -> tuple:
        return (not item.preempted, item.program_start, item.arrival, item.seq)


class ContinuumScheduling:
    """Continuum's queue order: preempted requests first, then turns of programs whose KV is
    pinned (so a pin is used before it expires), then program-level FCFS."""

    name: ClassVar[str] = "continuum"

    def sort_key(self, item: QueueItem) -> tuple:
        return (not item.preempted, not item.holds_kv, item.program_start, item.arrival, item.seq)


class PLAS:
    """Program-level least attained service (Autellix): the turn of the program that has had the
    least service so far (tokens computed for its earlier turns) goes first, so short programs
    are not stuck behind long ones; aging keeps long programs from starving: every second a turn
    has waited counts as `aging_tokens_per_second` tokens less service."""

    name: ClassVar[str] = "plas"

    def __init__(self, aging_tokens_per_second: float = 200.0):
        if aging_tokens_per_second < 0:
            raise ValueError("plas: aging_tokens_per_second must be 0 or more")
        self.aging = aging_tokens_per_second

    def sort_key(self, item: QueueItem) -> tuple:
        # attained - aging x (now - arrival) ranks like attained + aging x arrival: `now` is the
        # same for every item of one ranking
        return (not item.preempted, item.attained_tokens + self.aging * item.arrival, item.seq)


POLICIES: dict[str, type[SchedulingPolicy]] = {
    p.name: p for p in (FCFS, ProgramFCFS, ContinuumScheduling, PLAS)
}
