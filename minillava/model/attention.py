"""Scaled dot-product attention, shared by CLIP (bidirectional) and Llama (causal, with a cache).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(hd) + mask) V          (Vaswani et al., eq. 1)

Two ways to compute it, with the same arguments and the same numbers (the model picks one with
``attn_implementation``, as Transformers does):

- ``scaled_dot_product_attention`` ("eager", the default and the reference): the whole [Tq, Tk] score
  matrix per head, its softmax, the weighted sum of the values;
- ``tiled_attention`` ("tiled"): FlashAttention's loop, blocks of queries against blocks of keys with an
  online softmax, never holding more than a [Br, Bc] block of scores per head.

``by_query_blocks`` calls either a block of queries at a time with only the keys those queries may see: under a
causal mask that leaves out nearly half of a prefill's scores, which the plain formula computes and then masks.
The model calls its eager attention that way on the CPU (llava.py).

Shape letters: B = batch, H = query heads, KV = key/value heads (H for multi-head attention,
fewer for grouped-query attention), G = H / KV query heads per key/value head, Tq = query positions,
Tk = key positions, hd = head_dim; in the tiled loop Br = query rows per block, Bc = key columns per block.
"""

from __future__ import annotations

from .backend import xp_of
from .layers import softmax


def split_heads(x, n_heads):
    """[B, T, n_heads * hd] -> [B, n_heads, T, hd].

    A reshape and a transpose, which only move entries: its backward is its inverse, ``merge_heads``.
    """
    B, T, _ = x.shape
    return x.reshape(B, T, n_heads, -1).transpose(0, 2, 1, 3)


def merge_heads(x):
    """[B, n_heads, T, hd] -> [B, T, n_heads * hd].

    The inverse of ``split_heads``, which only moves entries: its backward is ``split_heads(dy, n_heads)``.
    """
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


def repeat_kv_backward(dy, n_rep):
    """Gradient of ``repeat_kv``: each key/value head sums the gradients of the ``n_rep`` query heads it served.

    dy: [B, KV * n_rep, Tk, hd] -> dx: [B, KV, Tk, hd]

    Head kv of x is copied to heads kv * n_rep .. kv * n_rep + n_rep - 1, so a change of it changes all of
    them: its gradient is the sum of theirs (the transpose of a copy is a sum).
    """
    if n_rep == 1:
        return dy
    B, H, Tk, hd = dy.shape
    return dy.reshape(B, H // n_rep, n_rep, Tk, hd).sum(axis=2)  # [B, KV, Tk, hd]


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

    Scores and softmax are computed in float32 for float16 and float32 inputs (Transformers upcasts the
    softmax). Masked scores get float32's most negative finite value rather than -inf, as
    Transformers' eager attention does, so that a fully masked row (a padding query) yields a
    uniform, finite distribution instead of NaN.

    The scores are this function's own array (a fresh product), so the scale, the mask and the
    softmax work in place in it: [B, H, Tq, Tk] is the largest array of a prefill (46 MiB per layer
    at 32 heads and 600 positions), and each new one costs time to allocate and to fill.
    """
    xp = xp_of(q)
    H, hd = q.shape[1], q.shape[3]
    k = repeat_kv(k, H // k.shape[1])  # [B, H, Tk, hd]
    # float32 for float16 (and float32) inputs; float64 stays float64 (the backward's finite-difference checks).
    scores = (q @ k.swapaxes(-1, -2)).astype(xp.promote_types(q.dtype, xp.float32), copy=False)  # [B, H, Tq, Tk]
    scores *= hd**-0.5  # [B, H, Tq, Tk]
    if mask is not None:
        # The mask as an additive bias, as Transformers' eager attention applies it: 0 where a key may be
        # seen, float32's most negative value where not (score + that value rounds to that value, so
        # this equals a `where` on the scores). Made on the small [B, 1, Tq, Tk] mask, shared by the heads.
        bias = xp.where(mask, xp.float32(0), xp.finfo(xp.float32).min)  # [B, 1, Tq, Tk] float32
        scores += bias  # [B, H, Tq, Tk]
    return softmax(scores, axis=-1, out=scores)  # [B, H, Tq, Tk], in the scores' memory


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


QUERY_BLOCK = 128
"""Queries per block in ``by_query_blocks``: 128 was the fastest of 128 .. 384 here for a 600-token prefill at
llava-1.5-7b's widths (61 ms a layer against 68 ms for 256 and 146 ms for the whole matrix at once)."""


def by_query_blocks(q, k, v, mask=None, attention=scaled_dot_product_attention, block_size=QUERY_BLOCK):
    """``attention`` a block of queries at a time, each block against only the keys that one of its queries
    may see: under a causal mask, the keys up to the block's last position.

    q: [B, H, Tq, hd], k and v: [B, KV, Tk, hd], mask: [B, 1, Tq, Tk] boolean or None,
    attention: the function to call on each block (the plain one by default)  ->  [B, H, Tq, hd]

    In a prefill, query i may see keys 0 .. i: the plain formula computes the whole [Tq, Tk] score matrix and
    then masks its upper triangle away, nearly half of the products and of the softmax. For a block of queries,
    a key hidden from every one of them gets the score float32 min, and exp(float32 min - row max) is exactly 0:
    it adds nothing to the softmax's sum and nothing to the weighted sum of the values. So leaving those keys
    out gives the same scores, the same row maxima and the same products; only the softmax's sums run over
    fewer terms, in another order (within float32 rounding: 9e-8 of the output's largest magnitude, measured at
    600 positions). Each block's scores, [B, H, 128, n], are also a few MiB instead of the whole matrix. torch's
    scaled_dot_product_attention (Transformers' default, "sdpa") skips the same blocks in its CPU kernel.

    Every key is kept for a block with a query that sees no key at all (a padding query of a left-padded
    batch): the plain attention makes its row uniform over all Tk keys. Without a mask (CLIP, SigLIP: every
    patch sees every patch) or with one block of queries (a decode step) there is nothing to skip: one call.
    """
    xp = xp_of(q)
    Tq, Tk = q.shape[2], k.shape[2]
    if mask is None or Tq <= block_size:
        return attention(q, k, v, mask)
    out = xp.empty(q.shape, dtype=q.dtype)  # [B, H, Tq, hd]
    for i0 in range(0, Tq, block_size):  # query block: rows i0 .. i1 - 1
        i1 = min(i0 + block_size, Tq)
        rows = mask[..., i0:i1, :]  # [B, 1, Br, Tk]
        n = Tk  # keys this block attends to: 0 .. n - 1
        if bool(rows.any(axis=-1).all()):  # every query of the block sees some key
            seen = rows.any(axis=(0, 1, 2))  # [Tk]  keys that some query of the block may see
            n = int(seen.nonzero()[0][-1]) + 1  # up to the last of them
        out[:, :, i0:i1] = attention(q[:, :, i0:i1], k[:, :, :n], v[:, :, :n], rows[..., :n])  # [B, H, Br, hd]
    return out


def attention_backward(dout, q, k, v, mask=None):
    """Gradients of ``scaled_dot_product_attention`` with respect to q, k and v.

    dout: [B, H, Tq, hd] (the gradient of the output), q: [B, H, Tq, hd], k and v: [B, KV, Tk, hd],
    mask: [B, 1, Tq, Tk] boolean or None  ->  dq: [B, H, Tq, hd], dk: [B, KV, Tk, hd], dv: [B, KV, Tk, hd]

    With S = q k^T / sqrt(hd) + bias, P = softmax(S) row by row, and out = P v, the chain rule run backwards:

        dv = P^T dout                           out is linear in v ...
        dP = dout v^T                           ... and in P
        dS = P * (dP - rowsum(dP * P))          the softmax's Jacobian, diag(p) - p p^T, applied to each row
        dq = dS k / sqrt(hd),  dk = dS^T q / sqrt(hd)

    The mask's bias is a constant (0, or float32's most negative value), so dS passes through it to q k^T
    unchanged and the bias itself gets nothing; a masked key has P = 0, hence dS = 0. A fully masked query row
    (a left-padding query) is uniform in the forward, and this gives the gradient of that uniform softmax, as
    torch's autograd of the same additive formula does (the rounding that makes such a row constant is not
    differentiated). In training a padding query's dout is zero anyway: the loss ignores its position.

    Grouped-query attention: a key/value head served G query heads, so its gradient is the sum of theirs
    (``repeat_kv_backward``). P is recomputed by the forward's own ``attention_probs`` (float32, as the forward
    had it) and cast to the input dtype, as the forward casts it; everything after is in the input dtype.
    """
    H, hd = q.shape[1], q.shape[3]
    G = H // k.shape[1]
    probs = attention_probs(q, k, mask).astype(q.dtype, copy=False)  # [B, H, Tq, Tk]
    k = repeat_kv(k, G)  # [B, H, Tk, hd]
    v = repeat_kv(v, G)  # [B, H, Tk, hd]
    dv = probs.swapaxes(-1, -2) @ dout  # [B, H, Tk, hd]
    dprobs = dout @ v.swapaxes(-1, -2)  # [B, H, Tq, Tk]
    # Softmax backward: each row's gradient minus its P-weighted mean, times P (a fresh array, ours).
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))  # [B, H, Tq, Tk]
    dscores *= hd**-0.5  # [B, H, Tq, Tk]  through the scale: the gradient of q k^T
    dq = dscores @ k  # [B, H, Tq, hd]
    dk = dscores.swapaxes(-1, -2) @ q  # [B, H, Tk, hd]
    return dq, repeat_kv_backward(dk, G), repeat_kv_backward(dv, G)


DEFAULT_BLOCK_SIZE = 128
"""Queries and keys per block in ``tiled_attention`` (Br = Bc; FlashAttention-2 uses 128 for head_dim 128).
One score block is then [B, H, 128, 128] float32 (2 MiB at 32 heads) instead of the full [B, H, Tq, Tk]
(176 MiB at 32 heads and 1200 positions). Smaller blocks save a little more memory but loop more in Python;
128 was also the fastest of 32 .. 512 measured here on the CPU (README, "Tiled attention")."""


def tiled_attention(q, k, v, mask=None, block_size=DEFAULT_BLOCK_SIZE):
    """``scaled_dot_product_attention`` computed block by block with an online softmax: FlashAttention's loop.

    q: [B, H, Tq, hd], k and v: [B, KV, Tk, hd], mask: [B, 1, Tq, Tk] boolean or None,
    block_size: Br = Bc, queries and keys per block  ->  [B, H, Tq, hd]

    Online softmax (Milakov & Gimelshein 2018), in the notation of FlashAttention (Dao et al. 2022,
    Algorithm 1), with FlashAttention-2's loop order (Dao 2023, Algorithm 1: queries outside, keys inside,
    one division at the end). For a block of queries Q_i and each block of keys K_j and values V_j:

        S_ij  = Q_i K_j^T / sqrt(hd)                   scores of this block only, [Br, Bc]
        m_new = max(m_i, rowmax(S_ij))                 running maximum of each query's scores
        P_ij  = exp(S_ij - m_new)                      unnormalised probabilities, all <= 1
        l_i   = exp(m_i - m_new) l_i + rowsum(P_ij)    running sum of exp(score - m_new)
        O_i   = exp(m_i - m_new) O_i + P_ij V_j        running, unnormalised output
        m_i   = m_new
    and after the last key block  O_i = O_i / l_i.

    Why it is exact: after any number of key blocks, l_i = sum_k exp(s_k - m_i) and
    O_i = sum_k exp(s_k - m_i) v_k over the keys seen so far, with m_i their maximum. A new block may raise
    the maximum to m_new; multiplying the old sums by exp(m_i - m_new) turns every exp(s_k - m_i) into
    exp(s_k - m_new), so the invariant holds again with the new maximum, and nothing is approximated. At
    the end O_i / l_i = sum_k exp(s_k - m) v_k / sum_k exp(s_k - m) = softmax(s) V, the plain formula
    with the same max subtracted (the two differ by rounding only, and are as close to a float64 reference).

    Numerics as the plain path: scores, m, l and O in float32 whatever the input dtype; P_ij is cast to
    the input dtype before it weighs the values (the plain path casts the probabilities). Masked scores
    get float32's most negative finite value, as in ``attention_probs``: then a fully masked row (a
    padding query) has all its scores equal, and ends, like the plain one, uniform over all the keys and
    finite (m_i starts at -inf, so the first rescaling factor exp(-inf - m_new) is 0, not NaN).

    A key block that the mask hides from every query of the block (above the diagonal of a causal mask:
    nearly half the blocks of a prefill) is skipped, as FlashAttention's kernels do: its P_ij would be
    exactly 0 (exp(float32 min - m_new) underflows) and leave m_i, l_i and O_i bit for bit as they are. Not
    when a query of the block sees no key at all (a padding query): its uniform row needs every block.

    Grouped-query attention without ``repeat_kv``: the G query heads that share a key/value head get an
    axis of their own, and K and V broadcast over it (head h = kv * G + g, the order ``repeat_kv`` gives).
    The [B, 1, Tq, Tk] boolean mask is still made once per forward by the caller (one byte per entry,
    shared by heads and layers); a kernel would compute each block's mask from the positions.
    """
    xp = xp_of(q)
    B, H, Tq, hd = q.shape
    KV, Tk = k.shape[1], k.shape[2]
    G = H // KV
    Br = Bc = block_size
    q = q.reshape(B, KV, G, Tq, hd)  # [B, KV, G, Tq, hd]
    k = k[:, :, None]  # [B, KV, 1, Tk, hd]
    v = v[:, :, None]  # [B, KV, 1, Tk, hd]
    if mask is not None:
        mask = mask[:, :, None]  # [B, 1, 1, Tq, Tk]
    masked_score = xp.finfo(xp.float32).min  # what a masked score becomes, as in attention_probs
    out = xp.empty((B, KV, G, Tq, hd), dtype=q.dtype)  # [B, KV, G, Tq, hd]
    for i0 in range(0, Tq, Br):  # query block i: rows i0 .. i1 - 1
        i1 = min(i0 + Br, Tq)
        Q_i = q[..., i0:i1, :]  # [B, KV, G, Br, hd]
        m_i = xp.full((B, KV, G, i1 - i0, 1), -xp.inf, dtype=xp.float32)  # [B, KV, G, Br, 1]  running max
        l_i = xp.zeros((B, KV, G, i1 - i0, 1), dtype=xp.float32)  # [B, KV, G, Br, 1]  running sum
        O_i = xp.zeros((B, KV, G, i1 - i0, hd), dtype=xp.float32)  # [B, KV, G, Br, hd]  running output
        visible = None if mask is None else mask[..., i0:i1, :]  # [B, 1, 1, Br, Tk]
        may_skip = visible is not None and bool(visible.any(axis=-1).all())  # no padding query in the block
        for j0 in range(0, Tk, Bc):  # key block j: columns j0 .. j1 - 1
            j1 = min(j0 + Bc, Tk)
            if may_skip and not bool(visible[..., j0:j1].any()):
                continue  # hidden from every query of the block: P_ij = 0 would change nothing
            K_j, V_j = k[..., j0:j1, :], v[..., j0:j1, :]  # [B, KV, 1, Bc, hd] each
            S_ij = (Q_i @ K_j.swapaxes(-1, -2)).astype(xp.float32, copy=False)  # [B, KV, G, Br, Bc]
            S_ij *= hd**-0.5  # [B, KV, G, Br, Bc]
            if mask is not None:
                S_ij = xp.where(mask[..., i0:i1, j0:j1], S_ij, masked_score)  # [B, KV, G, Br, Bc]
            m_new = xp.maximum(m_i, S_ij.max(axis=-1, keepdims=True))  # [B, KV, G, Br, 1]
            P_ij = xp.exp(S_ij - m_new)  # [B, KV, G, Br, Bc]
            rescale = xp.exp(m_i - m_new)  # [B, KV, G, Br, 1]  exp(m_old - m_new) <= 1
            l_i = rescale * l_i + P_ij.sum(axis=-1, keepdims=True)  # [B, KV, G, Br, 1]
            O_i = rescale * O_i + P_ij.astype(q.dtype, copy=False) @ V_j  # [B, KV, G, Br, hd]
            m_i = m_new  # [B, KV, G, Br, 1]
        out[..., i0:i1, :] = O_i / l_i  # [B, KV, G, Br, hd]
    return out.reshape(B, H, Tq, hd)  # [B, H, Tq, hd]


ATTENTION_FUNCTIONS = {"eager": scaled_dot_product_attention, "tiled": tiled_attention}
"""``attn_implementation`` -> the function: the same arguments (q, k, v, mask) and the same numbers."""
