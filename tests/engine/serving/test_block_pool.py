"""The block pool: reference counts, prefix hashes of full blocks, LRU eviction."""

import pytest

from hetagent.backends.local.engine.block_pool import BlockPool, NoFreeBlocks, hash_chain


def test_hash_chain_depends_on_the_whole_prefix_not_just_the_block():
    a = hash_chain([1, 2, 3, 4, 5, 6, 7, 8], block_size=4)
    b = hash_chain([9, 2, 3, 4, 5, 6, 7, 8], block_size=4)
    assert len(a) == 2
    assert a[0] != b[0]
    assert a[1] != b[1]  # same tokens in block 2, different parent
    assert hash_chain([1, 2, 3, 4, 5, 6, 7, 8, 9], block_size=4) == a  # partial block: no hash


def test_allocation_fails_cleanly_when_the_pool_is_short():
    pool = BlockPool(num_blocks=3, block_size=4)
    pool.allocate(2)
    with pytest.raises(NoFreeBlocks):
        pool.allocate(2)
    assert pool.num_free == 1


def test_freed_full_block_stays_findable_until_evicted():
    pool = BlockPool(num_blocks=2, block_size=4)
    [block] = pool.allocate(1)
    [h] = hash_chain([1, 2, 3, 4], 4)
    pool.commit(block, h)
    pool.free([block])
    assert pool.num_free == 2
    assert pool.lookup(h) == block
    pool.allocate(1)  # takes the never-used block first
    assert pool.lookup(h) == block
    pool.allocate(1)  # now the cached block must go
    assert pool.lookup(h) is None
    assert pool.evictions == 1


def test_least_recently_freed_cached_block_is_evicted_first():
    pool = BlockPool(num_blocks=2, block_size=2)
    first, second = pool.allocate(2)
    h1, h2 = hash_chain([1, 2], 2)[0], hash_chain([3, 4], 2)[0]
    pool.commit(first, h1)
    pool.commit(second, h2)
    pool.free([first])
    pool.free([second])
    pool.touch([first])  # reused (a prefix hit) and freed again: now most recent
    pool.free([first])
    pool.allocate(1)
    assert pool.lookup(h2) is None
    assert pool.lookup(h1) == first


def test_shared_block_is_freed_only_when_every_holder_lets_go():
    pool = BlockPool(num_blocks=2, block_size=2)
    [block] = pool.allocate(1)
    pool.touch([block])
    pool.free([block])
    assert pool.num_free == 1
    pool.free([block])
    assert pool.num_free == 2
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free([block])
