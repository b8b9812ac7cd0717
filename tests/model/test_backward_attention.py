"""Backward of rotary embeddings and attention (issue 16): the hand-written gradients against torch's autograd of
the same formula (float32), Transformers' own eager attention and RoPE, and float64 central finite differences.

Shapes as the model uses them: a batch of two, 4 query heads over 4, 2 or 1 key/value heads, 7 positions,
masks none, causal, causal with left padding (fully masked query rows) and bidirectional with padding keys.
"""

import types

import numpy as np
import pytest
import torch

from minillava.model import attention, rope

from .helpers import close, rel_err

FD_TOL = 1e-6  # float64 central differences: max |ours - numerical| <= FD_TOL x max |numerical|
FD_STEP = 1e-6  # h of (f(x + h) - f(x - h)) / 2h: truncation ~h^2, rounding ~1e-16 / h, both far below FD_TOL

MASKS = ["none", "causal", "causal_left_padding", "bidirectional_padding"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    torch.set_num_threads(1)


def make_mask(kind, B, T):
    """A [B, 1, T, T] boolean mask (True = may attend) or None; in the padded kinds row B-1 is left-padded."""
    if kind == "none":
        return None
    attention_mask = np.ones((B, T), dtype=np.int64)  # [B, T]
    if kind != "causal":
        attention_mask[-1, : min(2, T - 2)] = 0  # the last row is left-padded by two (by one when T = 3)
    if kind.startswith("causal"):
        return attention.causal_mask(attention_mask, T, 0)  # padding queries of the last row see no key at all
    # Bidirectional (as a vision tower with padding would be): every query sees every real key, none the padding.
    return np.broadcast_to(attention_mask.astype(bool)[:, None, None, :], (B, 1, T, T)).copy()


def left_padded_position_ids(attention_mask):
    """Position ids of a left-padded batch, as minillava's generate makes them: 0, 1, ... from the first real token."""
    return np.where(attention_mask == 1, np.cumsum(attention_mask, axis=1) - 1, 0)  # [B, T]


def numerical_gradient(loss, x, h=FD_STEP):
    """Central differences of the scalar loss(x), one entry at a time: (loss(x + h e_i) - loss(x - h e_i)) / 2h."""
    grad = np.empty_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (loss(x + step) - loss(x - step)) / (2 * h)
    return grad


# ---------------------------------------------------------------------------------------------------------------
# Rotary embeddings


def real_cos_sin(attention_mask, hd):
    """The model's cos/sin tables (float32) for a left-padded batch."""
    inv_freq = rope.inverse_frequencies(np, hd, 10000.0)  # [hd/2]
    return rope.rotary_cos_sin(left_padded_position_ids(attention_mask), inv_freq)  # [B, T, hd] each


def test_rotary_backward_matches_autograd_of_transformers_rope(rng):
    """dx against torch's autograd through Transformers' apply_rotary_pos_emb, on a left-padded batch."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B, H, T, hd = 2, 4, 7, 8
    attention_mask = np.ones((B, T), dtype=np.int64)
    attention_mask[1, :3] = 0  # row 1 is left-padded by three
    cos, sin = real_cos_sin(attention_mask, hd)  # [B, T, hd] each
    q = rng.standard_normal((B, H, T, hd)).astype(np.float32)
    k = rng.standard_normal((B, H, T, hd)).astype(np.float32)
    dq_out = rng.standard_normal((B, H, T, hd)).astype(np.float32)  # gradients of the rotated q and k
    dk_out = rng.standard_normal((B, H, T, hd)).astype(np.float32)

    q_t, k_t = torch.from_numpy(q).requires_grad_(), torch.from_numpy(k).requires_grad_()
    q_rot, k_rot = apply_rotary_pos_emb(q_t, k_t, torch.from_numpy(cos), torch.from_numpy(sin))
    torch.autograd.backward([q_rot, k_rot], [torch.from_numpy(dq_out), torch.from_numpy(dk_out)])

    dy_before = dq_out.copy()
    dq = rope.apply_rotary_backward(dq_out, cos, sin)
    close(dq, q_t.grad)
    close(rope.apply_rotary_backward(dk_out, cos, sin), k_t.grad)
    assert np.array_equal(dq_out, dy_before)  # the backward left its input alone


def test_rotary_backward_matches_finite_differences(rng):
    """float64: dx against central differences of apply_rotary itself (it computes in x's dtype, float64 here)."""
    B, H, T, hd = 2, 2, 3, 4
    attention_mask = np.array([[1, 1, 1], [0, 1, 1]])  # row 1 is left-padded by one
    cos, sin = real_cos_sin(attention_mask, hd)  # [B, T, hd] each, float32 as the model has them
    x = rng.standard_normal((B, H, T, hd))  # float64
    dy = rng.standard_normal((B, H, T, hd))  # float64

    dx = rope.apply_rotary_backward(dy, cos, sin)
    assert dx.dtype == np.float64
    numerical = numerical_gradient(lambda x: np.sum(rope.apply_rotary(x, cos, sin) * dy), x)
    assert rel_err(dx, numerical) <= FD_TOL


def test_rotary_backward_undoes_the_rotation(rng):
    """A rotation is orthogonal: its backward is its inverse, so backward(forward(x)) gives x back (to float32's
    rounding of the cos/sin tables: cos^2 + sin^2 = 1 within ~1e-7 for them)."""
    attention_mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]])
    cos, sin = real_cos_sin(attention_mask, 16)
    x = rng.standard_normal((2, 3, 6, 16))  # float64
    assert rel_err(rope.apply_rotary_backward(rope.apply_rotary(x, cos, sin), cos, sin), x) <= 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Attention


def torch_attention(q, k, v, mask):
    """The forward's formula written with torch ops: q k^T / sqrt(hd) + additive mask, softmax, @ v, GQA by copies."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)  # [B, H, Tk, hd]
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # [B, H, Tq, Tk]
    if mask is not None:
        scores = scores + additive_bias(mask)
    return torch.softmax(scores, dim=-1) @ v  # [B, H, Tq, hd]


def additive_bias(mask):
    """0 where a key may be seen, float32's most negative value where not, as Transformers' eager masks are."""
    return torch.where(torch.from_numpy(mask), 0.0, torch.finfo(torch.float32).min)  # [B, 1, Tq, Tk]


def random_attention_inputs(rng, B, H, KV, T, hd, dtype):
    q = rng.standard_normal((B, H, T, hd)).astype(dtype)
    k = rng.standard_normal((B, KV, T, hd)).astype(dtype)
    v = rng.standard_normal((B, KV, T, hd)).astype(dtype)
    dout = rng.standard_normal((B, H, T, hd)).astype(dtype)
    return q, k, v, dout


def autograd(forward, q, k, v, dout):
    """Gradients of q, k and v by torch's autograd, given the gradient dout of forward(q, k, v)."""
    q, k, v = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    forward(q, k, v).backward(torch.from_numpy(dout))
    return q.grad, k.grad, v.grad


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("KV", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_attention_backward_matches_autograd(rng, KV, kind):
    """dq, dk, dv against torch's autograd of the same formula, float32; fully masked (padding) rows included."""
    B, H, T, hd = 2, 4, 7, 8
    q, k, v, dout = random_attention_inputs(rng, B, H, KV, T, hd, np.float32)
    mask = make_mask(kind, B, T)
    inputs_before = [a.copy() for a in (dout, q, k, v)]

    dq, dk, dv = attention.attention_backward(dout, q, k, v, mask)
    ref = autograd(lambda q, k, v: torch_attention(q, k, v, mask), q, k, v, dout)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    for ours, theirs in zip((dq, dk, dv), ref, strict=True):
        close(ours, theirs)
    assert all(np.array_equal(a, b) for a, b in zip((dout, q, k, v), inputs_before, strict=True))  # inputs left alone
    close(
        attention.scaled_dot_product_attention(q, k, v, mask), torch_attention(*map(torch.from_numpy, (q, k, v)), mask)
    )
    if kind == "causal_left_padding":
        # The padding queries (row 1, positions 0 and 1) are uniform over all keys, and get the gradient of that
        # uniform softmax, as autograd gives it: not zero, so the comparison above covered them.
        assert not mask[1, 0, :2].any()
        assert np.abs(dq[1, :, :2]).max() > 0.1 * np.abs(dq).max()


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("KV", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_attention_backward_matches_transformers_eager_attention(rng, KV, kind):
    """dq, dk, dv against autograd through Transformers' own eager_attention_forward (its repeat_kv, its upcast
    softmax), with the additive mask it takes."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    B, H, T, hd = 2, 4, 7, 8
    q, k, v, dout = random_attention_inputs(rng, B, H, KV, T, hd, np.float32)
    mask = make_mask(kind, B, T)
    module = types.SimpleNamespace(num_key_value_groups=H // KV, training=False)  # all the function reads of it

    def eager(q, k, v):
        bias = None if mask is None else additive_bias(mask)
        out, _ = eager_attention_forward(module, q, k, v, bias, scaling=hd**-0.5)  # out: [B, T, H, hd]
        return out.transpose(1, 2)  # [B, H, T, hd]

    ref = autograd(eager, q, k, v, dout)
    for ours, theirs in zip(attention.attention_backward(dout, q, k, v, mask), ref, strict=True):
        close(ours, theirs)


def attention_formula(q, k, v, mask):
    """The formula attention_backward differentiates, all in q's dtype (float64 here): the forward computes its
    probabilities in float32 whatever the input, whose rounding central differences would see as noise."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1)  # [B, H, Tk, hd]
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])  # [B, H, Tq, Tk]
    if mask is not None:
        scores = scores + np.where(mask, 0.0, np.finfo(np.float32).min)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True) @ v  # [B, H, Tq, hd]


@pytest.mark.parametrize("kind", MASKS)
def test_attention_backward_matches_finite_differences(rng, kind):
    """float64, tiny shapes (B=1, H=2, KV=1, T=3, hd=4): dq, dk, dv against central differences of the formula.

    With left padding the padding query's dout is zero, as in training (the loss ignores its position): the
    uniform row the forward gives it is constant in q and k, so its true derivative is zero, and only the
    gradients the model would use are compared.
    """
    B, H, KV, T, hd = 1, 2, 1, 3, 4
    q, k, v, dout = random_attention_inputs(rng, B, H, KV, T, hd, np.float64)
    mask = make_mask(kind, B, T)
    if kind == "causal_left_padding":
        assert not mask[0, 0, 0].any()  # query 0 is padding: it sees no key
        dout[:, :, 0] = 0

    dq, dk, dv = attention.attention_backward(dout, q, k, v, mask)
    assert dq.dtype == dk.dtype == dv.dtype == np.float64
    loss = lambda q, k, v: np.sum(attention_formula(q, k, v, mask) * dout)  # noqa: E731  dloss/dout = dout
    assert rel_err(dq, numerical_gradient(lambda x: loss(x, k, v), q)) <= FD_TOL
    assert rel_err(dk, numerical_gradient(lambda x: loss(q, x, v), k)) <= FD_TOL
    assert rel_err(dv, numerical_gradient(lambda x: loss(q, k, x), v)) <= FD_TOL


def test_repeat_kv_backward_is_the_transpose_of_repeat_kv(rng):
    """<repeat_kv(x), y> = <x, repeat_kv_backward(y)> for all x, y: the sum is the adjoint of the copy."""
    x = rng.standard_normal((2, 2, 5, 8))  # [B, KV, Tk, hd]
    y = rng.standard_normal((2, 6, 5, 8))  # [B, KV * 3, Tk, hd]
    assert np.isclose(np.sum(attention.repeat_kv(x, 3) * y), np.sum(x * attention.repeat_kv_backward(y, 3)))
    assert attention.repeat_kv_backward(y, 1) is y


def test_split_and_merge_heads_are_each_others_inverse(rng):
    """Each is the other's backward: they only move entries, and undo each other."""
    x = rng.standard_normal((2, 7, 32)).astype(np.float32)  # [B, T, H * hd]
    heads = attention.split_heads(x, 4)  # [B, H, T, hd]
    assert heads.shape == (2, 4, 7, 8)
    assert np.array_equal(attention.merge_heads(heads), x)
    assert np.array_equal(attention.split_heads(attention.merge_heads(heads), 4), heads)
