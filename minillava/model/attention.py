"""Scaled dot-product attention, shared by CLIP (bidirectional) and Llama (causal, with a cache).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(hd) + mask) V          (Vaswani et al., eq. 1)

Shape letters: B = batch, H = query heads, KV = key/value heads (H for multi-head attention,
fewer for grouped-query attention), Tq = query positions, Tk = key positions, hd = head_dim.
"""

from __future__ import annotations

from .backend import xp_of
from .layers import softmax


def split_heads(x, n_heads):
    """[B, T, n_heads * hd] -> [B, n_heads, T, hd]."""
    B, T, _ = x.shape
    return x.reshape(B, T, n_heads, -1).transpose(0, 2, 1, 3)


def merge_heads(x):
    """[B, n_heads, T, hd] -> [B, T, n_heads * hd]."""
    B, n_heads, T, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, n_heads * hd)


def repeat_kv(x, n_rep):
    """Grouped-query attention: each key/value head serves ``n_rep`` query heads.

    [B, KV, Tk, hd] -> [B, KV * n_rep, Tk, hd]  (head h of the result is head h // n_rep of x,
    as Transformers' ``repeat_kv``)
    """
    if n_rep == 1:
        return x
    xp = xp_of(x)
    return xp.repeat(x, n_rep, axis=1)


def causal_mask(attention_mask, n_queries, start):
    """Which keys each query may attend to: earlier-or-same positions that are not padding.

    attention_mask: [B, Tk] with 1 for real tokens and 0 for padding (Tk = start + n_queries: the
    cached keys plus the new ones); query i sits at position ``start + i``.
    Returns a boolean mask [B, 1, Tq, Tk] (True = may attend), broadcast over heads.
    """
    xp = xp_of(attention_mask)
    Tk = attention_mask.shape[1]
    query_pos = start + xp.arange(n_queries)[:, None]  # [Tq, 1]
    key_pos = xp.arange(Tk)[None, :]  # [1, Tk]
    causal = key_pos <= query_pos  # [Tq, Tk]
    key_is_real = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, Tk]
    return causal[None, None] & key_is_real  # [B, 1, Tq, Tk]


def attention_probs(q, k, mask=None):
    """softmax(q k^T / sqrt(hd), masked): how much each query attends to each key, in float32.

    q: [B, H, Tq, hd], k: [B, KV, Tk, hd], mask: [B, 1, Tq, Tk] boolean or None -> [B, H, Tq, Tk]

    Scores and softmax are computed in float32 whatever the input dtype (Transformers upcasts the
    softmax). Masked scores get float32's most negative finite value rather than -inf, as
    Transformers' eager attention does, so that a fully masked row (a padding query) yields a
    uniform, finite distribution instead of NaN.
    """
    xp = xp_of(q)
    H, hd = q.shape[1], q.shape[3]
    k = repeat_kv(k, H // k.shape[1])  # [B, H, Tk, hd]
    scores = (q @ k.swapaxes(-1, -2)).astype(xp.float32, copy=False)  # [B, H, Tq, Tk]
    scores *= hd**-0.5
    if mask is not None:
        scores = xp.where(mask, scores, xp.finfo(xp.float32).min)  # [B, H, Tq, Tk]
    return softmax(scores, axis=-1)  # [B, H, Tq, Tk]


def scaled_dot_product_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(hd), masked) v, with grouped-query attention.

    q: [B, H, Tq, hd], k and v: [B, KV, Tk, hd], mask: [B, 1, Tq, Tk] boolean or None
    -> [B, H, Tq, hd]

    The probabilities (`attention_probs`, float32) are cast back to the input dtype before they
    weigh the values, as in Transformers.
    """
    probs = attention_probs(q, k, mask).astype(q.dtype, copy=False)  # [B, H, Tq, Tk]
    v = repeat_kv(v, q.shape[1] // v.shape[1])  # [B, H, Tk, hd]
    return probs @ v  # [B, H, Tq, hd]
