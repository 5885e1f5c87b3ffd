"""The transformer: paged incremental decode equals the cache-free forward, our GGUF loading
equals transformers', and SmolLM2 answers sensibly."""

from __future__ import annotations

import pytest
import torch

from hetagent.backends.local.engine import models
from hetagent.backends.local.engine.model import ModelConfig, rope_inv_freq
from hetagent.backends.local.engine.paged_cache import PagedCache

# float32 throughout: differences come only from summation order (SDPA over gathered blocks vs
# one causal SDPA, batched vs single matmuls); logits of this model are O(10..40).
PAGED_ATOL = 1e-3
HF_ATOL = 1e-3


def test_paged_decode_over_chunked_prefill_matches_full_forward(smollm, chat_ids, step, seq):
    model = smollm.model
    full = model.forward_full(torch.tensor(chat_ids))
    cache = PagedCache(smollm.config, num_blocks=40, block_size=4)
    n = len(chat_ids)
    # two sequences with scattered, interleaved block tables, advancing at different paces
    a = seq([5, 2, 9, 11, 3, 7, 13, 1, 20, 21, 22, 23], chat_ids)
    b = seq([30, 31, 14, 15, 16, 17, 18, 19, 24, 25, 26, 27], chat_ids)
    got = step(model, cache, [(a, 10), (b, 1)])  # prefill chunk + a single-token "prefill"
    assert torch.allclose(got[0], full[9], atol=PAGED_ATOL)
    assert torch.allclose(got[1], full[0], atol=PAGED_ATOL)
    got = step(model, cache, [(a, n - 12), (b, 17)])  # second chunks, both over a cached prefix
    assert torch.allclose(got[0], full[n - 3], atol=PAGED_ATOL)
    assert torch.allclose(got[1], full[17], atol=PAGED_ATOL)
    for _ in range(2):  # decode steps, context lengths differ between the two
        position_a, position_b = a.cached, b.cached
        got = step(model, cache, [(a, 1), (b, 1)])
        assert torch.allclose(got[0], full[position_a], atol=PAGED_ATOL)
        assert torch.allclose(got[1], full[position_b], atol=PAGED_ATOL)
    got = step(model, cache, [(b, 2)])  # a 2-token chunk alone in a step
    assert torch.allclose(got[0], full[b.cached - 1], atol=PAGED_ATOL)


def test_decode_batch_mixed_with_prefill_matches_full_forward(smollm, chat_ids, step, seq):
    model = smollm.model
    full = model.forward_full(torch.tensor(chat_ids))
    cache = PagedCache(smollm.config, num_blocks=64, block_size=8)
    decoding = [seq([i * 8 + j for j in range(8)], chat_ids) for i in range(3)]
    for i, s in enumerate(decoding):
        step(model, cache, [(s, 5 + i)])  # contexts 5, 6, 7
    fresh = seq(list(range(40, 48)), chat_ids)
    got = step(model, cache, [(decoding[0], 1), (fresh, 20), (decoding[1], 1), (decoding[2], 1)])
    expected = full[[5, 19, 6, 7]]
    assert torch.allclose(got, expected, atol=PAGED_ATOL)


def test_logits_match_transformers_on_the_same_gguf(smollm, hf_smollm, chat_ids):
    hf_model, _ = hf_smollm
    ids = torch.tensor(chat_ids)
    with torch.no_grad():
        reference = hf_model(ids[None]).logits[0]
    ours = smollm.model.forward_full(ids)
    assert (ours - reference).abs().max().item() < HF_ATOL


def generate_greedy(smollm, ids: list[int], max_tokens: int, step, seq) -> list[int]:
    cache = PagedCache(smollm.config, num_blocks=32, block_size=16)
    sequence = seq(list(range(32)), list(ids))
    logits = step(smollm.model, cache, [(sequence, len(ids))])
    out = []
    for _ in range(max_tokens):
        token = int(logits[0].argmax())
        if token in smollm.tokenizer.stop_token_ids:
            break
        out.append(token)
        sequence.ids.append(token)
        logits = step(smollm.model, cache, [(sequence, 1)])
    return out


def test_greedy_chat_answer_is_stable_and_names_paris(smollm, chat_ids, step, seq):
    first = generate_greedy(smollm, chat_ids, 24, step, seq)
    second = generate_greedy(smollm, chat_ids, 24, step, seq)
    assert first == second
    answer = smollm.tokenizer.decode(first)
    assert "Paris" in answer, answer


def test_greedy_continuation_matches_transformers_generate(smollm, hf_smollm, chat_ids, step, seq):
    hf_model, _ = hf_smollm
    ours = generate_greedy(smollm, chat_ids, 12, step, seq)
    with torch.no_grad():
        theirs = hf_model.generate(
            torch.tensor([chat_ids]), max_new_tokens=len(ours), do_sample=False
        )[0, len(chat_ids) :].tolist()
    assert ours == theirs


def test_dummy_weights_build_a_catalog_model_at_its_shapes():
    loaded = models.load("dummy:smollm2-135m")
    config = loaded.config
    assert (config.layers, config.hidden_size, config.heads, config.kv_heads) == (30, 576, 9, 3)
    model = loaded.model
    assert model.embed.shape == (49152, 576)
    assert model.layers[0].qkv.shape == ((9 + 2 * 3) * 64, 576)
    assert model.layers[0].gate_up.shape == (2 * 1536, 576)
    assert model.lm_head is model.embed  # tied in the catalog
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e9 - 0.1345) < 0.001  # models.csv: 134.5M from the architecture
    logits = model.forward_full(torch.tensor([1, 2, 3]))
    assert logits.shape == (3, 49152) and torch.isfinite(logits).all()


def test_dummy_of_a_model_that_is_not_a_llama_decoder_is_refused():
    with pytest.raises(models.ModelNotAvailable, match="not a dense Llama-family decoder"):
        models.load("dummy:minilm-l6")
    with pytest.raises(models.ModelNotAvailable, match="not in the planner catalog"):
        models.load("dummy:no-such-model")


def test_llama3_rope_scaling_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }
    hf_config = transformers.LlamaConfig(
        hidden_size=2048,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rope_scaling=scaling,
        rope_theta=500000.0,
        max_position_embeddings=131072,
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    config = ModelConfig.from_hf(hf_config.to_dict())
    assert torch.allclose(rope_inv_freq(config), expected.float(), rtol=1e-5)


def test_safetensors_folder_in_hf_layout_loads_to_the_same_model(smollm, hf_smollm, tmp_path):
    from safetensors.torch import save_file

    hf_model, hf_tokenizer = hf_smollm
    # transformers refuses save_pretrained on a GGUF-loaded model: write the layout by hand
    hf_model.config.save_pretrained(tmp_path)
    tensors = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    half = len(tensors) // 2  # sharded, as large checkpoints are
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:half]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({k: tensors[k] for k in names[half:]}, tmp_path / "model-00002-of-00002.safetensors")
    hf_tokenizer.save_pretrained(tmp_path)
    loaded = models.load(str(tmp_path))
    assert loaded.config.layers == smollm.config.layers
    ids = torch.tensor([1, 9690, 198, 2683, 359, 253, 5356])
    assert torch.allclose(loaded.model.forward_full(ids), smollm.model.forward_full(ids), atol=1e-4)
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.tokenizer.apply_chat_template(messages) == smollm.tokenizer.apply_chat_template(
        messages
    )


def test_bfloat16_weights_and_cache_follow_the_float32_answer(
    smollm, smollm_path, chat_ids, step, seq
):
    # fed float32's greedy answer ("...Paris..."), bfloat16 ranks each next token of it among
    # its first few at every step; not its greedy answer itself: bfloat16 logits tie (on CPUs
    # with native bfloat16 dot products the answer's first two candidates round to one value)
    answer = generate_greedy(smollm, chat_ids, 12, step, seq)
    assert "Paris" in smollm.tokenizer.decode(answer)
    loaded = models.load(str(smollm_path), dtype=torch.bfloat16)
    cache = PagedCache(loaded.config, num_blocks=8, block_size=16, dtype=torch.bfloat16)
    sequence = seq(list(range(8)), list(chat_ids))
    logits = step(loaded.model, cache, [(sequence, len(chat_ids))])
    for token in answer:
        assert token in logits[0].float().topk(3).indices.tolist()
        sequence.ids.append(token)
        logits = step(loaded.model, cache, [(sequence, 1)])


def test_a_token_id_outside_the_vocabulary_is_a_clear_error(smollm):
    with pytest.raises(ValueError, match=r"token ids must be in 0\.\.49151"):
        smollm.model.forward_full(torch.tensor([1, 49152]))
