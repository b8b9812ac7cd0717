"""minillava.model.rope against Transformers' LlamaRotaryEmbedding and apply_rotary_pos_emb, for every RoPE type."""

import numpy as np
import pytest
import torch

from minillava.model import rope

from .helpers import close


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


def test_apply_rotary_gives_the_bits_of_the_formula(rng):
    """apply_rotary scales and sums in place in rotate_half's new array: the bits of x cos + rotate_half(x) sin."""
    x = rng.standard_normal((2, 4, 9, 16)).astype(np.float32)
    inv_freq = rope.inverse_frequencies(np, 16, 10000.0)
    cos, sin = rope.rotary_cos_sin(np.arange(18).reshape(2, 9), inv_freq)
    formula = x * cos[:, None] + rope.rotate_half(x) * sin[:, None]
    assert np.array_equal(rope.apply_rotary(x, cos, sin), formula)
