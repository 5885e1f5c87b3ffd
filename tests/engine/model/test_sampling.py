"""Sampling: greedy is argmax and deterministic; seeded sampling repeats whatever else is in the
batch; top-p never picks outside the nucleus."""

from __future__ import annotations

import torch

from hetagent.backends.local.engine.batch import SamplingParams
from hetagent.backends.local.engine.sampling import make_generator, sample


def logits(rows: int = 4, vocab: int = 1000, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


def draw(params: list[SamplingParams], table: torch.Tensor, steps: int) -> list[list[int]]:
    generators = [make_generator(p) for p in params]
    return [sample(table, params, generators).tolist() for _ in range(steps)]


def test_greedy_is_argmax_every_time():
    table = logits()
    params = [SamplingParams()] * 4
    assert draw(params, table, 3) == [table.argmax(-1).tolist()] * 3
    assert make_generator(params[0]) is None


def test_seeded_sampling_repeats_regardless_of_batch_neighbours():
    table = logits(rows=3)
    seeded = SamplingParams(temperature=1.0, seed=42)
    alone = draw([seeded], table[1:2], 20)
    in_batch = draw([SamplingParams(), seeded, SamplingParams(temperature=0.7, seed=1)], table, 20)
    assert [row[0] for row in alone] == [row[1] for row in in_batch]


def test_different_seeds_draw_different_tokens():
    flat = torch.zeros(1, 1000)
    a = draw([SamplingParams(temperature=1.0, seed=1)], flat, 20)
    b = draw([SamplingParams(temperature=1.0, seed=2)], flat, 20)
    assert a != b


def test_top_p_never_samples_outside_the_nucleus():
    table = torch.full((1, 10), -10.0)
    table[0, 3], table[0, 7] = 5.0, 4.5  # together well over 0.9 of the mass
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=0)]
    picks = {row[0] for row in draw(params, table, 200)}
    assert picks == {3, 7}


def test_tiny_top_p_is_greedy():
    table = logits(rows=1)
    params = [SamplingParams(temperature=1.5, top_p=1e-6, seed=3)]
    assert {row[0] for row in draw(params, table, 30)} == {int(table.argmax())}
