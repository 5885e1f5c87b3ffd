"""Weights into a LlamaModel: from GGUF (llama.cpp's format, dequantized at load), from
safetensors in the Hugging Face Llama layout, or random (`dummy`) at a catalog model's shapes.

GGUF and safetensors both end as a dict named as in Hugging Face's LlamaForCausalLM, so the
model has one loading path (`LlamaModel.load_hf_state_dict`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from hetagent.backends.local.engine.model import LlamaModel, ModelConfig

# GGUF tensor names → Hugging Face names ({} is the layer index)
_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "rope_freqs.weight": "rope_freqs.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def gguf_field(reader, key: str, default=None):
    """A GGUF metadata value (scalars, strings and arrays as Python values)."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(reader, name: str) -> ModelConfig:
    """The model's shapes from GGUF metadata (`llama.*` keys)."""
    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (only 'llama')")

    def key(suffix: str, default=None):
        value = gguf_field(reader, f"llama.{suffix}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks llama.{suffix}")
        return value

    hidden, heads = key("embedding_length"), key("attention.head_count")
    vocab = gguf_field(reader, "llama.vocab_size") or len(
        reader.fields["tokenizer.ggml.tokens"].data
    )
    names = {t.name for t in reader.tensors}
    return ModelConfig(
        name=name,
        layers=key("block_count"),
        hidden_size=hidden,
        heads=heads,
        kv_heads=key("attention.head_count_kv", heads),
        head_dim=key("attention.key_length", hidden // heads),
        intermediate_size=key("feed_forward_length"),
        vocab_size=vocab,
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        tied_embeddings="output.weight" not in names,
        max_context=key("context_length", 4096),
    )


def _unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (convert_hf_to_gguf's `permute`): GGUF interleaves
    the two rotary halves of each head, Hugging Face keeps them as halves."""
    rows, cols = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def gguf_tensors(reader, config: ModelConfig) -> dict[str, torch.Tensor]:
    """All tensors of a GGUF file, dequantized to float32 and renamed as in Hugging Face."""
    from gguf.quants import dequantize

    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        match = _LAYER.match(tensor.name)
        pattern = tensor.name if match is None else _LAYER.sub("blk.{}.", tensor.name)
        if pattern not in _GGUF_NAMES:
            raise ValueError(f"GGUF tensor {tensor.name!r} is not part of a Llama model")
        hf_name = _GGUF_NAMES[pattern].format(match.group(1) if match else "")
        try:
            array = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise ValueError(
                f"GGUF tensor {tensor.name!r} uses {tensor.tensor_type.name}, which the gguf "
                "package cannot dequantize"
            ) from None
        weight = torch.from_numpy(np.require(array, np.float32, ["C", "W"]))
        if hf_name.endswith("q_proj.weight"):
            weight = _unpermute(weight, config.heads)
        elif hf_name.endswith("k_proj.weight"):
            weight = _unpermute(weight, config.kv_heads)
        tensors[hf_name] = weight
    return tensors


def safetensors_config(folder: Path) -> ModelConfig:
    """The model's shapes from a Hugging Face folder's config.json."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json")
    config = json.loads(path.read_text())
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if config.get("model_type", "llama") != "llama" and "LlamaForCausalLM" not in architectures:
        raise ValueError(f"{path}: model_type {config.get('model_type')!r} is not 'llama'")
    return ModelConfig.from_hf(config, name=folder.name)


def safetensors_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's *.safetensors files (sharded or not)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} has no .safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


@torch.no_grad()
def init_dummy(model: LlamaModel, seed: int = 0) -> None:
    """Random weights at the model's real shapes (for performance work, not for text): matrices
    N(0, 0.02) as in Llama's initializer, norms 1."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.dim() == 1:
            param.fill_(1.0)
        else:
            values = torch.empty(param.shape, dtype=torch.float32)
            param.copy_(values.normal_(0.0, 0.02, generator=generator))
