"""The device's KV blocks: a fixed pool with reference counts, a prefix cache of full blocks
keyed by hash chains, and an LRU queue of unreferenced blocks that are evicted on demand.

A full block's hash covers its parent's hash and its own token ids, so equal hashes mean equal
prefixes (the way vLLM's automatic prefix caching and SGLang's radix tree identify shared KV).
A block whose reference count drops to zero keeps its data and its hash: it stays findable until
an allocation evicts it, least recently used first.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence

ROOT_HASH = b""


def hash_block(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """Hash of a full block: its parent's hash (b"" for the first block) and its token ids."""
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return digest.digest()


def hash_chain(token_ids: Sequence[int], block_size: int) -> list[bytes]:
    """Hashes of every full block of `token_ids`, in order."""
    hashes: list[bytes] = []
    parent = ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes


class NoFreeBlocks(RuntimeError):
    """The pool cannot satisfy an allocation (callers check `num_free` first)."""


class BlockPool:
    """`num_blocks` physical blocks of `block_size` token slots each."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("a block pool needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # hash -> block holding that prefix
        # unreferenced blocks, next to be reused first: never-hashed blocks at the front, then
        # cached ones from least to most recently freed
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now (free or evictable)."""
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached_free(self) -> int:
        """Unreferenced blocks that still hold a reusable prefix."""
        return sum(1 for b in self.free_queue if self.block_hash[b] is not None)

    def allocate(self, n: int) -> list[int]:
        """Take `n` blocks (reference count 1), evicting least recently used cached ones."""
        if n > len(self.free_queue):
            raise NoFreeBlocks(f"need {n} KV blocks, {len(self.free_queue)} free")
        blocks = []
        for _ in range(n):
            block, _ = self.free_queue.popitem(last=False)
            self._uncache(block)
            self.ref_counts[block] = 1
            blocks.append(block)
        return blocks

    def lookup(self, block_hash: bytes) -> int | None:
        return self.cached.get(block_hash)

    def touch(self, blocks: Sequence[int]) -> None:
        """Take one more reference on each block (a cache hit or a lease)."""
        for block in blocks:
            if self.ref_counts[block] == 0:
                del self.free_queue[block]
            self.ref_counts[block] += 1

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each block. Pass a sequence's blocks in order: the tail is queued
        for eviction before the head, since a longer prefix is less likely to be shared."""
        for block in reversed(blocks):
            if self.ref_counts[block] < 1:
                raise RuntimeError(f"KV block {block} freed more often than taken")
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_queue[block] = None
                if self.block_hash[block] is None:
                    self.free_queue.move_to_end(block, last=False)

    def commit(self, block: int, block_hash: bytes) -> None:
        """Record that `block` is full and holds the prefix `block_hash`. If another block already
        holds that prefix, the first one stays the cached copy."""
        if self.block_hash[block] is not None:
            return
        if block_hash in self.cached:
            return
        self.block_hash[block] = block_hash
        self.cached[block_hash] = block

    def _uncache(self, block: int) -> None:
        block_hash = self.block_hash[block]
        if block_hash is not None:
            self.block_hash[block] = None
            if self.cached.get(block_hash) == block:
                del self.cached[block_hash]
            self.evictions += 1
