"""The simulated LLM engine: continuous batching over a finite KV block pool, as the embedded
engine (`backends/local/engine`) does it, with token counts instead of tokens.

What it keeps from the real engine, step for step:
- the scheduler (`engine/scheduler.py`): running requests first (a decode token or a prefill
  chunk each, within the token budget); when a block is missing, the leases are asked to yield
  (`reclaim`), and if they hold, the lowest-ranked running request is preempted by recompute;
  then waiting requests in the `scheduling` policy's order (`sort_key(QueueItem)`) while the
  budget, the sequence limit and free blocks allow;
- the KV manager (`engine/kv_cache.py`): a finished turn's full blocks become a lease the
  `kv_retention` policy decides on (`on_request_end`), every lease is re-decided every step
  (`on_step`) and on idle ticks, a turn's arrival is told to the policy (`on_turn_arrival`),
  released blocks fall into an LRU prefix cache, demoted leases come back on admission (the
  request waits for the room), a preempted request's KV goes to host memory if the policy says
  so (`on_preempt`), and with nothing running and a request blocked on memory, leases are
  released oldest first;
- the same policy objects (`hetagent.policies.get`), seeing the same `LeaseView`/`MemoryView`.

What it models rather than computes: a conversation's cached prefix is a count of blocks (a
conversation's prompt always extends its previous one, so the prefix cache reduces to "how many
of its leading blocks are still resident"); eviction takes the least recently freed
conversation's blocks from its tail (vLLM frees a sequence's blocks tail first, so its tail is
evicted first). A shared prompt prefix (a system prompt) stays resident once computed.

Step time comes from the planner's cost model (`CostModel.step`): a step's prefill chunks and
decodes are one forward pass that reads the weights once. Runs of pure
decode steps with nothing to admit are simulated as one span (the batch is fixed until the
first request finishes); an arrival mid-span cuts the span at the next step boundary, so this
is exact up to the context growth within a span (the step time is taken at its middle).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from hetagent.planner.catalog import Device, Model
from hetagent.planner.costmodel import USABLE_MEMORY, CostModel
from hetagent.planner.workload import kv_bytes_per_token, weight_bytes
from hetagent.policies.kv_retention import Decision, KVRetentionPolicy, LeaseView, MemoryView
from hetagent.policies.scheduling import QueueItem, SchedulingPolicy

HOST_LINK_BYTES_PER_S = 25e9  # device <-> host copies of demoted KV (PCIe 5 x16, one direction)
UNKNOWN_MEMORY_CONTEXT = 32_768
LEASE_SPAN_SECONDS = 0.05  # with live leases, the policy is consulted at least this often


class SimEngineError(ValueError):
    """The engine cannot be configured (the weights do not fit, an unknown figure)."""


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16
    max_num_batched_tokens: int = 8192  # vLLM V1's chunked-prefill budget on large GPUs
    max_num_seqs: int = 256
    dtype: str = "bf16"
    idle_tick: float = 0.05  # the real engine's idle loop re-decides leases this often
    max_span_steps: int = 256  # longest run of decode steps simulated as one event (1: none)
    num_blocks: int | None = None  # the KV pool's size; default: device memory - weights


class Req:
    """One LLM call (a program's turn) inside an engine."""

    __slots__ = (
        "arrival",
        "blocks",
        "cached_tokens",
        "computed",
        "conv",
        "error",
        "finish",
        "first_token",
        "forward",
        "generated",
        "id",
        "imported",
        "last_turn",
        "num_preemptions",
        "on_done",
        "output",
        "preempted",
        "prefilled_tokens",
        "prefix_blocks",
        "prefix_id",
        "program",
        "program_arrival",
        "prompt",
        "queued_at",
        "seq",
        "shared",
        "tool",
        "tool_seconds",
        "turn",
    )  # fmt: skip

    def __init__(
        self,
        rid: str,
        conv: str,
        program: str,
        turn: int,
        prompt: int,
        output: int,
        arrival: float,
        program_arrival: float,
        last_turn: bool,
        tool: str | None,
        tool_seconds: float | None,
        prefix_id: str | None,
        prefix_tokens: int,
        on_done: Callable[[Req, float], None] | None = None,
    ) -> None:
        self.id, self.conv, self.program, self.turn = rid, conv, program, turn
        self.prompt, self.output, self.arrival = prompt, output, arrival
        self.program_arrival, self.last_turn = program_arrival, last_turn
        self.tool, self.tool_seconds = tool, tool_seconds
        self.prefix_id, self.prefix_blocks = prefix_id, prefix_tokens
        self.seq = 0
        self.computed = 0  # tokens whose KV is computed (shared prefix included)
        self.generated = 0
        self.blocks = 0  # blocks this request references (shared prefix blocks excluded)
        self.shared = 0  # shared-prefix blocks it uses
        self.cached_tokens = 0  # prompt tokens found in the cache at first admission
        self.prefilled_tokens = 0  # prompt tokens computed (including recomputes)
        self.forward = 0  # tokens computed in forward passes (the engine's num_forward_tokens)
        self.preempted = False
        self.num_preemptions = 0
        self.first_token: float | None = None
        self.finish: float | None = None
        self.queued_at = arrival
        self.on_done = on_done
        self.imported = False  # its prompt's KV arrives from a prefill pool (disaggregated)
        self.error: str | None = None  # why the engine refused it

    @property
    def num_tokens(self) -> int:
        return self.prompt + self.generated


class Lease:
    __slots__ = ("blocks", "conv", "demoted", "req", "started", "tokens")

    def __init__(self, conv: str, blocks: int, tokens: int, started: float, req: Req) -> None:
        self.conv, self.blocks, self.tokens, self.started, self.req = (
            conv,
            blocks,
            tokens,
            started,
            req,
        )
        self.demoted = False


class SimEngine:
    """One model replica on `devices` devices of one type."""

    def __init__(
        self,
        name: str,
        model: Model,
        device: Device,
        devices: int,
        scheduling: SchedulingPolicy,
        retention: KVRetentionPolicy | Callable[[SimEngine], KVRetentionPolicy],
        cost_model: CostModel,
        config: EngineConfig | None = None,
    ) -> None:
        self.name, self.model, self.device, self.devices = name, model, device, devices
        self.policy, self.cm = scheduling, cost_model
        self.pool = name
        self.config = config = config or EngineConfig()
        self.bs = config.block_size
        # a model without attention in the catalog (a TTS model) keeps no KV: a nominal byte
        # per token, so memory never binds
        per_token = kv_bytes_per_token(model, config.dtype) or 1.0
        if device.memory_gb is None:  # a CPU socket: host RAM, taken (as the planner does) to
            # hold what it is given; sized for a full batch of UNKNOWN_MEMORY_CONTEXT tokens each
            memory = per_token * config.max_num_seqs * UNKNOWN_MEMORY_CONTEXT
        else:
            memory = device.memory_gb * 1e9 * USABLE_MEMORY * devices
            memory -= weight_bytes(model, config.dtype)
        self.bytes_per_block = int(per_token * self.bs)
        self.total_blocks = config.num_blocks or int(memory // self.bytes_per_block)
        if self.total_blocks < 1:
            raise SimEngineError(
                f"{model.id} does not fit on {devices} x {device.id}: no memory left for KV"
            )
        self.free = self.total_blocks  # blocks holding nothing reusable
        self.lru: OrderedDict[str, int] = OrderedDict()  # conv -> cached unreferenced blocks
        self.lru_blocks = 0
        self.shared: dict[str, int] = {}  # resident shared prefixes -> blocks
        self.leases: dict[str, Lease] = {}
        self.leased_blocks = 0  # device blocks held by leases
        self.demoted_blocks = 0
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.program_arrival: dict[str, float] = {}
        self.program_service: dict[str, int] = {}  # tokens computed for each program so far
        self.blocked_blocks = 0
        self.seq = 0
        self.resort = False  # the waiting order may have changed (its keys only change on events)
        # step state
        self.busy = False
        self.step_start = 0.0
        self.step_plan: list[tuple[Req, int]] = []
        self.span = 0  # >0: a run of `span` pure decode steps of `step_time` each
        self.step_time = 0.0
        self.extra_time = 0.0  # host<->device copies stalling this step
        self.copy_seconds = 0.0  # copies made since the last step began
        self.generation = 0  # invalidates a step-done event whose span was cut
        # metrics
        self.busy_time = 0.0
        self.steps = 0  # engine iterations simulated
        self.spans = 0  # of which resolved as one event each (a span of decode steps)
        self.prompt_tokens = 0
        self.hit_tokens = 0
        self.reprefill_tokens = 0  # prompt tokens computed again that this conv had computed
        self.preemptions = 0
        self.pinned_idle_block_seconds = 0.0
        self.pinned_contended_block_seconds = 0.0  # of which while a request waited on memory
        self.pinned_since = 0.0
        self.swapped_blocks = 0
        self.seen_tokens: dict[str, int] = {}  # conv -> tokens whose KV it ever had computed
        self._time_memo: dict[tuple[int, int, int, int], float] = {}
        # a policy class, or a factory given the engine (the oracle prices re-prefill with it)
        self.retention: KVRetentionPolicy = (
            retention if hasattr(retention, "on_step") else retention(self)  # type: ignore[operator]
        )
        self.ticking = False

    # ---- cost model ------------------------------------------------------------------------

    def step_seconds(self, prefill_tokens: int, prefill_prefix: int, batch: int, ctx: int) -> float:
        """One engine step: `prefill_tokens` new prompt tokens after `prefill_prefix` cached ones
        (summed over chunks), plus `batch` decodes at mean context `ctx` (rounded to a block)."""
        key = (prefill_tokens, prefill_prefix // self.bs, batch, ctx // self.bs)
        t = self._time_memo.get(key)
        if t is None:
            t = self.cm.step(
                self.model,
                self.device,
                prefill_tokens,
                prefix=prefill_prefix,
                batch=batch,
                context=max(1, ctx),
                devices=self.devices,
                dtype=self.config.dtype,
            ).seconds
            if len(self._time_memo) > 200_000:
                self._time_memo.clear()
            self._time_memo[key] = t
        return t

    def prefill_seconds(self, tokens: int) -> float:
        """Re-prefilling `tokens` tokens alone (what an oracle weighs a lease against)."""
        return self.step_seconds(tokens, 0, 0, 0)

    # ---- memory ------------------------------------------------------------------------------

    def memory_view(self) -> MemoryView:
        return MemoryView(
            total_blocks=self.total_blocks,
            free_blocks=self.free + self.lru_blocks,
            leased_blocks=self.leased_blocks,
            demoted_blocks=self.demoted_blocks,
            blocked_blocks=self.blocked_blocks,
            running=len(self.running),
            bytes_per_block=self.bytes_per_block,
        )

    def _take(self, n: int, keep: str | None = None) -> None:
        """Allocate `n` blocks: free ones first, then evict least recently freed cached blocks
        (never `keep`'s, which the caller is about to revive)."""
        use = min(n, self.free)
        self.free -= use
        n -= use
        while n > 0:
            conv, cached = next(iter(self.lru.items()))
            if conv == keep:
                self.lru.move_to_end(conv)
                continue
            take = min(n, cached)
            n -= take
            self.lru_blocks -= take
            if take == cached:
                del self.lru[conv]
            else:
                self.lru[conv] = cached - take

    def _release_to_cache(self, conv: str, blocks: int) -> None:
        if blocks <= 0:
            return
        old = self.lru.pop(conv, 0)
        self.lru[conv] = old + blocks  # most recently freed: evicted last
        self.lru_blocks += blocks

    def _end_lease(self, conv: str, now: float) -> None:
        lease = self.leases.pop(conv)
        self.resort = True
        if lease.demoted:
            self.demoted_blocks -= lease.blocks
        else:
            self._note_pinned(now)
            self.leased_blocks -= lease.blocks
            self._release_to_cache(conv, lease.blocks)

    def _note_pinned(self, now: float) -> None:
        """Integrate leased-resident blocks over time (pinned-idle memory x time), and apart
        the part while a request was blocked on memory (what the pins cost others)."""
        if now > self.pinned_since:
            pinned = self.leased_blocks * (now - self.pinned_since)
            self.pinned_idle_block_seconds += pinned
            if self.blocked_blocks:
                self.pinned_contended_block_seconds += pinned
            self.pinned_since = now

    def _apply(self, lease: Lease, decision: Decision, now: float) -> None:
        if decision is Decision.RELEASE:
            self._end_lease(lease.conv, now)
        elif decision is Decision.DEMOTE and not lease.demoted:
            self._note_pinned(now)
            self.copy_seconds += lease.blocks * self.bytes_per_block / HOST_LINK_BYTES_PER_S
            lease.demoted = True
            self.leased_blocks -= lease.blocks
            self.demoted_blocks += lease.blocks
            self._release_to_cache(lease.conv, lease.blocks)  # still findable until evicted
            self.swapped_blocks += lease.blocks
        elif decision is Decision.PROMOTE and lease.demoted:
            self._promote(lease, now)

    def promotion_shortfall(self, lease: Lease, chunk_tokens: int = 0) -> int:
        """`KVCacheManager.promotion_shortfall`: blocks missing to bring a demoted lease back,
        with `chunk_tokens` more after it (its blocks still cached come back as they are)."""
        cached = self.lru.get(lease.conv, 0)
        missing = lease.blocks - min(cached, lease.blocks)
        missing += math.ceil(chunk_tokens / self.bs)
        return max(0, missing - (self.free + self.lru_blocks - cached))

    def _promote(self, lease: Lease, now: float) -> bool:
        if self.promotion_shortfall(lease):
            return False
        cached = self.lru.get(lease.conv, 0)
        missing = lease.blocks - min(cached, lease.blocks)
        self._note_pinned(now)
        if cached:
            revive = min(cached, lease.blocks)
            self._pop_lru(lease.conv, revive)
        self._take(missing, keep=lease.conv)
        self.copy_seconds += missing * self.bytes_per_block / HOST_LINK_BYTES_PER_S
        lease.demoted = False
        self.demoted_blocks -= lease.blocks
        self.leased_blocks += lease.blocks
        return True

    def _pop_lru(self, conv: str, blocks: int) -> None:
        cached = self.lru.pop(conv)
        self.lru_blocks -= cached
        if cached > blocks:  # beyond what is revived: stays cached
            self.lru[conv] = cached - blocks
            self.lru_blocks += cached - blocks

    def _view(self, lease: Lease, now: float) -> LeaseView:
        r = lease.req
        return LeaseView(
            program_id=lease.conv,
            turn=r.turn,
            last_turn=r.last_turn,
            tool=r.tool,
            tool_seconds=r.tool_seconds,
            started=lease.started,
            now=now,
            num_blocks=lease.blocks,
            num_tokens=lease.tokens,
            bytes=lease.blocks * self.bytes_per_block,
            demoted=lease.demoted,
        )

    def consult_leases(self, now: float) -> None:
        """`KVCacheManager.step`: every lease re-decided; with nothing running and a request
        blocked on memory, device leases are released oldest first."""
        if self.leases:
            memory = self.memory_view()
            for lease in list(self.leases.values()):
                self._apply(lease, self.retention.on_step(self._view(lease, now), memory), now)
        if not self.running and self.blocked_blocks > 0 and self.leases:
            missing = self.blocked_blocks
            for lease in sorted(self.leases.values(), key=lambda x: x.started):
                if missing <= 0:
                    break
                if not lease.demoted:
                    missing -= lease.blocks
                    self._end_lease(lease.conv, now)

    def reclaim(self, blocks: int, preempt_tokens: int, now: float) -> bool:
        """`KVCacheManager.reclaim`: before preempting a running request (which would recompute
        `preempt_tokens` tokens), device leases are asked again under that pressure, oldest
        first, until `blocks` came free. True if any did."""
        memory = dataclasses.replace(
            self.memory_view(), blocked_blocks=blocks, preempt_tokens=preempt_tokens
        )
        before = self.free + self.lru_blocks
        for lease in sorted(self.leases.values(), key=lambda x: x.started):
            if self.free + self.lru_blocks - before >= blocks:
                break
            if not lease.demoted:
                self._apply(lease, self.retention.on_step(self._view(lease, now), memory), now)
        return self.free + self.lru_blocks > before

    # ---- requests ------------------------------------------------------------------------------

    def add(self, req: Req, now: float) -> bool:
        """Queue a request; False (with `req.error` set) if it could never fit the KV pool, as
        the real engine refuses a prompt longer than its pool."""
        need = math.ceil((req.prompt + req.output) / self.bs)
        need -= self.shared.get(req.prefix_id, 0) if req.prefix_id else 0
        if need > self.total_blocks - sum(self.shared.values()):
            req.error = (
                f"{req.prompt} prompt + {req.output} output tokens exceed the KV pool of "
                f"{self.name} ({self.total_blocks * self.bs} tokens)"
            )
            return False
        self.program_arrival.setdefault(req.conv, req.program_arrival)
        self.seq += 1
        req.seq = self.seq
        req.queued_at = now
        self.waiting.append(req)
        self.resort = True
        self.retention.on_turn_arrival(req.conv, req.turn, now)
        return True

    def _item(self, r: Req) -> QueueItem:
        return QueueItem(
            request_id=r.id,
            arrival=r.arrival,
            seq=r.seq,
            program_id=r.conv,
            program_arrival=self.program_arrival.get(r.conv, r.program_arrival),
            turn=r.turn,
            preempted=r.preempted,
            holds_kv=r.conv in self.leases,
            attained_tokens=self.program_service.get(r.conv, 0),
        )

    def _preempt(self, r: Req, now: float) -> None:
        """`KVCacheManager.preempt`: the request's computed blocks stay in the prefix cache (it
        will be recomputed from what survives there), unless the retention policy swaps them to
        host memory as a demoted lease its next admission copies back."""
        self.running.remove(r)
        own = min(r.blocks, max(0, r.computed // self.bs - r.shared))
        self._release_to_cache(r.conv, own)
        self.free += r.blocks - own
        decide = getattr(self.retention, "on_preempt", None)
        if own > 0 and decide is not None:
            lease = Lease(r.conv, own, r.computed, now, r)
            if decide(self._view(lease, now), self.memory_view()) is Decision.DEMOTE:
                if r.conv in self.leases:
                    self._end_lease(r.conv, now)
                lease.demoted = True
                self.leases[r.conv] = lease
                self.demoted_blocks += own
                self.copy_seconds += own * self.bytes_per_block / HOST_LINK_BYTES_PER_S
                self.swapped_blocks += own
        r.blocks = 0
        r.computed = 0
        r.shared = 0
        r.preempted = True
        r.imported = False  # recomputed here from now on
        r.num_preemptions += 1
        self.preemptions += 1
        self.waiting.append(r)
        self.resort = True

    def _need(self, r: Req, n: int) -> int:
        return math.ceil((r.computed + n) / self.bs) - r.shared - r.blocks

    def schedule(self, now: float) -> list[tuple[Req, int]]:
        """One step's work, as `engine/scheduler.py`: (request, new tokens) pairs."""
        budget = self.config.max_num_batched_tokens
        if self.leased_blocks:
            self._note_pinned(now)  # up to here under the last step's blocked state
        self.blocked_blocks = 0
        plan: list[tuple[Req, int]] = []
        preempted = False
        i = 0
        bs = self.bs
        running = self.running
        while i < len(running) and budget > 0:
            r = running[i]
            n = r.prompt + r.generated - r.computed
            if n > budget:
                n = budget
            need = (r.computed + n + bs - 1) // bs - r.shared - r.blocks
            if need <= 0:  # the common case: a decode token inside its last block
                plan.append((r, n))
                budget -= n
                i += 1
                continue
            while need > self.free + self.lru_blocks:
                missing = need - self.free - self.lru_blocks
                self.blocked_blocks = max(self.blocked_blocks, missing)
                victim = max(self.running[i:], key=lambda x: self.policy.sort_key(self._item(x)))
                if self.reclaim(missing, victim.computed, now):
                    continue  # leases yielded the blocks: no preemption
                self._preempt(victim, now)
                preempted = True
                if victim is r:
                    break
                need = self._need(r, n)
            else:
                if need > 0:
                    self._take(need)
                    r.blocks += need
                plan.append((r, n))
                budget -= n
                i += 1
        if preempted:
            return plan
        if not self.waiting:
            return plan
        if self.resort:
            key = self.policy.sort_key
            self.waiting.sort(key=lambda x: key(self._item(x)))
            self.resort = False
        admitted = 0
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            r = self.waiting[0]
            conv = r.conv
            lease = self.leases.get(conv)
            if lease is not None and lease.demoted:
                # it waits for room to copy its KV back with its first chunk: recomputing needs
                # that room too, and a lease brought back for a request that still cannot
                # start would only be copied out again
                chunk = max(1, min(r.num_tokens - lease.blocks * self.bs, budget))
                short = self.promotion_shortfall(lease, chunk)
                if short or not self._promote(lease, now):
                    self.blocked_blocks = max(1, short)
                    break
            # the cached prefix: shared prompt prefix, then this conversation's own blocks
            shared = self.shared.get(r.prefix_id, 0) if r.prefix_id else 0
            own_cached = lease.blocks if lease is not None and not lease.demoted else 0
            own_cached += self.lru.get(conv, 0)
            limit = (r.num_tokens - 1) // self.bs  # at least one token is left to compute
            shared = min(shared, limit)
            own = min(own_cached, limit - shared)
            cached = (shared + own) * self.bs
            if r.imported:  # the prompt's KV came from the prefill pool: only decode is left
                cached = r.num_tokens - 1
            n = min(r.num_tokens - cached, budget)
            need = math.ceil((cached + n) / self.bs) - shared - own
            revivable = self.lru.get(conv, 0)
            avail = self.free + self.lru_blocks - revivable
            if need > avail:
                self.blocked_blocks = need - avail
                break
            # admitted: the conversation's lease ends, its blocks (and cached ones) are the turn's
            if lease is not None and not lease.demoted:
                self._note_pinned(now)
                self.leased_blocks -= lease.blocks
                del self.leases[conv]
                self.resort = True
                surplus = lease.blocks - min(lease.blocks, own)
                self._release_to_cache(conv, surplus)
                from_lru = own - (lease.blocks - surplus)
            else:
                if lease is not None:  # demoted and could not come back: its host copy goes
                    self._end_lease(conv, now)
                from_lru = own
            if from_lru > 0:
                self._pop_lru(conv, from_lru)
            self._take(need, keep=conv)
            r.blocks = own + need
            r.shared = shared
            r.computed = cached
            if not r.preempted and not r.imported and r.first_token is None:
                r.cached_tokens = cached
                self.prompt_tokens += r.prompt
                self.hit_tokens += cached
            self.waiting.pop(0)
            r.preempted = False
            self.running.append(r)
            plan.append((r, n))
            budget -= n
            admitted += 1
        return plan

    def finish(self, r: Req, now: float) -> None:
        """`KVCacheManager.finish`: a turn ended; the policy decides on a lease of its blocks."""
        self.running.remove(r)
        r.finish = now
        kv_tokens = r.computed
        full = kv_tokens // self.bs - r.shared  # own full blocks
        self.seen_tokens[r.conv] = kv_tokens
        self.program_service[r.conv] = self.program_service.get(r.conv, 0) + r.forward
        if r.last_turn:
            self.program_arrival.pop(r.conv, None)
            self.program_service.pop(r.conv, None)
            del self.seen_tokens[r.conv]
        lease = Lease(r.conv, full, kv_tokens, now, r)
        decision = self.retention.on_request_end(self._view(lease, now), self.memory_view())
        self.free += r.blocks - full
        if decision is Decision.RELEASE or full <= 0:
            self._release_to_cache(r.conv, full)
        else:
            if r.conv in self.leases:  # an older turn's lease: the newer state supersedes it
                self._end_lease(r.conv, now)
            self._note_pinned(now)
            self.leases[r.conv] = lease
            self.resort = True
            self.leased_blocks += full
            self._apply(lease, decision, now)
        r.blocks = 0

    # ---- steps --------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def begin(self, now: float) -> float | None:
        """Plan the next step (or span of decode steps) at `now`; its duration, None if idle."""
        self.consult_leases(now)
        admitted_before = len(self.running)
        plan = self.schedule(now)
        if not plan:
            return None
        # host<->device copies since the last step (demotions, swaps, promotions) stall this one
        self.extra_time, self.copy_seconds = self.copy_seconds, 0.0
        prefill = prefix = batch = ctx = 0
        decoding = True
        for r, n in plan:
            if n > 1 or r.computed < r.prompt:
                prefill += n
                prefix += r.computed
                decoding = False
            else:
                batch += 1
                ctx += r.computed
        span = 1
        most = self.config.max_span_steps
        if decoding and most > 1 and len(self.running) == admitted_before == len(plan):
            span = min(most, min(r.output - r.generated for r, _ in plan))
            if span > 1 and self.leases:
                t1 = self.step_seconds(0, 0, batch, ctx // batch)
                span = max(1, min(span, int(LEASE_SPAN_SECONDS / t1)))
            if span > 1:
                bs = self.bs
                more = [
                    (r, (r.computed + span + bs - 1) // bs - r.shared - r.blocks) for r, _ in plan
                ]
                if sum(m for _, m in more if m > 0) > self.free + self.lru_blocks:
                    span = 1
                else:
                    for r, m in more:
                        if m > 0:
                            self._take(m)
                            r.blocks += m
        mid = (ctx // batch + (span - 1) // 2) if batch else 0
        chunks = len(plan) - batch
        self.step_time = self.step_seconds(prefill, prefix // max(1, chunks), batch, mid)
        self.step_plan, self.span, self.step_start, self.busy = plan, span, now, True
        self.generation += 1
        return span * self.step_time + self.extra_time

    def cut(self, now: float) -> float | None:
        """An arrival during a span of decode steps: end the span at the next step boundary.
        Returns the new end time, or None if the span already ends then."""
        if not self.busy or self.span <= 1:
            return None
        done = min(self.span, int((now - self.step_start - self.extra_time) / self.step_time) + 1)
        if done >= self.span:
            return None
        self.span = done
        self.generation += 1
        return self.step_start + self.extra_time + done * self.step_time

    def end(self, now: float) -> list[Req]:
        """Apply the step's tokens; the requests that finished (their leases decided)."""
        self.busy = False
        duration = now - self.step_start
        self.busy_time += duration
        self.steps += self.span
        self.spans += 1
        finished = []
        for r, n in self.step_plan:
            if self.span > 1:
                r.computed += self.span
                r.generated += self.span
                r.forward += self.span
            else:
                r.forward += n
                if r.computed < r.prompt:
                    r.prefilled_tokens += min(n, r.prompt - r.computed)
                    seen = self.seen_tokens.get(r.conv, 0)  # what earlier turns had computed
                    if seen > r.computed:
                        self.reprefill_tokens += min(seen, r.computed + n) - r.computed
                r.computed += n
                if r.computed == r.num_tokens:
                    r.generated += 1
                    if r.first_token is None:
                        r.first_token = now
                        self._register_prefix(r)
            if r.generated >= r.output:
                finished.append(r)
        self.step_plan = []
        for r in finished:
            self.finish(r, now)
        return finished

    def _register_prefix(self, r: Req) -> None:
        """The first request to compute a shared prompt prefix leaves it resident for all."""
        if not r.prefix_id or r.shared or r.prefix_id in self.shared:
            return
        blocks = min(r.prefix_blocks // self.bs, r.blocks)
        if blocks > 0:
            self.shared[r.prefix_id] = blocks
            r.blocks -= blocks
            r.shared = blocks

    def end_leases(self, prefix: str, now: float) -> None:
        """The client said a program is done: end the leases of its conversations."""
        for conv in [c for c in self.leases if c.startswith(prefix)]:
            self._end_lease(conv, now)

    def idle_tick(self, now: float) -> None:
        """Nothing to run: the engine loop still lets the policy reconsider its leases."""
        self.consult_leases(now)

    def close(self, now: float) -> None:
        self._note_pinned(now)
