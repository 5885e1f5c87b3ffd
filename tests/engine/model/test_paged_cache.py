"""The physical KV cache: blocks move between engines (export/import) and to host memory
(swap) without changing what the model computes from them."""

from __future__ import annotations

import pytest
import torch

from hetagent.backends.local.engine.model import ModelConfig
from hetagent.backends.local.engine.paged_cache import PagedCache

TINY = ModelConfig(
    "tiny",
    layers=2,
    hidden_size=32,
    heads=4,
    kv_heads=2,
    head_dim=8,
    intermediate_size=64,
    vocab_size=100,
)


def filled(num_blocks: int = 6, block_size: int = 4, dtype=torch.float32) -> PagedCache:
    cache = PagedCache(TINY, num_blocks, block_size, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    for layer in range(TINY.layers):
        cache.k[layer].copy_(torch.randn(cache.k[layer].shape, generator=generator))
        cache.v[layer].copy_(torch.randn(cache.v[layer].shape, generator=generator))
    return cache


def test_exported_prefill_decodes_on_a_second_engine_like_on_the_first(smollm, chat_ids, step, seq):
    prefill_cache = PagedCache(smollm.config, num_blocks=16, block_size=8)
    decode_cache = PagedCache(smollm.config, num_blocks=16, block_size=8)
    here = seq([3, 7, 1, 12, 9, 0, 2, 4], chat_ids[:-1])
    step(smollm.model, prefill_cache, [(here, len(chat_ids) - 1)])
    used = here.block_table[: -(-here.cached // 8)]
    data = prefill_cache.export_blocks(used)
    there = seq([10, 11, 13, 14, 15, 5, 6, 8], chat_ids[:-1], cached=here.cached)
    decode_cache.import_blocks(there.block_table[: len(used)], data)
    here.ids, there.ids = chat_ids, chat_ids
    local = step(smollm.model, prefill_cache, [(here, 1)])
    remote = step(smollm.model, decode_cache, [(there, 1)])
    assert torch.equal(local, remote)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_export_import_round_trip_is_exact(dtype):
    source, target = filled(dtype=dtype), PagedCache(TINY, 6, 4, dtype=dtype)
    target.import_blocks([5, 0], source.export_blocks([1, 3]))
    for layer in range(TINY.layers):
        assert torch.equal(target.k[layer][[5, 0]], source.k[layer][[1, 3]])
        assert torch.equal(target.v[layer][[5, 0]], source.v[layer][[1, 3]])


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (PagedCache(TINY, 6, 8), "block_size"),
        (PagedCache(TINY, 6, 4, dtype=torch.bfloat16), "dtype"),
        (PagedCache(ModelConfig("x", 3, 32, 4, 2, 8, 64, 100), 6, 4), "layers"),
    ],
)
def test_import_into_a_cache_of_another_shape_names_the_mismatch(other, field):
    data = filled().export_blocks([0, 1])
    with pytest.raises(ValueError, match=field):
        other.import_blocks([0, 1], data)


def test_import_refuses_truncated_or_foreign_data_and_wrong_block_counts():
    cache = filled()
    data = cache.export_blocks([0, 1])
    with pytest.raises(ValueError, match="bytes"):
        cache.import_blocks([0, 1], data[:-3])
    with pytest.raises(ValueError, match="export tag"):
        cache.import_blocks([0, 1], b"garbage")
    with pytest.raises(ValueError, match="blocks"):
        cache.import_blocks([0], data)
    with pytest.raises(ValueError, match="outside"):
        cache.export_blocks([6])


def test_swap_out_then_in_restores_blocks_at_new_ids():
    cache = filled()
    before = [cache.k[0][2].clone(), cache.v[1][4].clone()]
    host = cache.swap_out([2, 4])
    assert host.device.type == "cpu"
    for layer in range(TINY.layers):  # the device blocks are reused by someone else
        cache.k[layer].zero_()
        cache.v[layer].zero_()
    cache.swap_in([0, 5], host)
    assert torch.equal(cache.k[0][0], before[0]) and torch.equal(cache.v[1][5], before[1])
    with pytest.raises(ValueError, match="shape"):
        cache.swap_in([0], host)


def test_bytes_per_block_is_the_memory_one_block_takes():
    cache = PagedCache(TINY, 3, 4, dtype=torch.bfloat16)
    total = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    assert PagedCache.bytes_per_block(TINY, 4, torch.bfloat16) * 3 == total


def test_copy_blocks_duplicates_every_layer():
    cache = filled()
    cache.copy_blocks([1], [4])
    for layer in range(TINY.layers):
        assert torch.equal(cache.k[layer][4], cache.k[layer][1])
        assert torch.equal(cache.v[layer][4], cache.v[layer][1])
