"""Fused elementwise kernels for the Llama layers, each beside its plain twin: the same numbers, fewer passes on a GPU.

Why fuse: on a GPU every NumPy-style operation is one kernel launch and one pass of its arrays through memory.
Written plainly, RMSNorm (layers.rms_norm) is 7 launches in float32 and 9 in float16 (the casts), SiLU times up 6,
a rotation of q or k 5 (7), the attention's scale-mask-softmax 8 (10): 38 (48) per layer. A decode step of the 7B
handles one token, so these arrays are small and the time goes to launching the kernels, not to the arithmetic:
it is launch-bound. ``cupy.fuse`` compiles a Python function of arrays into one kernel; the fused forms below take
12 launches per layer (RMSNorm 2, gating 1, rotation 2, softmax 3), whatever the dtype.

How: each chain is written once, in ``kernels_for(xp)``, as a function of its arrays whose math comes from the
namespace ``xp`` it is made for. For CuPy the function is wrapped with ``cupy.fuse`` (compiled on its first call
for each set of argument dtypes and numbers of axes, then kept by the wrapper: so it is wrapped once per process,
not per call, as CuPy asks); for NumPy (and the tests' stand-in device) it is left as it is and runs as plain
array code: the same operations, in the same order, as the plain twin, so the CPU tests check the fused forms'
math and ``pytest --device cuda`` checks the compiled kernels. A fused body therefore keeps to what CuPy's
fusion traces: ``xp.`` functions, operators and ``.astype``; no shapes (a traced array has only a dtype and
ndim); one reduction (``xp.sum``/``xp.max`` over axis=-1, which removes the axis: it is put back,
``r[..., None]``, between two calls), and after it only constants, no argument; scalars passed typed
(``xp.float32(eps)``: a Python float would be a float64).

The two sets, ``PLAIN`` (the default and the reference) and ``FUSED``, are what ``LlavaModel(fused_kernels=...)``
chooses between for the language model (llama.py takes one as ``kernels=``). The fused forms are for the model's
compute dtypes, float16 and float32 (their statistics in float32, as the plain twins'). The vision towers use
the fused attention too (the model's one attention function); training uses the plain functions.

Shape letters: N = any leading axes, D = features, F = MLP size, B = batch, H = query heads, KV = key/value heads,
Tq = query positions, Tk = key positions, hd = head_dim.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

from . import attention, layers, rope
from .backend import is_cupy, xp_of


@functools.cache
def kernels_for(xp):
    """The fused bodies for the namespace ``xp``: compiled with ``cupy.fuse`` for CuPy, as they are for anything
    else (NumPy, the tests' stand-in). Made once per namespace (functools.cache): CuPy keeps each compiled kernel
    in its Fusion object, so these must be the same objects from call to call."""
    masked_score = xp.finfo(xp.float32).min  # what a masked score becomes, as in attention.attention_probs

    def sum_of_squares(x):
        """RMSNorm's statistic: the sum over the features of x^2, in float32.  [N..., D] -> [N...]"""
        h = x.astype(xp.float32, copy=False)  # [N..., D]
        return xp.sum(h * h, axis=-1)  # [N...]

    def normalize_and_scale(x, sum_sq, n, eps, weight):
        """x / sqrt(sum_sq / n + eps) in float32, cast back to x's dtype, times the weight (cast to it).

        x: [N..., D], sum_sq: [N..., 1] float32, n and eps: float32 scalars, weight: [D]  ->  [N..., D]"""
        h = x.astype(xp.float32, copy=False)  # [N..., D]
        variance = sum_sq / n  # [N..., 1]  the mean of x^2
        h = h * (1.0 / xp.sqrt(variance + eps))  # [N..., D]
        return h.astype(x.dtype, copy=False) * weight.astype(x.dtype, copy=False)  # [N..., D]

    def silu_times(gate, up):
        """silu(gate) * up, silu as layers.silu computes it: gate * sigmoid(gate), sigmoid = 0.5 + 0.5 tanh(gate / 2).

        gate, up: [N..., F]  ->  [N..., F]"""
        return (0.5 * xp.tanh(0.5 * gate) + 0.5) * gate * up  # [N..., F]

    def rotate_halves(x1, x2, cos1, sin1, cos2, sin2):
        """x * cos + rotate_half(x) * sin, half by half: rotate_half(x) = (-x2, x1). cos/sin cast to x's dtype.

        x1, x2: [B, H, T, hd/2] (the two halves of x), cos1 .. sin2: [B, 1, T, hd/2] (the halves of cos and sin)
        ->  the two halves of the result, [B, H, T, hd/2] each"""
        cos1, sin1 = cos1.astype(x1.dtype, copy=False), sin1.astype(x1.dtype, copy=False)  # [B, 1, T, hd/2]
        cos2, sin2 = cos2.astype(x1.dtype, copy=False), sin2.astype(x1.dtype, copy=False)  # [B, 1, T, hd/2]
        return x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2  # [B, H, T, hd/2] each

    def scaled_masked(scores, scale, visible):
        """The softmax's input: the scores in float32, times the scale, float32's most negative value where
        masked (equal to attention_probs' additive bias: a score plus that value rounds to that value).
        Called inside each softmax body below, so that it is fused into each of them (recomputed, never stored).

        scores: [B, H, Tq, Tk] in q's dtype, scale: float32 scalar, visible: [B, 1, Tq, Tk] boolean (or True)"""
        return xp.where(visible, scores.astype(xp.float32, copy=False) * scale, masked_score)  # [B, H, Tq, Tk]

    def softmax_max(scores, scale, visible):
        """Each query's largest (scaled, masked) score.  -> [B, H, Tq] float32"""
        return xp.max(scaled_masked(scores, scale, visible), axis=-1)  # [B, H, Tq]

    def softmax_sum(scores, scale, visible, row_max):
        """Each query's sum of exp(score - max).  row_max: [B, H, Tq, 1]  ->  [B, H, Tq] float32"""
        return xp.sum(xp.exp(scaled_masked(scores, scale, visible) - row_max), axis=-1)  # [B, H, Tq]

    def softmax_normalize(scores, scale, visible, row_max, row_sum):
        """exp(score - max) / sum, cast to the scores' dtype (q's: the probabilities weigh the values in it).

        row_max, row_sum: [B, H, Tq, 1]  ->  [B, H, Tq, Tk]"""
        e = xp.exp(scaled_masked(scores, scale, visible) - row_max)  # [B, H, Tq, Tk] float32
        return (e / row_sum).astype(scores.dtype, copy=False)  # [B, H, Tq, Tk]

    bodies = [sum_of_squares, normalize_and_scale, silu_times, rotate_halves, softmax_max, softmax_sum,
              softmax_normalize]  # fmt: skip
    if is_cupy(xp):  # one compiled kernel each (the name is what a profiler shows)
        bodies = [xp.fuse(kernel_name=f"minillava_{body.__name__}")(body) for body in bodies]
    return SimpleNamespace(**{body.__name__: body for body in bodies})


# ---------------------------------------------------------------------------------------------
# The fused forms, each named as its plain twin
# ---------------------------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    """layers.rms_norm, fused: a reduction (the sum of squares in float32), then one elementwise kernel (normalize,
    cast back to x's dtype before the weight, as LlamaRMSNorm, times the weight) instead of 7 passes (9 in float16).

    x: [N..., D] float16 or float32, weight: [D]  ->  [N..., D]
    """
    xp = xp_of(x)
    kernels = kernels_for(xp)
    sum_sq = kernels.sum_of_squares(x)  # [N...] float32
    n, eps = xp.float32(x.shape[-1]), xp.float32(eps)  # typed scalars: float32 statistics, as the plain twin's
    return kernels.normalize_and_scale(x, sum_sq[..., None], n, eps, weight)  # [N..., D]


def plain_gated_activation(gate, up, hidden_act="silu"):
    """The plain form, PLAIN's: act(gate) * up, LlamaMLP's gating, as llama.mlp computed it inline.

    gate, up: [N..., F]  ->  [N..., F] (the activation's own new array, multiplied in place)
    """
    h = layers.activation(hidden_act)(gate)  # [N..., F]
    h *= up  # [N..., F]
    return h


def gated_activation(gate, up, hidden_act="silu"):
    """``plain_gated_activation``, fused for hidden_act "silu" (Llama's, Qwen2's): silu(gate) * up in one kernel
    instead of six passes. Any other activation: the plain form.  gate, up: [N..., F]  ->  [N..., F]"""
    if hidden_act != "silu":
        return plain_gated_activation(gate, up, hidden_act)
    return kernels_for(xp_of(gate)).silu_times(gate, up)  # [N..., F]


def apply_rotary(x, cos, sin):
    """rope.apply_rotary, fused: ``x * cos + rotate_half(x) * sin`` with cos and sin cast to x's dtype, half by half
    (rotate_half(x) is (-x2, x1)) in one kernel with two outputs, joined by one concatenate, instead of 5 passes
    (7 in float16, with the casts).

    x: [B, H, T, hd], cos/sin: [B, T, hd]  ->  [B, H, T, hd]
    """
    xp = xp_of(x)
    half = x.shape[-1] // 2
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, hd], broadcast over heads
    first, second = kernels_for(xp).rotate_halves(
        x[..., :half], x[..., half:], cos[..., :half], sin[..., :half], cos[..., half:], sin[..., half:]
    )  # [B, H, T, hd/2] each
    return xp.concatenate([first, second], axis=-1)  # [B, H, T, hd]


def scaled_dot_product_attention(q, k, v, mask=None):
    """attention.scaled_dot_product_attention with its softmax fused: the scale, the mask, the upcast to float32,
    the softmax and the cast back to q's dtype in three kernels (the row maxima, the row sums, the probabilities)
    instead of 8 passes over the [B, H, Tq, Tk] scores (10 in float16). The same numbers: the scores in float32, masked
    ones float32's most negative value (a fully masked query: uniform and finite), probabilities in q's dtype.

    q: [B, H, Tq, hd], k and v: [B, KV, Tk, hd], mask: [B, 1, Tq, Tk] boolean or None  ->  [B, H, Tq, hd]
    """
    xp = xp_of(q)
    kernels = kernels_for(xp)
    H, hd = q.shape[1], q.shape[3]
    k = attention.repeat_kv(k, H // k.shape[1])  # [B, H, Tk, hd]
    v = attention.repeat_kv(v, H // v.shape[1])  # [B, H, Tk, hd]
    scores = q @ k.swapaxes(-1, -2)  # [B, H, Tq, Tk] in q's dtype (float32 inside the kernels)
    scale = xp.float32(hd**-0.5)  # typed: a Python float would make the kernels' products float64
    visible = True if mask is None else mask  # [B, 1, Tq, Tk] (True: every key, e.g. a bidirectional tower)
    row_max = kernels.softmax_max(scores, scale, visible)[..., None]  # [B, H, Tq, 1]
    row_sum = kernels.softmax_sum(scores, scale, visible, row_max)[..., None]  # [B, H, Tq, 1]
    probs = kernels.softmax_normalize(scores, scale, visible, row_max, row_sum)  # [B, H, Tq, Tk] in q's dtype
    return probs @ v  # [B, H, Tq, hd]


# ---------------------------------------------------------------------------------------------
# The two sets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernels:
    """The elementwise chains of a Llama layer, as one set the model chooses (``fused_kernels``)."""

    rms_norm: Callable  # (x [N..., D], weight [D], eps) -> [N..., D]
    gated_activation: Callable  # (gate [N..., F], up [N..., F], hidden_act) -> act(gate) * up
    apply_rotary: Callable  # (x [B, H, T, hd], cos [B, T, hd], sin [B, T, hd]) -> [B, H, T, hd]
    attention: Callable  # (q, k, v, mask) -> out: what "eager" attention is (tiled attention keeps its own softmax)


PLAIN = Kernels(layers.rms_norm, plain_gated_activation, rope.apply_rotary, attention.scaled_dot_product_attention)
"""The plain NumPy-style functions: the default and the reference."""

FUSED = Kernels(rms_norm, gated_activation, apply_rotary, scaled_dot_product_attention)
"""Their fused twins (this module): the same numbers, fewer kernels on a GPU."""
