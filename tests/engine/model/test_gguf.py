"""GGUF loading at every tensor type the issue names, on a tiny Llama written the way llama.cpp's
convert_hf_to_gguf.py writes one (Q/K rows permuted for its rotary layout)."""

from __future__ import annotations

from dataclasses import replace

import gguf
import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

from hetagent.backends.local.engine import models, weights
from hetagent.backends.local.engine.model import LlamaModel, ModelConfig

TINY = ModelConfig(
    "tiny", layers=2, hidden_size=64, heads=4, kv_heads=2, head_dim=16,
    intermediate_size=96, vocab_size=259, rope_theta=10000.0, rms_eps=1e-5,
    tied_embeddings=False, max_context=128,
)  # fmt: skip
Q = gguf.GGMLQuantizationType
# worst absolute error of each type on N(0, 0.02) weights (blocks of 32: Q8_0 rounds to 1/127 of
# the block's max, Q4_1 to 1/15 of its range, F16 to 11 bits)
TYPES = {Q.F32: 0.0, Q.F16: 1e-4, Q.Q8_0: 1e-3, Q.Q4_1: 1e-2}


def hf_weights(config: ModelConfig) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "model.embed_tokens.weight": (config.vocab_size, config.hidden_size),
        "lm_head.weight": (config.vocab_size, config.hidden_size),
        "model.norm.weight": (config.hidden_size,),
    }
    q_rows, kv_rows = config.heads * config.head_dim, config.kv_heads * config.head_dim
    for i in range(config.layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (config.hidden_size,),
            p + "post_attention_layernorm.weight": (config.hidden_size,),
            p + "self_attn.q_proj.weight": (q_rows, config.hidden_size),
            p + "self_attn.k_proj.weight": (kv_rows, config.hidden_size),
            p + "self_attn.v_proj.weight": (kv_rows, config.hidden_size),
            p + "self_attn.o_proj.weight": (config.hidden_size, q_rows),
            p + "mlp.gate_proj.weight": (config.intermediate_size, config.hidden_size),
            p + "mlp.up_proj.weight": (config.intermediate_size, config.hidden_size),
            p + "mlp.down_proj.weight": (config.hidden_size, config.intermediate_size),
        }
    return {
        name: (1 + 0.1 * torch.randn(shape, generator=generator))
        if len(shape) == 1
        else 0.02 * torch.randn(shape, generator=generator)
        for name, shape in shapes.items()
    }


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, verbatim in effect."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "lm_head.weight": "output.weight",
    "model.norm.weight": "output_norm.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf(path, config: ModelConfig, tensors: dict[str, torch.Tensor], qtype) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.layers)
    writer.add_context_length(config.max_context)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    writer.add_token_list([*alphabet, "<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    writer.add_token_types([1] * 256 + [3] * 3)
    writer.add_token_merges([])
    writer.add_eos_token_id(258)
    for hf_name, tensor in tensors.items():
        if hf_name.startswith("model.layers."):
            index, rest = hf_name.removeprefix("model.layers.").split(".", 1)
            name = f"blk.{index}.{GGUF_NAMES[rest]}"
        else:
            name = GGUF_NAMES[hf_name]
        array = tensor.numpy().astype(np.float32)
        if name.endswith("attn_q.weight"):
            array = llama_cpp_permute(array, config.heads)
        elif name.endswith("attn_k.weight"):
            array = llama_cpp_permute(array, config.kv_heads)
        if array.ndim == 1 or qtype == Q.F32:  # llama.cpp keeps norms in F32
            writer.add_tensor(name, array)
        elif qtype == Q.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("qtype", list(TYPES), ids=lambda q: q.name)
def test_gguf_tensors_dequantize_and_unpermute_to_the_hf_weights(tmp_path, qtype):
    original = hf_weights(TINY)
    path = tmp_path / "tiny.gguf"
    write_gguf(path, TINY, original, qtype)
    reader = gguf.GGUFReader(path)
    config = weights.gguf_config(reader, "tiny")
    assert config.rms_eps == pytest.approx(TINY.rms_eps)  # GGUF stores it as float32
    assert replace(config, rms_eps=TINY.rms_eps) == TINY
    loaded = weights.gguf_tensors(reader, TINY)
    assert loaded.keys() == original.keys()
    for name, tensor in original.items():
        error = (loaded[name] - tensor).abs().max().item()
        assert error <= TYPES[qtype], (name, error)


def test_f32_gguf_model_computes_exactly_what_the_hf_weights_compute(tmp_path):
    original = hf_weights(TINY)
    write_gguf(tmp_path / "tiny.gguf", TINY, original, Q.F32)
    from_gguf = models.load(str(tmp_path / "tiny.gguf")).model
    direct = LlamaModel(TINY)
    direct.load_hf_state_dict(original)
    ids = torch.tensor([1, 50, 7, 200, 3, 3, 90])
    assert torch.equal(from_gguf.forward_full(ids), direct.forward_full(ids))


def test_a_gguf_of_another_architecture_is_refused_in_one_line(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "mamba")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(models.ModelNotAvailable, match="architecture 'mamba' is not supported"):
        models.load(str(tmp_path / "other.gguf"))
