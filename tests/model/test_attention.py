"""minillava.model.attention against torch's scaled_dot_product_attention: causal and padding masks, grouped-query
heads, cached keys."""

import numpy as np
import pytest
import torch

from minillava.model import attention

from .helpers import close


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


def test_additive_mask_gives_the_bits_of_a_where(rng):
    """The mask is added as a bias (0, or float32's most negative value, as Transformers' eager attention adds
    it): the same probabilities, bit for bit, as setting the masked scores to that value, a fully masked
    (padding) query row included."""
    q = rng.standard_normal((2, 4, 5, 16)).astype(np.float32)
    k = rng.standard_normal((2, 4, 7, 16)).astype(np.float32)
    mask = rng.random((2, 1, 5, 7)) < 0.6
    mask[0, 0, 2] = False  # query 2 of row 0 sees nothing
    scores = np.where(mask, (q @ k.swapaxes(-1, -2)) * 16**-0.5, np.finfo(np.float32).min)
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    assert np.array_equal(attention.attention_probs(q, k, mask), exp / exp.sum(axis=-1, keepdims=True))
