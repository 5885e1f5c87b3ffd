"""Fixtures for the model side of the engine: the real SmolLM2-135M-Instruct GGUF (fetched by
`hetagent models pull smollm2-135m`, which `make test` runs), our model on it, and Hugging Face
transformers on the same file as the independent reference."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hetagent.backends.local.engine import models
from hetagent.backends.local.engine.batch import ForwardBatch, SequenceChunk
from hetagent.backends.local.engine.paged_cache import PagedCache

MODEL = "smollm2-135m"


@pytest.fixture(scope="session")
def smollm_path():
    path = models.cached_path(MODEL)
    if not path.is_file():
        pytest.skip(
            f"{MODEL} is not in the model cache ({path}); fetch it with "
            f"`hetagent models pull {MODEL}`"
        )
    return path


@pytest.fixture(scope="session")
def smollm(smollm_path) -> models.LoadedModel:
    """Our model on the real file, float32 (the reference precision for the comparisons)."""
    return models.load(str(smollm_path), dtype=torch.float32)


@pytest.fixture(scope="session")
def hf_smollm(smollm_path):
    """transformers' own GGUF loader (dequantizes and un-permutes independently of ours)."""
    transformers = pytest.importorskip("transformers")
    folder, name = str(smollm_path.parent), smollm_path.name
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer


@dataclass
class Sequence:
    """A sequence being decoded through the paged cache, as the engine would drive it."""

    block_table: list[int]
    ids: list[int]
    cached: int = 0


@pytest.fixture
def step():
    """`step(model, cache, [(sequence, n_new_tokens), ...])` runs one engine step over several
    sequences and returns each one's last-token logits."""

    def run(model, cache: PagedCache, work: list[tuple[Sequence, int]]) -> torch.Tensor:
        chunks = [
            SequenceChunk(seq.ids[seq.cached : seq.cached + n], seq.cached, seq.block_table)
            for seq, n in work
        ]
        logits = model(ForwardBatch.build(chunks, cache.block_size), cache)
        for seq, n in work:
            seq.cached += n
        return logits

    return run


@pytest.fixture
def chat_ids(smollm) -> list[int]:
    tokenizer = smollm.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    return tokenizer.encode(prompt)


@pytest.fixture
def seq():
    """The Sequence class (test modules cannot import conftest under importlib mode)."""
    return Sequence
