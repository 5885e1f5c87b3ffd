"""What one engine step hands the model, and how a request asks to be sampled.

The scheduler side (block tables, chunked prefill) and the model side (attention over the paged
cache) meet here and nowhere else, the way vLLM's v1 core passes one flattened batch per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SequenceChunk:
    """One sequence's share of a step: `token_ids` are new (not yet in the cache) and start at
    position `start`; `block_table` lists the physical blocks that cover positions
    0 .. start + len(token_ids) - 1."""

    token_ids: list[int]
    start: int
    block_table: list[int]


@dataclass(frozen=True)
class ForwardBatch:
    """Every scheduled sequence's new tokens, flattened (T tokens over S sequences).

    The model writes each new token's K/V at `slot_mapping` (block_id * block_size + offset),
    attends over the sequence's first `context_lens[s]` cached tokens, and returns one row of
    logits per sequence (its last new token).
    """

    token_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, absolute position of each token in its sequence
    slot_mapping: torch.Tensor  # [T] int64
    query_lens: list[int]  # [S] new tokens per sequence (a prefill chunk, or 1 when decoding)
    context_lens: list[int]  # [S] tokens in the cache after this step (cached prefix + new)
    block_tables: list[list[int]]  # [S] physical block ids per sequence
    block_size: int

    @property
    def num_sequences(self) -> int:
        return len(self.query_lens)

    @classmethod
    def build(cls, chunks: list[SequenceChunk], block_size: int) -> ForwardBatch:
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for chunk in chunks:
            end = chunk.start + len(chunk.token_ids)
            if not chunk.token_ids:
                raise ValueError("a scheduled sequence must bring at least one new token")
            if len(chunk.block_table) * block_size < end:
                raise ValueError(
                    f"block table of {len(chunk.block_table)} blocks cannot hold {end} tokens"
                )
            tokens.extend(chunk.token_ids)
            for position in range(chunk.start, end):
                positions.append(position)
                block = chunk.block_table[position // block_size]
                slots.append(block * block_size + position % block_size)
        return cls(
            token_ids=torch.tensor(tokens, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            query_lens=[len(c.token_ids) for c in chunks],
            context_lens=[c.start + len(c.token_ids) for c in chunks],
            block_tables=[list(c.block_table) for c in chunks],
            block_size=block_size,
        )


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI-style sampling: temperature 0 is greedy (deterministic); a seed makes sampling
    repeatable per request."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    # JSON Schema the output must follow (decoding is constrained to it: guidance.py)
    response_schema: dict | None = field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be 0 or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
