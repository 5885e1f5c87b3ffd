"""Constrained decoding: a sequence's next token restricted to those a JSON Schema allows.

llguidance (the grammar engine behind vLLM's and SGLang's `guidance` backends) computes the
allowed-token bitmask from a schema in tens of microseconds per token without torch or a GPU,
works from the Hugging Face `tokenizers` JSON the engine's tokenizer already is, and needs no
precompilation per vocabulary (xgrammar compiles one per tokenizer and wants torch; outlines-core
builds a full index per schema up front). A ReAct turn's reply is decoded under the action
schema, so even a 135M model emits a well-formed tool call or answer.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import llguidance
import llguidance.torch
import torch

from hetagent.backends.local.engine.tokenizer import Tokenizer


class GuideError(ValueError):
    """The schema cannot be used for constrained decoding; the message says why."""


@lru_cache(maxsize=8)
def _ll_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of the vocabulary (about a second to build: once per tokenizer)."""
    return llguidance.LLTokenizer(
        tokenizer.backend.to_str(),
        n_vocab=tokenizer.vocab_size,
        eos_token=list(tokenizer.stop_token_ids),
    )


@lru_cache(maxsize=64)
def _grammar(tokenizer: Tokenizer, schema: str) -> str:
    """A schema's checked grammar: a ReAct loop asks for the same one every turn."""
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": False}
    )
    failed, problems = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, _ll_tokenizer(tokenizer)
    )
    if failed:
        raise GuideError(f"the response schema cannot guide decoding: {'; '.join(problems)}")
    return grammar


class JsonGuide:
    """One sequence's matcher: `restrict` masks a logits row to the allowed tokens, `accept`
    advances past the sampled one; `finished` once the JSON value is complete."""

    def __init__(self, tokenizer: Tokenizer, schema: dict[str, Any]):
        ll = _ll_tokenizer(tokenizer)
        # not sorted: the grammar follows the schema's property order (`tool` before `arguments`)
        grammar = _grammar(tokenizer, json.dumps(schema))
        self.matcher = llguidance.LLMatcher(ll, grammar)
        self.stop_token_ids = set(tokenizer.stop_token_ids)
        self.mask = llguidance.torch.allocate_token_bitmask(1, ll.vocab_size)

    def restrict(self, logits: torch.Tensor) -> None:
        """Disallowed tokens of a [vocab] row of logits to -inf, in place."""
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.mask, 0)
        llguidance.torch.apply_token_bitmask_inplace(logits.unsqueeze(0), self.mask)

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GuideError(f"token {token} is not allowed here: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """The value is complete (only a stop token may follow) or the matcher stopped."""
        return self.matcher.is_stopped() or (self.matcher.is_accepting() and self._only_stops())

    def _only_stops(self) -> bool:
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.mask, 0)
        allowed = _allowed_ids(self.mask[0])
        return bool(allowed) and set(allowed) <= self.stop_token_ids


def _allowed_ids(mask: torch.Tensor) -> list[int]:
    """Token ids whose bit is set in a packed int32 bitmask row."""
    bits = ((mask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()
    return torch.nonzero(bits).flatten().tolist()
