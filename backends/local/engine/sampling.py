"""Choosing the next token: greedy at temperature 0, else temperature and nucleus (top-p)
sampling with each request's own random generator, so a seeded request repeats exactly whatever
else shares its batch."""

from __future__ import annotations

import torch

from hetagent.backends.local.engine.batch import SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """The request's generator: None when greedy; seeded from `params.seed` when given, else
    from fresh entropy."""
    if params.temperature == 0:
        return None
    generator = torch.Generator()
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


@torch.inference_mode()
def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """Next token ids [S] (int64, on the CPU) for logits [S, vocab]."""
    if not len(params) == len(generators) == logits.shape[0]:
        raise ValueError(
            f"{logits.shape[0]} rows of logits, {len(params)} params, {len(generators)} generators"
        )
    logits = logits.float().cpu()
    out = logits.argmax(dim=-1)
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.temperature == 0:
            continue
        if generator is None:
            raise ValueError(
                f"row {row} samples at temperature {p.temperature} but has no generator"
            )
        probs = torch.softmax(logits[row] / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least the top token)
            drop = sorted_probs.cumsum(0) - sorted_probs >= p.top_p
            sorted_probs[drop] = 0.0
            choice = torch.multinomial(sorted_probs, 1, generator=generator)
            out[row] = order[choice[0]]
        else:
            out[row] = torch.multinomial(probs, 1, generator=generator)[0]
    return out
