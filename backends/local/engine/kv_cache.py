"""The KV cache manager: block tables per sequence, prefix reuse, leases, demotion, export.

It owns the `BlockPool` (which block is used by whom) and drives the model's `PagedCache` only to
move bytes (demote/promote, export/import). The scheduler asks it for a request's cached prefix
and for blocks for each step; the engine hands it a finished request, and if the request belongs
to a program the `kv_retention` policy decides whether the program's full blocks are held
(a *lease*), demoted to host memory, or released into the LRU prefix cache. Every engine step the
policy is consulted again for every live lease, and once more before the scheduler preempts a
running request (`reclaim`); a preempted request's blocks may become a demoted lease too
(`on_preempt`: swapped out rather than recomputed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from hetagent.backends.local.engine.block_pool import ROOT_HASH, BlockPool, hash_block
from hetagent.backends.local.engine.request import Hints, Request
from hetagent.policies.kv_retention import Decision, KVRetentionPolicy, LeaseView, MemoryView


@dataclass
class Lease:
    """A program's full KV blocks, kept between two of its turns."""

    program_id: str
    hints: Hints  # of the turn that finished
    started: float
    token_ids: list[int]  # the tokens the blocks hold (a whole number of blocks)
    hashes: list[bytes]
    blocks: list[int] = field(default_factory=list)  # device blocks (references held) if resident
    host: Any = None  # host copy [2, layers, n, block_size, kv_heads, head_dim] if demoted

    @property
    def demoted(self) -> bool:
        return self.host is not None

    @property
    def num_blocks(self) -> int:
        return len(self.hashes)


@dataclass(frozen=True)
class KVStats:
    num_blocks: int
    block_size: int
    bytes_per_block: int
    used_blocks: int  # referenced by a sequence or a lease
    free_blocks: int  # free or evictable
    cached_free_blocks: int  # evictable blocks that still hold a reusable prefix
    leased_blocks: int  # device blocks held by leases
    demoted_blocks: int  # blocks' worth of KV held in host memory by leases
    num_leases: int
    prefix_queries: int  # prompt tokens looked up in the prefix cache
    prefix_hits: int  # of which found
    evictions: int  # cached blocks reused for other data
    swapped_out_blocks: int  # demotions to host memory, in blocks
    swapped_in_blocks: int  # copies back from host memory, in blocks

    @property
    def usage(self) -> float:
        return self.used_blocks / self.num_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


class KVCacheManager:
    def __init__(
        self,
        cache: Any,  # PagedCache
        num_blocks: int,
        block_size: int,
        bytes_per_block: int,
        retention: KVRetentionPolicy,
    ) -> None:
        self.cache = cache
        self.pool = BlockPool(num_blocks, block_size)
        self.block_size = block_size
        self.bytes_per_block = bytes_per_block
        self.retention = retention
        self.tables: dict[str, list[int]] = {}
        self.hashes: dict[str, list[bytes]] = {}  # committed full-block hashes per sequence
        self.leases: dict[str, Lease] = {}
        self.kept: dict[str, Request] = {}  # finished requests whose KV waits for export
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.swapped_out_blocks = 0
        self.swapped_in_blocks = 0
        self.now = 0.0  # the engine clock at the last step

    # ---- admission and steps -------------------------------------------------------------

    def get_computed_blocks(self, request: Request, budget: int) -> list[int] | None:
        """Blocks of the prefix cache that already hold the start of `request`'s tokens (not yet
        referenced). A demoted lease of the request's program is brought back first; None while
        the pool has no room for it and the request's first chunk (at most `budget` tokens):
        the request waits, since recomputing would need that room too, and a lease brought
        back for a request that still cannot start would only be copied out again. At least
        one token is always left to compute (its logits are needed)."""
        if request.num_computed_tokens or request.imported_blocks is not None:
            return []
        program = request.hints.program_id
        lease = self.leases.get(program) if program is not None else None
        if (
            lease is not None
            and lease.demoted
            and (self.promotion_shortfall(request, budget) or not self._promote(lease))
        ):
            return None
        tokens = request.all_token_ids
        blocks: list[int] = []
        parent = ROOT_HASH
        for start in range(0, len(tokens) - 1 - self.block_size + 1, self.block_size):
            parent = hash_block(parent, tokens[start : start + self.block_size])
            block = self.pool.lookup(parent)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def can_allocate(self, request: Request, num_new_tokens: int, computed: list[int]) -> int:
        """Blocks missing to allocate (0: it fits)."""
        table = self.tables.get(request.request_id, [])
        total = request.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
        need = math.ceil(total / self.block_size) - len(table) - len(computed)
        revived = sum(1 for b in computed if self.pool.ref_counts[b] == 0)
        return max(0, need - (self.pool.num_free - revived))

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed: list[int] | None = None
    ) -> bool:
        """Give `request` blocks for its next `num_new_tokens` tokens (after taking `computed`
        prefix blocks, for a newly admitted request). False, changing nothing, if the pool is
        short."""
        computed = computed or []
        if self.can_allocate(request, num_new_tokens, computed):
            return False
        rid = request.request_id
        table = self.tables.setdefault(rid, [])
        if rid not in self.hashes:
            self.hashes[rid] = []
        if computed:
            self.pool.touch(computed)
            table.extend(computed)
            self.hashes[rid].extend(self.pool.block_hash[b] for b in computed)  # type: ignore[misc]
            request.num_computed_tokens += len(computed) * self.block_size
        total = request.num_computed_tokens + num_new_tokens
        need = math.ceil(total / self.block_size) - len(table)
        if need > 0:
            table.extend(self.pool.allocate(need))
        return True

    def admitted(self, request: Request) -> None:
        """A program's next turn got its blocks: the program's lease ends, the new turn now
        holds whatever of it they share."""
        program = request.hints.program_id
        if program is not None and program in self.leases:
            self._end_lease(program)

    def note_prefix_query(self, request: Request, cached_tokens: int) -> None:
        self.prefix_queries += len(request.prompt_token_ids)
        self.prefix_hits += cached_tokens

    def commit(self, request: Request) -> None:
        """Register the request's newly full, computed blocks in the prefix cache."""
        rid = request.request_id
        table, hashes = self.tables[rid], self.hashes[rid]
        full = request.num_computed_tokens // self.block_size
        tokens = request.all_token_ids
        for i in range(len(hashes), full):
            parent = hashes[-1] if hashes else ROOT_HASH
            block_hash = hash_block(parent, tokens[i * self.block_size : (i + 1) * self.block_size])
            hashes.append(block_hash)
            self.pool.commit(table[i], block_hash)

    def block_table(self, request: Request) -> list[int]:
        return self.tables[request.request_id]

    def preempt(self, request: Request, running: int) -> None:
        """Take a running request's blocks. They stay in the prefix cache until evicted, and it
        is recomputed from what survives there; unless the retention policy (`on_preempt`)
        swaps them to host memory as a demoted lease of its program, which its next admission
        copies back."""
        lease = self._lease_of(request, self.now)
        decide = getattr(self.retention, "on_preempt", None)
        if lease is not None and decide is not None:
            memory = self.memory_view(blocked=0, running=running)
            if decide(self._view(lease, self.now), memory) is Decision.DEMOTE:
                self._keep(lease, Decision.DEMOTE)
        self._free_sequence(request.request_id)
        request.num_computed_tokens = 0
        request.imported_blocks = None

    # ---- request end and leases ----------------------------------------------------------

    def finish(self, request: Request, now: float, memory: MemoryView) -> None:
        """A request ended: keep its KV for export, lease it to its program, or free it."""
        rid = request.request_id
        if rid not in self.tables:
            return
        if request.keep_kv and request.finish_reason != "abort":
            self.kept[rid] = request
            return
        lease = self._lease_of(request, now) if request.finish_reason != "abort" else None
        if lease is not None:
            decision = self.retention.on_request_end(self._view(lease, now), memory)
            if decision is not Decision.RELEASE:
                self._keep(lease, decision)
        self._free_sequence(rid)

    def _lease_of(self, request: Request, now: float) -> Lease | None:
        """A lease on the request's full computed blocks (None without a program or a block)."""
        program, rid = request.hints.program_id, request.request_id
        full = len(self.hashes.get(rid, []))
        if program is None or full == 0:
            return None
        return Lease(
            program_id=program,
            hints=request.hints,
            started=now,
            token_ids=request.all_token_ids[: full * self.block_size],
            hashes=list(self.hashes[rid]),
            blocks=self.tables[rid][:full],
        )

    def _keep(self, lease: Lease, decision: Decision) -> None:
        """Make `lease` its program's (before the request's own references go)."""
        self.pool.touch(lease.blocks)  # the lease's own references
        if lease.program_id in self.leases:  # an older lease: the newer state supersedes it
            self._end_lease(lease.program_id)
        self.leases[lease.program_id] = lease
        self._apply(lease, decision)

    def step(self, now: float, memory: MemoryView) -> None:
        """Consult the retention policy on every lease. If nothing runs and a waiting request is
        blocked on memory that leases hold on the device, leases are released oldest first
        whatever the policy says: the engine never idles with work waiting on held memory."""
        self.now = now
        for lease in list(self.leases.values()):
            self._apply(lease, self.retention.on_step(self._view(lease, now), memory))
        if memory.running == 0 and memory.blocked_blocks > 0:
            missing = memory.blocked_blocks
            for lease in sorted(self.leases.values(), key=lambda x: x.started):
                if missing <= 0:
                    break
                if not lease.demoted:
                    missing -= len(lease.blocks)
                    self._end_lease(lease.program_id)

    def reclaim(self, blocks: int, preempt_tokens: int, running: int) -> bool:
        """A running request is `blocks` short and the scheduler would preempt one that has
        computed `preempt_tokens` tokens: before it does, every device lease is asked again
        under that pressure, oldest first, until enough is freed. True if any block came free
        (the scheduler retries; a policy that holds everything leaves preemption to go on)."""
        memory = self.memory_view(blocks, running, preempt_tokens)
        before = self.pool.num_free
        for lease in sorted(self.leases.values(), key=lambda x: x.started):
            if self.pool.num_free - before >= blocks:
                break
            if not lease.demoted:
                self._apply(lease, self.retention.on_step(self._view(lease, self.now), memory))
        return self.pool.num_free > before

    def memory_view(self, blocked: int, running: int, preempt_tokens: int = 0) -> MemoryView:
        """The pool as a retention policy sees it, with what the scheduler knows."""
        stats = self.stats()
        return MemoryView(
            total_blocks=stats.num_blocks,
            free_blocks=stats.free_blocks,
            leased_blocks=stats.leased_blocks,
            demoted_blocks=stats.demoted_blocks,
            blocked_blocks=blocked,
            running=running,
            bytes_per_block=self.bytes_per_block,
            preempt_tokens=preempt_tokens,
        )

    def announce_tool(self, program_id: str, tool: str, seconds: float | None) -> None:
        """The program runs `tool` now (known once its reply is parsed): what its lease's
        retention decisions go on."""
        lease = self.leases.get(program_id)
        if lease is not None:
            lease.hints = dataclasses.replace(lease.hints, tool=tool, tool_seconds=seconds)

    def end_program(self, program_id: str) -> None:
        """The program will send no more turns: its lease (if any) ends now, and a policy that
        keeps state per program may forget it."""
        if program_id in self.leases:
            self._end_lease(program_id)
        forget = getattr(self.retention, "on_program_end", None)
        if forget is not None:
            forget(program_id)

    def turn_arrived(self, request: Request, now: float) -> None:
        if request.hints.program_id is not None:
            self.retention.on_turn_arrival(request.hints.program_id, request.hints.turn, now)

    def _apply(self, lease: Lease, decision: Decision) -> None:
        if decision is Decision.RELEASE:
            self._end_lease(lease.program_id)
        elif decision is Decision.DEMOTE and not lease.demoted:
            lease.host = self.cache.swap_out(lease.blocks)
            self.swapped_out_blocks += len(lease.blocks)
            self.pool.free(lease.blocks)  # still in the prefix cache until evicted
            lease.blocks = []
        elif decision is Decision.PROMOTE and lease.demoted:
            self._promote(lease)

    def _promote(self, lease: Lease) -> bool:
        """Bring a demoted lease back to the device: blocks still in the prefix cache are taken
        as they are, the others are allocated and copied from host memory."""
        if self._shortfall(lease):
            return False
        found: list[int | None] = [self.pool.lookup(h) for h in lease.hashes]
        missing = [i for i, b in enumerate(found) if b is None]
        present = [b for b in found if b is not None]
        self.pool.touch(present)
        if missing:
            new = self.pool.allocate(len(missing))
            self.cache.swap_in(new, lease.host[:, :, missing])
            self.swapped_in_blocks += len(new)
            for i, block in zip(missing, new, strict=True):
                found[i] = block
                self.pool.commit(block, lease.hashes[i])
        lease.blocks = [b for b in found if b is not None]
        lease.host = None
        return True

    def promotion_shortfall(self, request: Request, budget: int) -> int:
        """Blocks the pool lacks to bring the request's program's demoted lease back together
        with the request's first chunk after it (0: both fit); blocks still in the prefix
        cache come back as they are."""
        lease = self.leases[request.hints.program_id]  # type: ignore[index]
        chunk = min(len(request.all_token_ids) - len(lease.token_ids), budget)
        return self._shortfall(lease, math.ceil(max(1, chunk) / self.block_size))

    def _shortfall(self, lease: Lease, extra_blocks: int = 0) -> int:
        """Blocks the pool lacks for a demoted lease's blocks that left the prefix cache, plus
        `extra_blocks`; blocks still cached but unreferenced are taken from the free count."""
        found = [self.pool.lookup(h) for h in lease.hashes]
        missing = sum(1 for b in found if b is None) + extra_blocks
        revived = sum(1 for b in found if b is not None and self.pool.ref_counts[b] == 0)
        return max(0, missing - (self.pool.num_free - revived))

    def _end_lease(self, program_id: str) -> None:
        lease = self.leases.pop(program_id)
        if not lease.demoted:
            self.pool.free(lease.blocks)

    def _free_sequence(self, rid: str) -> None:
        self.pool.free(self.tables.pop(rid, []))
        self.hashes.pop(rid, None)

    def _view(self, lease: Lease, now: float) -> LeaseView:
        hints = lease.hints
        return LeaseView(
            program_id=lease.program_id,
            turn=hints.turn,
            last_turn=hints.last_turn,
            tool=hints.tool,
            tool_seconds=hints.tool_seconds,
            started=lease.started,
            now=now,
            num_blocks=lease.num_blocks,
            num_tokens=len(lease.token_ids),
            bytes=lease.num_blocks * self.bytes_per_block,
            demoted=lease.demoted,
        )

    # ---- export / import (disaggregated prefill and decode) -------------------------------

    def export_blocks(self, request: Request) -> bytes:
        """The KV of every computed token of a kept request (whole blocks, in order)."""
        table = self.tables[request.request_id]
        n = math.ceil(request.num_computed_tokens / self.block_size)
        return self.cache.export_blocks(table[:n])

    def release_kept(self, request_id: str) -> None:
        if self.kept.pop(request_id, None) is not None:
            self._free_sequence(request_id)

    def import_blocks(self, request: Request, num_tokens: int, data: bytes) -> None:
        """Allocate blocks for `num_tokens` tokens of `request`, fill them from `data`, and make
        them the request's table (its KV for those tokens is then computed)."""
        n = math.ceil(num_tokens / self.block_size)
        if n > self.pool.num_free:
            free = self.pool.num_free
            raise ValueError(f"imported KV needs {n} blocks, the pool has {free} free")
        blocks = self.pool.allocate(n)
        try:
            self.cache.import_blocks(blocks, data)
        except Exception:
            self.pool.free(blocks)
            raise
        self.tables[request.request_id] = blocks
        self.hashes[request.request_id] = []
        request.num_computed_tokens = num_tokens
        request.imported_blocks = blocks
        self.commit(request)

    # ---- metrics -------------------------------------------------------------------------

    def stats(self) -> KVStats:
        leased = {b for lease in self.leases.values() for b in lease.blocks}
        return KVStats(
            num_blocks=self.pool.num_blocks,
            block_size=self.block_size,
            bytes_per_block=self.bytes_per_block,
            used_blocks=self.pool.num_used,
            free_blocks=self.pool.num_free,
            cached_free_blocks=self.pool.num_cached_free,
            leased_blocks=len(leased),
            demoted_blocks=sum(x.num_blocks for x in self.leases.values() if x.demoted),
            num_leases=len(self.leases),
            prefix_queries=self.prefix_queries,
            prefix_hits=self.prefix_hits,
            evictions=self.pool.evictions,
            swapped_out_blocks=self.swapped_out_blocks,
            swapped_in_blocks=self.swapped_in_blocks,
        )
