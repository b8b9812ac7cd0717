"""The small shared pieces: linear, LayerNorm, RMSNorm, activations, softmax.

Every function takes arrays and returns arrays, works on NumPy and CuPy alike (``xp = xp_of(x)``),
and computes in the dtype of its input ``x``. Weights may rest in another dtype (float16,
memory-mapped) and are cast where they are used: ``w.astype(x.dtype, copy=False)`` is free when
they already match.

Shape letters: N = any number of leading axes, D = input features, F = output features.
"""

from __future__ import annotations

import math

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


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis (torch.nn.LayerNorm), statistics in float32.

    x: [N..., D], weight/bias: [D]  ->  [N..., D]
    """
    xp = xp_of(x)
    h = x.astype(xp.float32, copy=False)  # [N..., D]
    mean = h.mean(axis=-1, keepdims=True)  # [N..., 1]
    centered = h - mean  # [N..., D]
    var = (centered * centered).mean(axis=-1, keepdims=True)  # [N..., 1] (biased, as torch)
    h = centered / xp.sqrt(var + eps)  # [N..., D]
    h = h * weight.astype(xp.float32, copy=False) + bias.astype(xp.float32, copy=False)
    return h.astype(x.dtype, copy=False)


def rms_norm(x, weight, eps):
    """RMSNorm as LlamaRMSNorm: ``x / sqrt(mean(x^2) + eps)`` in float32, cast back, times the weight.

    x: [N..., D], weight: [D]  ->  [N..., D]
    """
    xp = xp_of(x)
    h = x.astype(xp.float32, copy=False)  # [N..., D]
    variance = (h * h).mean(axis=-1, keepdims=True)  # [N..., 1]
    h = h * (1.0 / xp.sqrt(variance + eps))  # [N..., D], a new array (not x)
    # LlamaRMSNorm casts back to the input dtype *before* scaling by the weight (in place: h is ours).
    h = h.astype(x.dtype, copy=False)  # [N..., D]
    h *= weight.astype(x.dtype, copy=False)
    return h


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


def quick_gelu(x):
    """CLIP's GELU approximation: x * sigmoid(1.702 x) (OpenAI CLIP, Transformers QuickGELUActivation)."""
    s = sigmoid(1.702 * x)
    s *= x
    return s


def erfc(x):
    """Complementary error function, elementwise, for NumPy and CuPy alike (NumPy has no erf).

    Chebyshev fit of Numerical Recipes (``erfcc``), evaluated in float64: fractional error below
    1.2e-7 for every x, i.e. within about one float32 ulp of the exact value, so that GELU below
    agrees with torch's erf-based GELU to float32 precision. Evaluated in float32 it would take a third
    less time but move GELU by up to ~120 float32 ulp in the negative tail (x < -5; up to 6 ulp for
    x > -2), so it stays float64, with Horner's steps in place.
    """
    xp = xp_of(x)
    z = xp.abs(x).astype(xp.float64)  # [N...] |x|
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


def gelu(x):
    """Exact GELU: x * Phi(x) = x/2 * erfc(-x / sqrt(2)) (torch.nn.functional.gelu, approximate='none')."""
    phi2 = erfc(-x / math.sqrt(2.0))  # [N...] float64, 2 Phi(x)
    phi2 *= 0.5 * x  # x/2 * erfc(-x / sqrt(2)), in float64
    return phi2.astype(x.dtype, copy=False)


def gelu_tanh(x):
    """GELU's tanh approximation (Transformers 'gelu_pytorch_tanh' and 'gelu_new')."""
    xp = xp_of(x)
    return 0.5 * x * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def relu(x):
    xp = xp_of(x)
    return xp.maximum(x, 0)


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
