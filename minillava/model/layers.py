"""The small shared pieces: linear, LayerNorm, RMSNorm, activations, softmax.

Every function takes arrays and returns arrays, works on NumPy and CuPy alike (``xp = xp_of(x)``),
and computes in the dtype of its input ``x``. Weights may rest in another dtype (float16,
memory-mapped) and are cast where they are used: ``w.astype(x.dtype, copy=False)`` is free when
they already match.

Each forward used in training has its backward beside it, ``name_backward(dy, <the forward's arguments>)``,
returning the gradients of the forward's inputs and parameters in the forward's argument order. Nothing is
stored by a forward: a backward recomputes what it needs from the inputs. A backward computes in the dtype
of its inputs (float32 to train, float64 for finite-difference checks), at least float32 where the forward
takes its statistics in float32.

Shape letters: N = any number of leading axes, D = input features, F = output features.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import xp_of
from .blocked import MAX_ROWS_OF_X, BlockedWeight, linear_blocked
from .quantize import QuantizedWeight, dequantize


def linear(x, weight, bias=None):
    """``y = x W^T + b``, torch.nn.Linear's convention (weight is [out, in]).

    x: [N..., D], weight: [F, D] (an array, a QuantizedWeight from quantize.py, or a BlockedWeight from
    blocked.py), bias: [F] or None  ->  [N..., F]
    """
    D = x.shape[-1]
    if isinstance(weight, BlockedWeight):  # a weight at rest, asked to be multiplied a block of rows at a time
        if math.prod(x.shape[:-1]) <= MAX_ROWS_OF_X:
            return linear_blocked(x, weight, bias)  # a decode step: see blocked.py
        weight = weight.weight  # a prefill: the plain path below, one large product
    if isinstance(weight, QuantizedWeight):  # integers and scales: the whole matrix back to floats, here
        w = dequantize(weight, x.dtype)  # [F, D]
    else:
        w = weight.astype(x.dtype, copy=False)  # [F, D]
    # One 2-D matrix product over all leading axes (BLAS runs one big GEMM instead of a loop).
    y = x.reshape(-1, D) @ w.T  # [N, F]
    if bias is not None:
        y += bias.astype(x.dtype, copy=False)  # [F] broadcast over rows
    return y.reshape(*x.shape[:-1], w.shape[0])  # [N..., F]


def linear_backward(dy, x, weight, bias=None):
    """Gradients of ``y = x W^T + b``: dx = dy W, dW = dy^T x and db = dy, summed over every leading axis
    (each row of x meets the same W and b, so their gradients add up over the rows).

    dy: [N..., F], x: [N..., D], weight: [F, D], bias: [F] or None  ->  dx [N..., D], dweight [F, D],
    dbias [F] (None when there is no bias). Computed in x's dtype, as the forward.
    """
    if isinstance(weight, (BlockedWeight, QuantizedWeight)):
        raise TypeError(
            f"linear_backward needs a plain float array as weight, got a {type(weight).__name__}: "
            "training uses float weights (load the model without quantize= or blocked_matmul=)"
        )
    D = x.shape[-1]
    w = weight.astype(x.dtype, copy=False)  # [F, D]
    F = w.shape[0]
    # The leading axes flattened to rows, as in the forward: one matrix product each.
    dy2 = dy.reshape(-1, F)  # [N, F]
    x2 = x.reshape(-1, D)  # [N, D]
    dx = (dy2 @ w).reshape(x.shape)  # [N..., D]
    dweight = dy2.T @ x2  # [F, D], the sum over rows of the outer products dy_n x_n^T
    dbias = None if bias is None else dy2.sum(axis=0)  # [F]
    return dx, dweight, dbias


def linear_param_grads(dy, x, params, weight_grads=True):
    """``linear_backward`` for a module's params dict: -> dx [N..., D], {"weight": [F, D] (, "bias": [F])}, the
    gradients named as the parameters are; with ``weight_grads=False`` (a frozen module) dx alone, and None."""
    if not weight_grads:
        w = params["weight"].astype(dy.dtype, copy=False)  # [F, D]
        return (dy.reshape(-1, w.shape[0]) @ w).reshape(*dy.shape[:-1], w.shape[1]), None  # [N..., D]
    dx, dweight, dbias = linear_backward(dy, x, params["weight"], params.get("bias"))
    return dx, ({"weight": dweight} if dbias is None else {"weight": dweight, "bias": dbias})


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis (torch.nn.LayerNorm), statistics in float32.

    x: [N..., D], weight/bias: [D]  ->  [N..., D]
    """
    xp = xp_of(x)
    dtype = xp.promote_types(x.dtype, xp.float32)  # float32 statistics (float64 stays float64)
    h = x.astype(dtype, copy=False)  # [N..., D]
    mean = h.mean(axis=-1, keepdims=True)  # [N..., 1]
    centered = h - mean  # [N..., D]
    var = (centered * centered).mean(axis=-1, keepdims=True)  # [N..., 1] (biased, as torch)
    h = centered / xp.sqrt(var + eps)  # [N..., D]
    h = h * weight.astype(dtype, copy=False) + bias.astype(dtype, copy=False)
    return h.astype(x.dtype, copy=False)


def layer_norm_backward(dy, x, weight, bias, eps):
    """Gradients of LayerNorm ``y = x_hat w + b``, x_hat = (x - mean) / sqrt(var + eps): db = sum dy,
    dw = sum dy x_hat, and with g = dy w, dx = (g - mean(g) - x_hat mean(g x_hat)) / sqrt(var + eps)
    (the two means undo what shifting x or scaling it would change, as the mean and variance absorb both).

    dy, x: [N..., D], weight/bias: [D]  ->  dx [N..., D], dweight [D], dbias [D]
    """
    xp = xp_of(x)
    dtype = xp.promote_types(x.dtype, xp.float32)  # the forward's float32 statistics, or float64 if given
    h = x.astype(dtype, copy=False)  # [N..., D]
    g_out = dy.astype(dtype, copy=False)  # [N..., D]
    centered = h - h.mean(axis=-1, keepdims=True)  # [N..., D]
    inv_std = 1.0 / xp.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)  # [N..., 1]
    x_hat = centered * inv_std  # [N..., D]
    g = g_out * weight.astype(dtype, copy=False)  # [N..., D], the gradient reaching x_hat
    dx = inv_std * (g - g.mean(axis=-1, keepdims=True) - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))  # [N..., D]
    lead = tuple(range(x.ndim - 1))  # every axis but the features: the weight and bias are shared by all rows
    dweight = (g_out * x_hat).sum(axis=lead)  # [D]
    dbias = g_out.sum(axis=lead)  # [D]
    return dx.astype(x.dtype, copy=False), dweight.astype(x.dtype, copy=False), dbias.astype(x.dtype, copy=False)


def rms_norm(x, weight, eps):
    """RMSNorm as LlamaRMSNorm: ``x / sqrt(mean(x^2) + eps)`` in float32, cast back, times the weight.

    x: [N..., D], weight: [D]  ->  [N..., D]
    """
    xp = xp_of(x)
    h = x.astype(xp.promote_types(x.dtype, xp.float32), copy=False)  # [N..., D] float32 (float64 stays float64)
    variance = (h * h).mean(axis=-1, keepdims=True)  # [N..., 1]
    h = h * (1.0 / xp.sqrt(variance + eps))  # [N..., D], a new array (not x)
    # LlamaRMSNorm casts back to the input dtype *before* scaling by the weight (in place: h is ours).
    h = h.astype(x.dtype, copy=False)  # [N..., D]
    h *= weight.astype(x.dtype, copy=False)
    return h


def rms_norm_backward(dy, x, weight, eps):
    """Gradients of RMSNorm ``y = w x r``, r = 1 / sqrt(mean(x^2) + eps): dw = sum dy x r, and with
    g = dy w, dx = r (g - x_hat mean(g x_hat)), x_hat = x r (r depends on every x_j: dr/dx_j = -r^3 x_j / D).

    dy, x: [N..., D], weight: [D]  ->  dx [N..., D], dweight [D]
    """
    xp = xp_of(x)
    dtype = xp.promote_types(x.dtype, xp.float32)  # the forward's float32 statistics, or float64 if given
    h = x.astype(dtype, copy=False)  # [N..., D]
    g_out = dy.astype(dtype, copy=False)  # [N..., D]
    r = 1.0 / xp.sqrt((h * h).mean(axis=-1, keepdims=True) + eps)  # [N..., 1]
    x_hat = h * r  # [N..., D], what the forward multiplies by the weight
    g = g_out * weight.astype(dtype, copy=False)  # [N..., D], the gradient reaching x_hat
    dx = r * (g - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))  # [N..., D]
    dweight = (g_out * x_hat).sum(axis=tuple(range(x.ndim - 1)))  # [D], summed over every row
    return dx.astype(x.dtype, copy=False), dweight.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# Activations (Transformers' ACT2FN names)
# ---------------------------------------------------------------------------------------------


# The activations run on the MLP's widest arrays ([T, F]: 26 MiB at 600 tokens x 11008), where each new
# array costs about as much as the arithmetic. So sigmoid, silu, quick_gelu and gelu make one new array
# and then work in place in it, with the same operations (the same numbers) as the formula in their
# docstrings.


def sigmoid(x):
    """1 / (1 + exp(-x)), written with tanh so that large |x| cannot overflow: 0.5 + 0.5 tanh(x / 2)."""
    xp = xp_of(x)
    s = 0.5 * x  # [N...], our own array from here on
    xp.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    return s


def silu(x):
    """SiLU / swish: x * sigmoid(x) (Llama's MLP gate)."""
    s = sigmoid(x)
    s *= x
    return s


def silu_backward(dy, x):
    """d/dx x s(x) = s + x s (1 - s), with s = sigmoid(x) (since s' = s (1 - s)).  dy, x: [N...] -> dx [N...]"""
    s = sigmoid(x)  # [N...], a new array: x stays as it was
    return dy * (s * (1.0 + x * (1.0 - s)))  # [N...]


def quick_gelu(x):
    """CLIP's GELU approximation: x * sigmoid(1.702 x) (OpenAI CLIP, Transformers QuickGELUActivation)."""
    s = sigmoid(1.702 * x)
    s *= x
    return s


def quick_gelu_backward(dy, x):
    """d/dx x s(1.702 x) = s + 1.702 x s (1 - s), with s = sigmoid(1.702 x).  dy, x: [N...] -> dx [N...]"""
    s = sigmoid(1.702 * x)  # [N...]
    return dy * (s + 1.702 * x * s * (1.0 - s))  # [N...]


def erfc(x):
    """Complementary error function, elementwise, for NumPy and CuPy alike (NumPy has no erf).

    Chebyshev fit of Numerical Recipes (``erfcc``): fractional error below 1.2e-7 for every x, in float64.
    Evaluated in x's dtype, at least float32 (float16 is computed in float32, float64 stays float64), with
    Horner's steps in place. For GELU in float32 that is as close as float32 allows: GELU below stays within
    4e-7 of the exact value for every x (measured against math.erfc on [-12, 12]), where torch's own float32
    GELU is within 1.1e-6; the float64 evaluation it used to take (2.4e-7) cost half as much time again
    (41 ms against 28 ms for the projector's [576, 4096] here) for no difference a float32 model can see.
    """
    xp = xp_of(x)
    z = xp.abs(x).astype(xp.promote_types(x.dtype, xp.float32))  # [N...] |x|, a new array
    t = 1.0 + 0.5 * z  # [N...]
    xp.divide(1.0, t, out=t)  # 1 / (1 + z/2)
    coefficients = (  # highest order first, Horner's scheme: poly = (...(c0 t + c1) t + ...) t + c9
        0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
        -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223,
    )  # fmt: skip
    poly = xp.full_like(t, coefficients[0])  # [N...]
    for c in coefficients[1:]:
        poly *= t
        poly += c
    z *= z  # z^2
    poly -= z  # -z^2 + poly
    y = xp.exp(poly, out=poly)
    y *= t  # erfc(|x|) = t exp(-z^2 + poly)
    return xp.where(x >= 0, y, 2.0 - y)  # erfc(x) = 2 - erfc(|x|) for x < 0


GELU_BLOCK = 2**16
"""Values per block of ``gelu`` on the CPU. erfc works with four temporaries the size of its input: for the
projector's [576, 4096] that is ~38 MB of fresh memory per call, which the OS hands over page by page (measured
110-380 ms a call here, in float64). In blocks of 2**16 values (256 KiB a temporary) they stay in the cache and
their memory is reused: ~28 ms, the same numbers (every value is computed alone). On a GPU the whole array is one
block."""


def gelu(x):
    """Exact GELU: x * Phi(x) = x/2 * erfc(-x / sqrt(2)) (torch.nn.functional.gelu, approximate='none').

    On the CPU a large x is computed a block of GELU_BLOCK values at a time (see there), into one output."""
    if xp_of(x) is not np or x.size <= GELU_BLOCK:
        return _gelu(x)
    flat = x.reshape(-1)  # [N]
    out = np.empty_like(flat)  # [N]
    for start in range(0, flat.size, GELU_BLOCK):
        out[start : start + GELU_BLOCK] = _gelu(flat[start : start + GELU_BLOCK])
    return out.reshape(x.shape)


def _gelu(x):
    """The formula, on the whole of x."""
    phi2 = erfc(-x / math.sqrt(2.0))  # [N...] 2 Phi(x), in float32 (float64 for float64)
    phi2 *= 0.5 * x  # x/2 * erfc(-x / sqrt(2))
    return phi2.astype(x.dtype, copy=False)


def gelu_backward(dy, x):
    """d/dx x Phi(x) = Phi(x) + x phi(x): the normal distribution function plus x times its density
    phi(x) = exp(-x^2 / 2) / sqrt(2 pi). Phi comes from erfc in float64 (the backward's checks compare it with
    finite differences in float64).

    dy, x: [N...]  ->  dx [N...] in x's dtype
    """
    xp = xp_of(x)
    x64 = x.astype(xp.float64)  # [N...], erfc works in float64 anyway
    cdf = 0.5 * erfc(-x64 / math.sqrt(2.0))  # [N...] Phi(x)
    pdf = xp.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)  # [N...] phi(x)
    return dy * (cdf + x64 * pdf).astype(x.dtype, copy=False)  # [N...]


def gelu_tanh(x):
    """GELU's tanh approximation (Transformers 'gelu_pytorch_tanh' and 'gelu_new')."""
    xp = xp_of(x)
    return 0.5 * x * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def gelu_tanh_backward(dy, x):
    """Derivative of 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3), c = sqrt(2 / pi): the product rule gives
    0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) c (1 + 3 * 0.044715 x^2).  dy, x: [N...] -> dx [N...]
    """
    xp = xp_of(x)
    c = math.sqrt(2.0 / math.pi)
    t = xp.tanh(c * (x + 0.044715 * x * x * x))  # [N...]
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x))  # [N...]


def relu(x):
    xp = xp_of(x)
    return xp.maximum(x, 0)


def relu_backward(dy, x):
    """d/dx max(x, 0) = 1 where x > 0, else 0 (0 at x = 0 itself, as torch).  dy, x: [N...] -> dx [N...]"""
    return dy * (x > 0).astype(dy.dtype)  # [N...], the gradient passes where the unit is on


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_new": gelu_tanh,
    "quick_gelu": quick_gelu,
    "silu": silu,
    "relu": relu,
}


def activation(name: str):
    """The activation function for a config's ``hidden_act`` / ``projector_hidden_act`` name."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; minillava knows {sorted(ACTIVATIONS)}") from None


# Each activation's backward, keyed by the forward function: the names stay in one list, ACTIVATIONS.
ACTIVATION_BACKWARDS = {
    gelu: gelu_backward,
    gelu_tanh: gelu_tanh_backward,
    quick_gelu: quick_gelu_backward,
    silu: silu_backward,
    relu: relu_backward,
}


def activation_backward(name: str):
    """The backward ``f_backward(dy, x) -> dx`` of ``activation(name)`` (the same error for an unknown name)."""
    return ACTIVATION_BACKWARDS[activation(name)]


def softmax(x, axis=-1, out=None):
    """Numerically stable softmax (subtract the row maximum before exp).

    One new array (``out=x`` reuses x's memory instead: for a caller that owns x and no longer needs
    it, such as attention's scores); exp and the division then work in place in it. The numbers
    are those of ``exp(x - max) / sum``.
    """
    xp = xp_of(x)
    e = xp.subtract(x, x.max(axis=axis, keepdims=True), out=out)  # x - max, every entry <= 0
    xp.exp(e, out=e)  # exp(x - max), in (0, 1]
    e /= e.sum(axis=axis, keepdims=True)
    return e
