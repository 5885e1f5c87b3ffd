"""Work of the phases of an LLM call: FLOPs, bytes moved, memory held, from the model's shape.

Prefill of L new tokens after a prefix of C (batch b):
    F = 2·N_active·L·b + 2·layers·d·L·(L + 2C)·b        (matmuls; causal attention)
    B = weights read + KV written (b·L·kv) + prefix KV read (b·C·kv)
Decode step at context n (batch b):
    F = 2·N_active·b + 4·layers·d·n·b
    B = weights read (for MoE: the experts the batch touches) + b·n·kv
where d = heads·head_dim and kv = the KV bytes of one token (K and V, every layer, KV heads).
Models without a transformer shape in the catalog (e.g. a TTS model) count 2·N FLOPs a token
and no attention or KV.
"""

from __future__ import annotations

from dataclasses import dataclass

from hetagent.planner.catalog import Model

BYTES_PER_VALUE = {"bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class Work:
    flops: float
    bytes: float  # moved between memory and compute units


def dtype_bytes(dtype: str) -> int:
    try:
        return BYTES_PER_VALUE[dtype]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; use one of {', '.join(BYTES_PER_VALUE)}"
        ) from None


def weight_bytes(model: Model, dtype: str = "bf16") -> float:
    """All weights (every expert of a mixture)."""
    return model.params_b * 1e9 * dtype_bytes(dtype)


def kv_bytes_per_token(model: Model, dtype: str = "bf16") -> float:
    """K and V of one token over all layers (grouped-query attention: KV heads only)."""
    if not (model.layers and model.kv_heads and model.head_dim):
        return 0.0
    return 2 * model.layers * model.kv_heads * model.head_dim * dtype_bytes(dtype)


def _attention_width(model: Model) -> int:
    return (model.heads or 0) * (model.head_dim or 0)


def _active_params(model: Model) -> float:
    return (model.active_params_b or model.params_b) * 1e9


def weights_read_per_step(model: Model, batch: int, dtype: str = "bf16") -> float:
    """Weight bytes one forward pass reads: all of a dense model; for a mixture of experts the
    shared part plus the experts a batch of `batch` tokens is expected to touch."""
    if not (model.experts and model.experts_per_token) or model.experts <= model.experts_per_token:
        return weight_bytes(model, dtype)
    experts, chosen = model.experts, model.experts_per_token
    per_expert = (model.params_b - model.active_params_b) * 1e9 / (experts - chosen)
    shared = _active_params(model) - chosen * per_expert
    touched = experts * (1 - (1 - chosen / experts) ** batch)
    return (shared + touched * per_expert) * dtype_bytes(dtype)


def prefill_work(
    model: Model, tokens: int, *, batch: int = 1, prefix: int = 0, dtype: str = "bf16"
) -> Work:
    flops = 2 * _active_params(model) * tokens * batch
    flops += (
        2 * (model.layers or 0) * _attention_width(model) * tokens * (tokens + 2 * prefix) * batch
    )
    kv = kv_bytes_per_token(model)
    moved = weights_read_per_step(model, batch * tokens, dtype) + batch * (tokens + prefix) * kv
    return Work(flops, moved)


def decode_step_work(model: Model, context: int, *, batch: int = 1, dtype: str = "bf16") -> Work:
    flops = 2 * _active_params(model) * batch
    flops += 4 * (model.layers or 0) * _attention_width(model) * context * batch
    moved = weights_read_per_step(model, batch, dtype) + batch * context * kv_bytes_per_token(model)
    return Work(flops, moved)


def step_work(
    model: Model,
    prefill_tokens: int,
    *,
    prefix: int = 0,
    batch: int = 0,
    context: int = 0,
    dtype: str = "bf16",
) -> Work:
    """One step of continuous batching: prefill chunks (`prefill_tokens` new tokens after
    `prefix` cached ones) and `batch` decodes at `context` in one forward pass, which reads
    the weights once for all its tokens (decodes ride along a prefill chunk, as in vLLM and
    Sarathi)."""
    prefill = prefill_work(model, prefill_tokens, prefix=prefix, dtype=dtype)
    if not batch:
        return prefill
    decode = decode_step_work(model, context, batch=batch, dtype=dtype)
    if not prefill_tokens:
        return decode
    weights = (
        weights_read_per_step(model, prefill_tokens + batch, dtype)
        - weights_read_per_step(model, prefill_tokens, dtype)
        - weights_read_per_step(model, batch, dtype)
    )
    return Work(prefill.flops + decode.flops, prefill.bytes + decode.bytes + weights)


def mean_context(prompt: int, output: int) -> int:
    """The context of the decode step at the middle of a generation: a step's work grows
    linearly with its context, so `output` steps cost `output` steps at this one (while one
    bound of the roofline holds throughout)."""
    return round(prompt + output / 2)


def memory_needed(model: Model, *, batch: int, context: int, dtype: str = "bf16") -> float:
    """Bytes resident while serving: weights plus the KV of `batch` sequences of `context`."""
    return weight_bytes(model, dtype) + batch * context * kv_bytes_per_token(model)
