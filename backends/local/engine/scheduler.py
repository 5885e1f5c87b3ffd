"""Continuous batching: which requests compute how many tokens in the next engine step.

Each step first gives every running request its next tokens (1 while decoding, a chunk while
prefilling), then admits waiting requests in the `scheduling` policy's order while the token
budget, the sequence limit and free KV blocks allow. So one step mixes decodes with chunked
prefills. When a running request cannot get a block, the programs' KV leases are asked to yield
first (`KVCacheManager.reclaim`); only if they hold is the lowest-ranked running request
preempted by recompute: its blocks are dropped (they stay in the prefix cache) and it waits again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hetagent.backends.local.engine.kv_cache import KVCacheManager
from hetagent.backends.local.engine.request import Request, Status
from hetagent.policies.scheduling import QueueItem, SchedulingPolicy


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens)
    preempted: list[Request] = field(default_factory=list)
    admitted: list[Request] = field(default_factory=list)  # first admissions this step

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        policy: SchedulingPolicy,
        max_num_batched_tokens: int = 256,
        max_num_seqs: int = 32,
    ) -> None:
        if max_num_batched_tokens < 1 or max_num_seqs < 1:
            raise ValueError("the token budget and the sequence limit must be at least 1")
        self.kv = kv
        self.policy = policy
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.program_arrival: dict[str, float] = {}
        self.program_service: dict[str, int] = {}  # tokens computed for each program so far
        self.blocked_blocks = 0  # what the first waiting request lacked at the last step
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        program = request.hints.program_id
        if program is not None:
            self.program_arrival.setdefault(program, request.arrival)
        request.status = Status.WAITING
        self.waiting.append(request)

    def remove(self, request: Request) -> None:
        """Take a finished or aborted request out of the queues."""
        if request in self.running:
            self.running.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)
        program = request.hints.program_id
        if program is not None:
            served = self.program_service.get(program, 0) + request.num_forward_tokens
            self.program_service[program] = served
        if request.hints.last_turn and program is not None:
            self.program_arrival.pop(program, None)
            self.program_service.pop(program, None)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _item(self, request: Request) -> QueueItem:
        program = request.hints.program_id
        return QueueItem(
            request_id=request.request_id,
            arrival=request.arrival,
            seq=request.seq,
            program_id=program,
            program_arrival=self.program_arrival.get(program) if program else None,
            turn=request.hints.turn,
            preempted=request.preempted,
            holds_kv=program is not None and program in self.kv.leases,
            attained_tokens=self.program_service.get(program, 0) if program else 0,
        )

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        self.blocked_blocks = 0

        # running requests first, preempting the lowest-ranked unscheduled one when short
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            n = min(request.num_new_tokens, budget)
            while not self.kv.allocate_slots(request, n):
                missing = self.kv.can_allocate(request, n, [])
                self.blocked_blocks = max(self.blocked_blocks, missing)
                candidates = self.running[i:]
                victim = max(candidates, key=lambda r: self.policy.sort_key(self._item(r)))
                if self.kv.reclaim(missing, victim.num_computed_tokens, len(self.running)):
                    continue  # leases yielded the blocks: no preemption
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    break
            else:
                out.scheduled.append((request, n))
                budget -= n
                i += 1

        if out.preempted:
            return out

        # then waiting requests in policy order, while they fit
        self.waiting.sort(key=lambda r: self.policy.sort_key(self._item(r)))
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            first = request.num_computed_tokens == 0 and not request.preempted
            computed = self.kv.get_computed_blocks(request, budget)
            if computed is None:  # its KV waits in host memory for room to come back
                self.blocked_blocks = self.kv.promotion_shortfall(request, budget)
                break
            cached = len(computed) * self.kv.block_size
            n = min(request.num_tokens - request.num_computed_tokens - cached, budget)
            missing = self.kv.can_allocate(request, n, computed)
            if missing or not self.kv.allocate_slots(request, n, computed):
                self.blocked_blocks = missing
                break
            if first and request.imported_blocks is None:
                request.num_cached_tokens = cached
                self.kv.note_prefix_query(request, cached)
                out.admitted.append(request)
            self.kv.admitted(request)
            self.waiting.pop(0)
            request.status = Status.RUNNING
            request.preempted = False
            self.running.append(request)
            out.scheduled.append((request, n))
            budget -= n
        return out

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.preempt(request, len(self.running))
        request.status = Status.WAITING
        request.preempted = True
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(request)
