"""Decoding under a JSON Schema yields valid JSON of that schema, whatever the logits say."""

import json

import gguf
import pytest
import torch
from jsonschema import validate

from hetagent.backends.local.engine.guidance import GuideError, JsonGuide
from hetagent.backends.local.engine.models import cached_path
from hetagent.backends.local.engine.tokenizer import Tokenizer
from hetagent.orchestrator.actions import action_schema

CODE = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}
SCHEMA = action_schema({"python": CODE, "shell": CODE})


@pytest.fixture(scope="module")
def tokenizer():
    path = cached_path("smollm2-135m")
    if not path.exists():
        pytest.skip(
            f"SmolLM2 is not in the model cache ({path}): hetagent models pull smollm2-135m"
        )
    return Tokenizer.from_gguf(gguf.GGUFReader(path))


@pytest.mark.parametrize("seed", range(3))
def test_random_logits_under_the_action_schema_still_give_a_valid_action(tokenizer, seed):
    generator = torch.Generator().manual_seed(seed)
    guide = JsonGuide(tokenizer, SCHEMA)
    tokens = []
    while not guide.finished and len(tokens) < 100:
        logits = torch.randn(tokenizer.vocab_size, generator=generator)
        guide.restrict(logits)
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        guide.accept(token)
        tokens.append(token)
    text = tokenizer.decode(tokens)
    if len(tokens) == 100:  # a random walk may wander inside a long string: still a prefix
        assert text.startswith("{")
        return
    validate(json.loads(text), SCHEMA)


def test_the_guide_steers_greedy_decoding_to_the_only_allowed_shape(tokenizer):
    guide = JsonGuide(tokenizer, {"type": "object", "properties": {"ok": {"const": True}},
                                  "required": ["ok"], "additionalProperties": False})  # fmt: skip
    tokens = []
    while not guide.finished:
        logits = torch.zeros(tokenizer.vocab_size)
        logits[tokenizer.encode("hello")[0]] = 100.0  # what an unconstrained model would say
        guide.restrict(logits)
        tokens.append(int(logits.argmax()))
        guide.accept(tokens[-1])
    assert json.loads(tokenizer.decode(tokens)) == {"ok": True}


def test_a_token_the_schema_forbids_is_refused(tokenizer):
    guide = JsonGuide(tokenizer, SCHEMA)
    with pytest.raises(GuideError, match="not allowed"):
        guide.accept(tokenizer.encode("hello")[0])
