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

# strings are bounded, as the runtime bounds answers, so every walk must close its JSON
CODE = {
    "type": "object",
    "properties": {"code": {"type": "string", "maxLength": 40}},
    "required": ["code"],
    "additionalProperties": False,  # as the registry's schemas say
}
SCHEMA = action_schema({"python": CODE, "shell": CODE}, max_answer_chars=40)
BOUND = 200  # tokens: each is at least one character of a bounded value


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
    while not guide.finished:
        assert len(tokens) < BOUND, "the guide let a bounded value run on"
        logits = torch.randn(tokenizer.vocab_size, generator=generator)
        guide.restrict(logits)
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        guide.accept(token)
        tokens.append(token)
    text = tokenizer.decode(tokens)
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


def test_a_tool_call_in_the_schemas_own_key_order_is_accepted(tokenizer):
    # the grammar follows the schema's property order, as the prompt's example writes it
    guide = JsonGuide(tokenizer, SCHEMA)
    for token in tokenizer.encode('{"tool":"python","arguments":{"code":"print(6 * 7)"}}'):
        guide.accept(token)
    assert guide.finished
