"""The physical KV cache: per layer, K and V tensors of fixed-size blocks.

Which block belongs to which sequence is the KV cache manager's business (`kv_cache.py`); this
room only stores, copies, exports and swaps blocks by id. A token at position p of a sequence
lives at slot `block_table[p // block_size] * block_size + p % block_size`.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from hetagent.backends.local.engine.model import ModelConfig

_MAGIC = b"HETAGENT-KV1"
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16)}


class PagedCache:
    """K/V blocks for every layer: `k[layer]`, `v[layer]` are [num_blocks, block_size, kv_heads,
    head_dim] tensors on `device`."""

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need at least one block of one token, got {num_blocks} blocks of {block_size}"
            )
        if dtype not in _DTYPES.values():
            raise ValueError(f"KV cache dtype must be one of {', '.join(_DTYPES)}, got {dtype}")
        self.layers = config.layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_blocks, block_size, config.kv_heads, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(self.layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(self.layers)]

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        """Memory of one block across all layers, K and V (for sizing the pool to a budget)."""
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * config.layers * block_size * config.kv_heads * config.head_dim * element

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens' k/v [T, kv_heads, head_dim] at flat `slots` [T] of one layer."""
        self.k[layer].view(-1, self.kv_heads, self.head_dim).index_copy_(0, slots, k)
        self.v[layer].view(-1, self.kv_heads, self.head_dim).index_copy_(0, slots, v)

    def _check_ids(self, block_ids: list[int]) -> torch.Tensor:
        bad = [b for b in block_ids if not 0 <= b < self.num_blocks]
        if bad:
            raise ValueError(f"block ids {bad} are outside the cache's 0..{self.num_blocks - 1}")
        return torch.tensor(block_ids, dtype=torch.int64, device=self.device)

    def _gather(self, block_ids: list[int]) -> torch.Tensor:
        index = self._check_ids(block_ids)
        k = torch.stack([layer[index] for layer in self.k])
        v = torch.stack([layer[index] for layer in self.v])
        return torch.stack((k, v))  # [2, layers, n, block_size, kv_heads, head_dim]

    def _scatter(self, block_ids: list[int], blocks: torch.Tensor) -> None:
        index = self._check_ids(block_ids)
        blocks = blocks.to(device=self.device, dtype=self.dtype)
        for layer in range(self.layers):
            self.k[layer].index_copy_(0, index, blocks[0, layer])
            self.v[layer].index_copy_(0, index, blocks[1, layer])

    def copy_blocks(self, src: list[int], dst: list[int]) -> None:
        """Copy blocks src[i] → dst[i] in every layer (e.g. copy-on-write of a shared block)."""
        if len(src) != len(dst):
            raise ValueError(
                f"copy_blocks needs as many sources as targets ({len(src)}, {len(dst)})"
            )
        self._scatter(dst, self._gather(src))

    def _header(self, count: int) -> dict:
        return {
            "layers": self.layers,
            "block_size": self.block_size,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "dtype": str(self.dtype).removeprefix("torch."),
            "blocks": count,
        }

    def export_blocks(self, block_ids: list[int]) -> bytes:
        """The K/V of `block_ids` (in that order) as bytes another engine can `import_blocks`:
        a magic tag, a JSON header of shapes and dtype, then the raw tensor."""
        blocks = self._gather(block_ids).contiguous().cpu()
        header = json.dumps(self._header(len(block_ids))).encode()
        payload = blocks.view(torch.uint8).numpy().tobytes()
        return _MAGIC + struct.pack("<I", len(header)) + header + payload

    def import_blocks(self, block_ids: list[int], data: bytes) -> None:
        """Write exported blocks into `block_ids` (same count and order as exported). A cache of
        another shape or dtype, or truncated data, raises ValueError saying which."""
        if not data.startswith(_MAGIC):
            raise ValueError("KV data does not start with the hetagent KV export tag")
        start = len(_MAGIC) + 4
        (length,) = struct.unpack("<I", data[len(_MAGIC) : start])
        header = json.loads(data[start : start + length])
        want = self._header(len(block_ids))
        mismatched = [f"{k} {header.get(k)} != {v}" for k, v in want.items() if header.get(k) != v]
        if mismatched:
            raise ValueError("KV data does not fit this cache: " + "; ".join(mismatched))
        shape = (2, self.layers, len(block_ids), self.block_size, self.kv_heads, self.head_dim)
        payload = data[start + length :]
        expected = 2 * self.layers * len(block_ids) * self.block_size * self.kv_heads
        expected *= self.head_dim * torch.empty((), dtype=self.dtype).element_size()
        if len(payload) != expected:
            raise ValueError(f"KV data holds {len(payload)} bytes, expected {expected}")
        raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        self._scatter(block_ids, raw.view(self.dtype).view(shape))

    def swap_out(self, block_ids: list[int]) -> torch.Tensor:
        """Copy blocks to host memory (pinned when the cache is on a GPU); the caller may then
        free the device blocks. Returns [2, layers, n, block_size, kv_heads, head_dim]."""
        blocks = self._gather(block_ids)
        if self.device.type == "cpu":
            return blocks  # already a fresh copy in host memory
        host = torch.empty(blocks.shape, dtype=blocks.dtype, pin_memory=True)
        host.copy_(blocks)
        return host

    def swap_in(self, block_ids: list[int], host: torch.Tensor) -> None:
        """Write blocks from `swap_out` back into (possibly different) `block_ids`."""
        shape = (2, self.layers, len(block_ids), self.block_size, self.kv_heads, self.head_dim)
        if tuple(host.shape) != shape:
            raise ValueError(f"swapped blocks have shape {tuple(host.shape)}, expected {shape}")
        self._scatter(block_ids, host)
