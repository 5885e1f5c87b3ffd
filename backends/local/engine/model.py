"""A Llama-architecture decoder in torch: RMSNorm, rotary embeddings, grouped-query attention,
SwiGLU, over the paged KV cache.

Built for the CPU hot path: each step runs every layer once over all T new tokens of all
sequences, flattened (batched matmuls, no per-token Python loops); Q/K/V and gate/up are fused
into one matmul each; logits are computed only for each sequence's last new token. Weights are
kept in the Hugging Face layout and naming (`load_hf_state_dict`), so GGUF, safetensors and
dummy weights all arrive the same way (`weights.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hetagent.backends.local.engine import attention
from hetagent.backends.local.engine.batch import ForwardBatch
from hetagent.backends.local.engine.paged_cache import PagedCache


@dataclass(frozen=True)
class ModelConfig:
    """The shapes and constants of a Llama-family model, named as in the planner catalog."""

    name: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tied_embeddings: bool = False
    max_context: int = 4096
    # Hugging Face `rope_scaling` (only rope_type "llama3" changes the frequencies here)
    rope_scaling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )

    @classmethod
    def from_hf(cls, config: dict[str, Any], name: str = "") -> ModelConfig:
        """From a Hugging Face `config.json` of a LlamaForCausalLM-style model."""
        heads = config["num_attention_heads"]
        hidden = config["hidden_size"]
        # transformers >= 5 writes `rope_parameters` (theta and scaling together)
        rope = config.get("rope_parameters") or {}
        scaling = config.get("rope_scaling") or (
            rope if rope.get("rope_type", "default") != "default" else None
        )
        return cls(
            name=name or config.get("_name_or_path", "") or "llama",
            layers=config["num_hidden_layers"],
            hidden_size=hidden,
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            intermediate_size=config["intermediate_size"],
            vocab_size=config["vocab_size"],
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta", 10000.0)),
            rms_eps=float(config.get("rms_norm_eps", 1e-5)),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_context=int(config.get("max_position_embeddings", 4096)),
            rope_scaling=scaling,
        )

    @classmethod
    def from_catalog(cls, model_id: str) -> ModelConfig:
        """From a row of the planner's models.csv (Llama-family decoders only)."""
        from hetagent.planner.catalog import load_catalog

        models = load_catalog().models
        if model_id not in models:
            raise ValueError(
                f"{model_id!r} is not in the planner catalog; known: {', '.join(models)}"
            )
        row = models[model_id]
        shape = (row.layers, row.hidden_size, row.heads, row.kv_heads, row.head_dim)
        if row.kind != "decoder" or row.experts or None in shape or not row.intermediate_size:
            raise ValueError(f"{model_id!r} is not a dense Llama-family decoder in the catalog")
        return cls(
            name=model_id,
            layers=row.layers,
            hidden_size=row.hidden_size,
            heads=row.heads,
            kv_heads=row.kv_heads,
            head_dim=row.head_dim,
            intermediate_size=row.intermediate_size,
            vocab_size=row.vocab_size,
            # the catalog has no RoPE base; 500000 is Llama 3's, only the frequencies change
            rope_theta=500000.0,
            tied_embeddings=row.tied_embeddings,
            max_context=row.max_context or 4096,
        )


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Rotary inverse frequencies [head_dim / 2], with Llama 3's long-context scaling if set."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = config.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_context = scaling.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq.to(torch.float32)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [T, heads, D] by per-token angles (Hugging Face's rotate-half layout)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class LlamaLayer(nn.Module):
    """One decoder block; Q/K/V and gate/up are fused so each is one matmul."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        c = config
        qkv_rows = (c.heads + 2 * c.kv_heads) * c.head_dim

        def weight(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), False)

        self.attn_norm = weight(c.hidden_size)
        self.qkv = weight(qkv_rows, c.hidden_size)
        self.o = weight(c.hidden_size, c.heads * c.head_dim)
        self.mlp_norm = weight(c.hidden_size)
        self.gate_up = weight(2 * c.intermediate_size, c.hidden_size)
        self.down = weight(c.hidden_size, c.intermediate_size)


class LlamaModel(nn.Module):
    """The transformer. `forward` is the engine's step over the paged cache; `forward_full` is
    the cache-free reference the tests compare it with."""

    def __init__(
        self,
        config: ModelConfig,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)
        c = config
        self.embed = nn.Parameter(
            torch.empty(c.vocab_size, c.hidden_size, dtype=dtype, device=self.device), False
        )
        self.layers = nn.ModuleList(LlamaLayer(c, dtype, self.device) for _ in range(c.layers))
        self.norm = nn.Parameter(torch.empty(c.hidden_size, dtype=dtype, device=self.device), False)
        if c.tied_embeddings:
            self.lm_head = self.embed
        else:
            self.lm_head = nn.Parameter(torch.empty_like(self.embed), False)
        self.register_buffer("inv_freq", rope_inv_freq(c).to(self.device), persistent=False)

    # ---- weights -------------------------------------------------------------------------

    def load_hf_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy weights named as in Hugging Face's LlamaForCausalLM (`model.layers.0.self_attn.
        q_proj.weight`, ...), fusing Q/K/V and gate/up. Missing or misshapen tensors raise
        ValueError naming the tensor."""

        def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if name not in tensors:
                raise ValueError(f"weights lack tensor {name!r}")
            tensor = tensors[name]
            if tuple(tensor.shape) != shape:
                raise ValueError(f"tensor {name!r} has shape {tuple(tensor.shape)}, want {shape}")
            return tensor.to(self.dtype)

        c = self.config
        h, q_rows, kv_rows = c.hidden_size, c.heads * c.head_dim, c.kv_heads * c.head_dim
        with torch.no_grad():
            self.embed.copy_(take("model.embed_tokens.weight", (c.vocab_size, h)))
            self.norm.copy_(take("model.norm.weight", (h,)))
            if not c.tied_embeddings:
                self.lm_head.copy_(take("lm_head.weight", (c.vocab_size, h)))
            for i, layer in enumerate(self.layers):
                p = f"model.layers.{i}."
                layer.attn_norm.copy_(take(p + "input_layernorm.weight", (h,)))
                layer.mlp_norm.copy_(take(p + "post_attention_layernorm.weight", (h,)))
                q = take(p + "self_attn.q_proj.weight", (q_rows, h))
                k = take(p + "self_attn.k_proj.weight", (kv_rows, h))
                v = take(p + "self_attn.v_proj.weight", (kv_rows, h))
                layer.qkv.copy_(torch.cat((q, k, v)))
                layer.o.copy_(take(p + "self_attn.o_proj.weight", (h, q_rows)))
                gate = take(p + "mlp.gate_proj.weight", (c.intermediate_size, h))
                up = take(p + "mlp.up_proj.weight", (c.intermediate_size, h))
                layer.gate_up.copy_(torch.cat((gate, up)))
                layer.down.copy_(take(p + "mlp.down_proj.weight", (h, c.intermediate_size)))
            if "rope_freqs.weight" in tensors:  # GGUF's Llama 3 frequency factors
                factors = tensors["rope_freqs.weight"].to(torch.float32).to(self.device)
                self.inv_freq.copy_(rope_inv_freq(c).to(self.device) / factors)

    def weight_bytes(self) -> int:
        """Bytes one decode step reads: every weight once (the embedding row read is negligible
        unless the head is tied to it, in which case it is counted once as the head)."""
        total = sum(p.numel() * p.element_size() for p in self.parameters())
        if not self.config.tied_embeddings:
            total -= self.embed.numel() * self.embed.element_size()
        return total

    # ---- forward -------------------------------------------------------------------------

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # [T, 1, D]
        return angles.cos().to(self.dtype), angles.sin().to(self.dtype)

    def _run(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        attend: Any,
        last_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """The layer stack over T flattened tokens; `attend(layer, q, k, v) -> [T, heads, D]`
        supplies the attention (paged or plain)."""
        c = self.config
        t = token_ids.shape[0]
        if t and not 0 <= int(token_ids.min()) <= int(token_ids.max()) < c.vocab_size:
            raise ValueError(f"token ids must be in 0..{c.vocab_size - 1} for {c.name}")
        q_size, kv_size = c.heads * c.head_dim, c.kv_heads * c.head_dim
        cos, sin = self._rope(positions)
        x = F.embedding(token_ids, self.embed)
        for index, layer in enumerate(self.layers):
            h = F.rms_norm(x, (c.hidden_size,), layer.attn_norm, c.rms_eps)
            qk, v = F.linear(h, layer.qkv).split((q_size + kv_size, kv_size), dim=-1)
            qk = apply_rope(qk.view(t, c.heads + c.kv_heads, c.head_dim), cos, sin)
            q, k = qk.split((c.heads, c.kv_heads), dim=1)
            v = v.view(t, c.kv_heads, c.head_dim)
            out = attend(index, q, k, v)
            x = x + F.linear(out.reshape(t, q_size), layer.o)
            h = F.rms_norm(x, (c.hidden_size,), layer.mlp_norm, c.rms_eps)
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        if last_rows is not None:
            x = x[last_rows]
        x = F.rms_norm(x, (c.hidden_size,), self.norm, c.rms_eps)
        return F.linear(x, self.lm_head).float()

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, cache: PagedCache) -> torch.Tensor:
        """One engine step: write the new tokens' K/V into `cache` at `batch.slot_mapping`,
        attend over each sequence's cached prefix plus its new tokens (causally), and return the
        logits [num_sequences, vocab] (float32) of each sequence's last new token."""
        if cache.block_size != batch.block_size:
            raise ValueError(
                f"batch block size {batch.block_size} != cache block size {cache.block_size}"
            )
        device = self.device
        token_ids = batch.token_ids.to(device)
        plan = attention.plan(batch, device)
        slots = batch.slot_mapping.to(device)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            cache.write(index, slots, k, v)
            return attention.paged_attention(q, k, v, cache.k[index], cache.v[index], plan)

        return self._run(token_ids, batch.positions.to(device), attend, plan.last_rows)

    @torch.inference_mode()
    def forward_full(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits [T, vocab] (float32) for every position of one sequence, without a cache."""
        token_ids = token_ids.to(self.device)
        positions = torch.arange(token_ids.shape[0], device=self.device)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return attention.causal_attention(q, k, v)

        return self._run(token_ids, positions, attend, None)
