"""Paged-attention decode: one query token per sequence attends over K/V stored in fixed-size
blocks found through a block table (vLLM's PagedAttention layout).

`paged_attention_decode` dispatches: the Triton kernel for CUDA tensors (or on CPU tensors when
`TRITON_INTERPRET=1` was set before this module was imported, which is how the tests run it),
else the torch reference. Shapes:

    q             [S, heads, D]
    k/v_cache     [num_blocks, block_size, kv_heads, D]
    block_tables  [S, max_blocks] int32 (entries past a sequence's blocks are ignored)
    context_lens  [S] int32 (tokens in the cache, >= 1)
    returns       [S, heads, D]

The kernel runs one program per (sequence, K/V head): the query heads sharing that K/V head
(grouped-query attention) are processed together, so each K/V block is read once per group, with
an online softmax over blocks (flash-decoding without the split over the context). Scores are
computed with broadcast multiply-adds rather than `tl.dot`, which needs tiles of 16 and more;
the speed of this on a GPU is untested here (this machine has no GPU).
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU path needs only torch
    triton = None


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """The definition, one sequence at a time, in float32."""
    seqs, heads, head_dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty_like(q)
    for s in range(seqs):
        context = int(context_lens[s])
        blocks = block_tables[s, : -(-context // block_size)].long()
        keys = k_cache[blocks].reshape(-1, kv_heads, head_dim)[:context].float()
        values = v_cache[blocks].reshape(-1, kv_heads, head_dim)[:context].float()
        keys = keys.repeat_interleave(heads // kv_heads, dim=1)  # [C, heads, D]
        values = values.repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("hd,chd->hc", q[s].float(), keys) * scale
        out[s] = torch.einsum("hc,chd->hd", scores.softmax(dim=-1), values).to(q.dtype)
    return out


def triton_available() -> bool:
    return triton is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Dispatch to the Triton kernel on CUDA (or under the interpreter), else the reference."""
    if triton is not None and (q.is_cuda or _interpreting()):
        return paged_attention_triton(q, k_cache, v_cache, block_tables, context_lens, scale)
    return paged_attention_reference(q, k_cache, v_cache, block_tables, context_lens, scale)


def paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Launch the Triton kernel (see the module docstring for shapes)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    seqs, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if k_cache.stride(-1) != 1 or v_cache.stride() != k_cache.stride() or q.stride(-1) != 1:
        raise ValueError("q and the caches must be contiguous in the head dimension")
    if block_size & (block_size - 1):
        raise ValueError(f"block size must be a power of two for the kernel, got {block_size}")
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    block_tables = block_tables.to(torch.int32).contiguous()
    context_lens = context_lens.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    _paged_attention_decode_kernel[(seqs, kv_heads)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        out,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        BLOCK_G=triton.next_power_of_2(group),
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return out


if triton is not None:

    @triton.jit
    def _paged_attention_decode_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        tables_ptr,
        lens_ptr,
        out_ptr,
        scale,
        stride_qs,
        stride_qh,
        stride_kb,
        stride_kt,
        stride_kh,
        stride_ts,
        stride_os,
        stride_oh,
        GROUP: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        offs_t = tl.arange(0, BLOCK_SIZE)
        g_mask = offs_g < GROUP
        d_mask = offs_d < HEAD_DIM
        heads = kv_head * GROUP + offs_g
        q_ptrs = q_ptr + seq * stride_qs + heads[:, None] * stride_qh + offs_d[None, :]
        q = tl.load(q_ptrs, mask=g_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        context = tl.load(lens_ptr + seq)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        for i in range(0, tl.cdiv(context, BLOCK_SIZE)):
            block = tl.load(tables_ptr + seq * stride_ts + i).to(tl.int64)
            t_mask = i * BLOCK_SIZE + offs_t < context
            kv_offsets = (
                block * stride_kb
                + offs_t[:, None] * stride_kt
                + kv_head * stride_kh
                + offs_d[None, :]
            )
            kv_mask = t_mask[:, None] & d_mask[None, :]
            k = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0).to(tl.float32)
            scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # [G, T]
            scores = tl.where(t_mask[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        out = acc / l_i[:, None]
        out_ptrs = out_ptr + seq * stride_os + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
