"""Each small function against the Transformers/torch piece it reimplements, on the same random input.

Tolerance: max |ours - ref| <= 1e-5 x max |ref| (float32).
"""

import numpy as np
import pytest
import torch

from minillava.model import attention, layers, merge, rope, vision

TOL = 1e-5


def close(ours, ref):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert ours.dtype == np.float32
    err = np.max(np.abs(ours.astype(np.float64) - ref)) / np.max(np.abs(ref))
    assert err <= TOL, err


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_patch_embed_equals_the_strided_convolution(rng):
    pixel_values = rng.standard_normal((2, 3, 42, 42)).astype(np.float32)
    weight = rng.standard_normal((16, 3, 14, 14)).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(pixel_values), torch.from_numpy(weight), stride=14)
    ref = ref.flatten(2).transpose(1, 2)  # [N, Np, Dv], patches row by row
    close(vision.patch_embed(pixel_values, weight), ref)


def test_clip_embeddings_match_clip_vision_embeddings(rng):
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

    torch.manual_seed(0)
    module = CLIPVisionEmbeddings(CLIPVisionConfig(hidden_size=24, image_size=28, patch_size=7)).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    params = {
        "patch_embedding": {"weight": module.patch_embedding.weight.detach().numpy()},
        "class_embedding": module.class_embedding.detach().numpy(),
        "position_embedding": {"weight": module.position_embedding.weight.detach().numpy()},
    }
    pixel_values = rng.standard_normal((3, 3, 28, 28)).astype(np.float32)
    close(vision.embeddings(params, pixel_values), module(torch.from_numpy(pixel_values)))


def test_layer_norm(rng):
    x = rng.standard_normal((2, 5, 32)).astype(np.float32) * 3 + 1
    w, b = rng.standard_normal(32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (32,), torch.from_numpy(w), torch.from_numpy(b), 1e-5)
    close(layers.layer_norm(x, w, b, 1e-5), ref)


def test_rms_norm_matches_llama_rms_norm(rng):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = rng.standard_normal((2, 5, 32)).astype(np.float32) * 3
    module = LlamaRMSNorm(32, eps=1e-6)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(rng.standard_normal(32).astype(np.float32)))
    close(layers.rms_norm(x, module.weight.detach().numpy(), 1e-6), module(torch.from_numpy(x)))


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
def test_activations_match_transformers(rng, name):
    from transformers.activations import ACT2FN

    x = (rng.standard_normal(100_000) * 4).astype(np.float32)
    close(layers.activation(name)(x), ACT2FN[name](torch.from_numpy(x)))


@pytest.mark.parametrize(
    "rope_parameters",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_theta": 500000.0,
        },
    ],
    ids=lambda p: p["rope_type"],
)
def test_rotary_embeddings_match_llama(rng, rope_parameters):
    """cos/sin tables and the rotation of q and k, at positions up to 4000 (where float32 angles matter)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(
        hidden_size=256, num_attention_heads=2, max_position_embeddings=16384, rope_parameters=rope_parameters
    )
    hd = 128
    position_ids = np.array([[0, 1, 2, 3, 577, 1600], [4000, 3999, 10, 11, 12, 13]])
    q = rng.standard_normal((2, 2, 6, hd)).astype(np.float32)
    k = rng.standard_normal((2, 2, 6, hd)).astype(np.float32)
    scaling = None if rope_parameters["rope_type"] == "default" else rope_parameters
    inv_freq = rope.inverse_frequencies(np, hd, rope_parameters["rope_theta"], scaling)
    cos, sin = rope.rotary_cos_sin(position_ids, inv_freq)

    module = LlamaRotaryEmbedding(config)
    ref_cos, ref_sin = module(torch.from_numpy(q), torch.from_numpy(position_ids))
    np.testing.assert_allclose(inv_freq, module.inv_freq.numpy(), rtol=1e-6)
    close(cos, ref_cos)
    close(sin, ref_sin)
    ref_q, ref_k = apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), ref_cos, ref_sin)
    close(rope.apply_rotary(q, cos, sin), ref_q)
    close(rope.apply_rotary(k, cos, sin), ref_k)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_causal_attention_with_padding_and_gqa(rng, n_kv_heads):
    """Against torch's scaled_dot_product_attention with the same boolean mask, cached keys included."""
    B, H, Tq, start, hd = 2, 4, 3, 5, 16
    Tk = start + Tq
    q = rng.standard_normal((B, H, Tq, hd)).astype(np.float32)
    k = rng.standard_normal((B, n_kv_heads, Tk, hd)).astype(np.float32)
    v = rng.standard_normal((B, n_kv_heads, Tk, hd)).astype(np.float32)
    attention_mask = np.ones((B, Tk), dtype=np.int64)
    attention_mask[1, :3] = 0  # row 1 is left-padded by three
    mask = attention.causal_mask(attention_mask, Tq, start)
    assert mask.shape == (B, 1, Tq, Tk)

    ours = attention.scaled_dot_product_attention(q, k, v, mask)
    rep = H // n_kv_heads
    ref = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q),
        torch.from_numpy(k).repeat_interleave(rep, dim=1),
        torch.from_numpy(v).repeat_interleave(rep, dim=1),
        attn_mask=torch.from_numpy(mask),
    )
    close(ours, ref)

    # The probabilities alone, against torch's masked softmax of the scaled scores.
    probs = attention.attention_probs(q, k, mask)
    assert probs.shape == (B, H, Tq, Tk) and probs.dtype == np.float32
    scores = torch.from_numpy(q) @ torch.from_numpy(k).repeat_interleave(rep, dim=1).transpose(-1, -2) / hd**0.5
    ref_probs = torch.softmax(scores.masked_fill(~torch.from_numpy(mask), float("-inf")), dim=-1)
    close(probs, ref_probs)
    assert np.all(probs[1, :, :, :3] == 0)  # nothing on the padding


def test_fully_masked_query_row_stays_finite():
    q = np.ones((1, 1, 1, 4), np.float32)
    k = v = np.ones((1, 1, 2, 4), np.float32)
    out = attention.scaled_dot_product_attention(q, k, v, np.zeros((1, 1, 1, 2), bool))
    assert np.isfinite(out).all()


def test_merge_fills_image_positions_in_reading_order_like_masked_scatter(rng):
    B, T, D, L, img = 2, 9, 4, 2, 99
    input_ids = rng.integers(0, 50, size=(B, T))
    input_ids[0, [1, 2, 6, 7]] = img  # two images in row 0
    input_ids[1, [3, 4]] = img  # one in row 1
    embeds = rng.standard_normal((B, T, D)).astype(np.float32)
    features = rng.standard_normal((3, L, D)).astype(np.float32)
    mask = torch.from_numpy(input_ids == img)[..., None].expand(B, T, D)
    ref = torch.from_numpy(embeds).masked_scatter(mask, torch.from_numpy(features))
    ours = merge.merge_image_features(embeds, input_ids, features, img)
    np.testing.assert_array_equal(ours, ref.numpy())
    assert not np.shares_memory(ours, embeds)
