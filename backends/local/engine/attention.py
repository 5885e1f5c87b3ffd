"""Attention over the paged KV cache.

On the CPU: gather each sequence's cached K/V through its block table and run torch's
scaled_dot_product_attention. Decoding sequences (one new token each) go in one padded call;
each prefill chunk gets its own call (padding a long chunk to the batch would waste work).
Grouped-query attention needs no copy of K/V: the query heads that share a K/V head are laid out
as extra query rows of that head. On CUDA the decode group runs the Triton paged-attention
kernel (`hetagent.kernels.paged_attention`).

The gather indices and masks depend only on the batch, so `plan` builds them once per step and
every layer reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hetagent.backends.local.engine.batch import ForwardBatch


@dataclass(frozen=True)
class PrefillChunk:
    """One sequence with several new tokens: rows [start, end) of the step's tokens."""

    start: int
    end: int
    blocks: torch.Tensor | None  # [n] blocks covering the context; None: nothing cached before
    mask: torch.Tensor | None  # [new, n * block_size] True where a query may attend


@dataclass(frozen=True)
class AttentionPlan:
    """Per-step gather indices and masks, shared by all layers."""

    last_rows: torch.Tensor  # [S] row of each sequence's last new token
    decode_rows: torch.Tensor  # [Sd] rows of the decoding sequences (one new token each)
    decode_blocks: torch.Tensor  # [Sd, max_blocks] int64 block ids (padded with block 0)
    decode_mask: torch.Tensor | None  # [Sd, 1, 1, max_blocks * block_size]; None: no padding
    decode_block_tables: torch.Tensor  # [Sd, max_blocks] int32 (for the CUDA kernel)
    decode_context_lens: torch.Tensor  # [Sd] int32
    prefills: tuple[PrefillChunk, ...]
    all_decode: bool


def plan(batch: ForwardBatch, device: torch.device) -> AttentionPlan:
    """Build the gather indices and masks for one step. K/V are gathered whole blocks at a
    time (one contiguous copy per block); the mask hides a last block's unused slots."""
    bs = batch.block_size
    offsets = [0]
    for n in batch.query_lens:
        offsets.append(offsets[-1] + n)
    decode = [s for s, n in enumerate(batch.query_lens) if n == 1]
    prefills = []
    for s, n in enumerate(batch.query_lens):
        if n == 1:
            continue
        context = batch.context_lens[s]
        if context == n:  # nothing cached before: plain causal attention on the new tokens
            prefills.append(PrefillChunk(offsets[s], offsets[s + 1], None, None))
            continue
        blocks = batch.block_tables[s][: -(-context // bs)]
        keys = torch.arange(len(blocks) * bs, device=device)
        queries = torch.arange(context - n, context, device=device)
        prefills.append(
            PrefillChunk(
                offsets[s],
                offsets[s + 1],
                torch.tensor(blocks, dtype=torch.int64, device=device),
                keys[None, :] <= queries[:, None],
            )
        )
    contexts = [batch.context_lens[s] for s in decode]
    used = [batch.block_tables[s][: -(-c // bs)] for s, c in zip(decode, contexts, strict=True)]
    width = max((len(b) for b in used), default=0)
    padded = [blocks + [0] * (width - len(blocks)) for blocks in used]
    tables = torch.tensor(padded, dtype=torch.int64).reshape(len(decode), width)
    decode_mask = None
    if contexts and min(contexts) != width * bs:
        lens = torch.tensor(contexts, device=device)
        decode_mask = (torch.arange(width * bs, device=device)[None, :] < lens[:, None])[
            :, None, None
        ]
    tables = tables.to(device)
    return AttentionPlan(
        last_rows=torch.tensor(offsets[1:], device=device) - 1,
        decode_rows=torch.tensor([offsets[s] for s in decode], dtype=torch.int64, device=device),
        decode_blocks=tables,
        decode_mask=decode_mask,
        decode_block_tables=tables.to(torch.int32),
        decode_context_lens=torch.tensor(contexts, dtype=torch.int32, device=device),
        prefills=tuple(prefills),
        all_decode=len(decode) == len(batch.query_lens),
    )


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    step: AttentionPlan,
) -> torch.Tensor:
    """Attention of the step's queries q [T, heads, D] over the cache (which already holds the
    new tokens' K/V; k/v [T, kv_heads, D] are those new ones, used when nothing is cached).
    Returns [T, heads, D]."""
    if step.all_decode:
        return _decode(q, k_cache, v_cache, step)
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    out = torch.empty_like(q)
    if step.decode_rows.numel():
        out[step.decode_rows] = _decode(q[step.decode_rows], k_cache, v_cache, step)
    for chunk in step.prefills:
        rows = slice(chunk.start, chunk.end)
        if chunk.blocks is None:
            out[rows] = causal_attention(q[rows], k[rows], v[rows])
        else:
            keys = k_cache.index_select(0, chunk.blocks).view(-1, kv_heads, head_dim)
            values = v_cache.index_select(0, chunk.blocks).view(-1, kv_heads, head_dim)
            out[rows] = _grouped(q[rows], keys, values, chunk.mask)
    return out


def _decode(q, k_cache, v_cache, step: AttentionPlan) -> torch.Tensor:
    """One query per sequence; q [Sd, heads, D]."""
    if q.is_cuda:
        from hetagent.kernels.paged_attention import paged_attention_decode

        return paged_attention_decode(
            q, k_cache, v_cache, step.decode_block_tables, step.decode_context_lens
        )
    sd, heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    blocks = step.decode_blocks.view(-1)  # index_select copies whole blocks: 2x faster than []
    keys = k_cache.index_select(0, blocks).view(sd, -1, kv_heads, head_dim).transpose(1, 2)
    values = v_cache.index_select(0, blocks).view(sd, -1, kv_heads, head_dim).transpose(1, 2)
    grouped = q.view(sd, kv_heads, heads // kv_heads, head_dim)  # [Sd, kvh, group, D]
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=step.decode_mask)
    return out.reshape(sd, heads, head_dim)


def _grouped(q, keys, values, mask) -> torch.Tensor:
    """One sequence's queries q [L, heads, D] over keys/values [C, kv_heads, D] with a mask
    [L, C]: each K/V head's query heads become extra query rows, so K/V are not repeated."""
    length, heads, head_dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    rows = q.view(length, kv_heads, group, head_dim).permute(1, 2, 0, 3)
    rows = rows.reshape(kv_heads, group * length, head_dim)
    mask = mask.expand(group, -1, -1).reshape(1, group * length, -1)
    out = F.scaled_dot_product_attention(
        rows, keys.transpose(0, 1), values.transpose(0, 1), attn_mask=mask
    )
    out = out.view(kv_heads, group, length, head_dim).permute(2, 0, 1, 3)
    return out.reshape(length, heads, head_dim)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain causal attention of one sequence: q [L, heads, D], k/v [L, kv_heads, D]."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1),
        v.transpose(0, 1),
        is_causal=True,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.transpose(0, 1)
