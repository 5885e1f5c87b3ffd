"""The oracle KV retention policy: it is told each tool's true duration, which only the
simulator knows (the trace holds it), so it lives here rather than in `policies/`. It bounds
what a predictor of tool durations could gain: hold a program's KV while holding pays.

- the last turn: release;
- a tool that returns within `slack` seconds plus the time re-prefilling the lease would take
  (what the program would lose without it: the recompute, and its wait to be admitted again,
  for which `slack` stands; 2 s, Continuum's flat pin): hold; once the tool has returned,
  release if a request is blocked on memory (the program's turn is queued behind it and the
  pins would deadlock the queue);
- a longer tool: release at once. Holding it while memory looks free does not pay: the engine
  preempts running requests rather than dropping leases when decodes outgrow memory, so idle
  pins turn into recomputation (measured: holding long calls until pressure showed was slower
  than evict on claude-code traces).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from hetagent.policies.kv_retention import Decision, LeaseView, MemoryView


class Oracle:
    name: ClassVar[str] = "oracle"

    def __init__(self, prefill_seconds: Callable[[int], float], slack: float = 2.0):
        self.prefill_seconds = prefill_seconds  # the engine's re-prefill time of n tokens
        self.slack = slack

    def _decide(self, lease: LeaseView, memory: MemoryView) -> Decision:
        if lease.last_turn or lease.tool_seconds is None:
            return Decision.RELEASE
        remaining = lease.tool_seconds - lease.age
        if remaining <= 0:
            return Decision.RELEASE if memory.pressure else Decision.HOLD
        if remaining <= self.slack + self.prefill_seconds(lease.num_tokens):
            return Decision.HOLD
        return Decision.RELEASE

    def on_request_end(self, lease: LeaseView, memory: MemoryView) -> Decision:
        return self._decide(lease, memory)

    def on_step(self, lease: LeaseView, memory: MemoryView) -> Decision:
        return self._decide(lease, memory)

    def on_turn_arrival(self, program_id: str, turn: int, now: float) -> None:
        return None
