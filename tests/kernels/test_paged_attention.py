"""The Triton paged-attention decode kernel against its torch reference, run by Triton's
interpreter on the CPU (TRITON_INTERPRET=1) at tiny shapes; and the reference against the
engine's own CPU attention path.

The interpreter is chosen when a kernel module is imported, so each interpreted run happens in a
fresh subprocess with the variable set: the result does not depend on what else this pytest
process imported first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hetagent.backends.local.engine import attention
from hetagent.backends.local.engine.batch import ForwardBatch, SequenceChunk
from hetagent.kernels.paged_attention import paged_attention_reference

pytest.importorskip("triton")

# (seqs, heads, kv_heads, head_dim, block_size, context lengths): GQA groups of 1, 2, 3 (padded
# to 4 in the kernel), a head_dim that is not a power of two, contexts of one token, exactly
# one block, and a partial last block.
CASES = [
    (3, 4, 2, 16, 4, [1, 9, 7]),
    (2, 3, 1, 24, 8, [8, 13]),
    (2, 4, 4, 8, 2, [5, 2]),
]
# float32 matches to rounding; half types round the output once (the kernel accumulates in fp32)
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}

SCRIPT = """
import json, sys, torch
from hetagent.kernels.paged_attention import paged_attention_reference, paged_attention_triton
cases, results = json.loads(sys.argv[1]), []
for seqs, heads, kv_heads, head_dim, block_size, lens, dtype in cases:
    dtype = getattr(torch, dtype)
    g = torch.Generator().manual_seed(seqs * 100 + head_dim)
    blocks_each = max(-(-n // block_size) for n in lens) + 1
    num_blocks = seqs * blocks_each + 2
    q = torch.randn(seqs, heads, head_dim, generator=g).to(dtype)
    k = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    v = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[: seqs * blocks_each].view(seqs, -1).int()
    lens = torch.tensor(lens, dtype=torch.int32)
    got = paged_attention_triton(q, k, v, tables, lens)
    want = paged_attention_reference(q, k, v, tables, lens)
    results.append((got.float() - want.float()).abs().max().item())
print(json.dumps(results))
"""


def run_interpreted(cases: list) -> list[float]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_triton_decode_kernel_matches_reference_under_the_interpreter(dtype):
    errors = run_interpreted([[*case, dtype] for case in CASES])
    assert max(errors) <= TOLERANCE[dtype], errors


def test_reference_matches_the_engine_cpu_attention_over_block_tables():
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, head_dim, block_size = 6, 2, 16, 4
    k_cache = torch.randn(12, block_size, kv_heads, head_dim, generator=g)
    v_cache = torch.randn(12, block_size, kv_heads, head_dim, generator=g)
    tables = [[3, 0, 7], [5, 11, 2], [9]]
    lens = [10, 12, 1]
    chunks = [SequenceChunk([0], n - 1, t) for n, t in zip(lens, tables, strict=True)]
    batch = ForwardBatch.build(chunks, block_size)
    q = torch.randn(3, heads, head_dim, generator=g)
    ours = attention.paged_attention(q, None, None, k_cache, v_cache, attention.plan(batch, "cpu"))
    padded = torch.tensor([t + [0] * (3 - len(t)) for t in tables], dtype=torch.int32)
    reference = paged_attention_reference(q, k_cache, v_cache, padded, torch.tensor(lens))
    assert torch.allclose(ours, reference, atol=1e-5)
