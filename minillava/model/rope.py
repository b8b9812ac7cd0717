"""Rotary position embeddings (Su et al. 2021, RoFormer), as Llama uses them.

Each pair of features (i, i + hd/2) of a query or key at position m is rotated by the angle
m * theta_i, with theta_i = base^(-2i / hd). A dot product of rotated q (position m) and k
(position n) then depends only on m - n. Llama splits the head into halves (``rotate_half``),
not into interleaved pairs as the paper writes it: the two orders give different numbers, and the
checkpoints' q/k weights are laid out for the halves.

Scaled variants for long contexts change only the frequencies:
  linear  (Chen et al. 2023, position interpolation): theta_i / factor
  llama3  (Meta's Llama 3.1): low frequencies / factor, high kept, a smooth ramp in between

Shape letters: B = batch, T = positions, H = heads, hd = head_dim.
"""

from __future__ import annotations

import math

from .backend import xp_of

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
"""The RoPE variants minillava computes (`rope_type` in config.json; Transformers' `ROPE_INIT_FUNCTIONS`).

"dynamic" (dynamic NTK) recomputes the frequencies from the current sequence length once it exceeds
`max_position_embeddings`: theta' = theta * (factor * seq_len / max_pos - (factor - 1)) ** (d / (d - 2))
(Transformers' `_compute_dynamic_ntk_parameters`). Within the context it is the default RoPE.
"""


def inverse_frequencies(xp, head_dim, theta, rope_scaling=None):
    """theta_i for i = 0 .. hd/2 - 1, float32 as Transformers computes them.  -> [hd/2]"""
    exponents = xp.arange(0, head_dim, 2, dtype=xp.float32) / head_dim  # [hd/2]
    # theta ** exponents correctly rounded to float32, as torch's pow gives it: NumPy's float32 pow
    # is off by an ulp in some entries, which moves cos/sin by ~1e-5 at position 1600.
    powers = (float(theta) ** exponents.astype(xp.float64)).astype(xp.float32)  # [hd/2]
    inv_freq = 1.0 / powers  # [hd/2] float32
    rope_type = (rope_scaling or {}).get("rope_type", "default")
    if rope_type in ("default", "dynamic"):
        # "dynamic" NTK scaling changes the base only past max_position_embeddings, which minillava
        # never goes beyond (the model refuses longer sequences), so within the context it is default.
        return inv_freq
    if rope_type == "linear":
        return (inv_freq / rope_scaling["factor"]).astype(xp.float32)
    if rope_type == "llama3":
        return _llama3_frequencies(xp, inv_freq, rope_scaling)
    raise ValueError(f"rope_scaling: unsupported rope_type {rope_type!r} (minillava knows {ROPE_TYPES})")


def _llama3_frequencies(xp, inv_freq, s):
    """Llama 3.1's scaling: wavelengths longer than the original context / low_freq_factor are
    divided by ``factor``; shorter than context / high_freq_factor are kept; in between, a linear
    blend of the two by how many wavelengths fit into the original context."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    context = s["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq  # [hd/2]
    scaled = xp.where(wavelength > context / low, inv_freq / factor, inv_freq)  # [hd/2]
    smooth = (context / wavelength - low) / (high - low)  # [hd/2]
    blended = (1 - smooth) * scaled / factor + smooth * scaled  # [hd/2]
    is_medium = (wavelength >= context / high) & (wavelength <= context / low)  # [hd/2]
    return xp.where(is_medium, blended, scaled).astype(xp.float32)


def rotary_cos_sin(position_ids, inv_freq):
    """cos and sin of every angle m * theta_i, duplicated for the two halves of a head.

    position_ids: [B, T] integers, inv_freq: [hd/2]  ->  cos, sin: [B, T, hd] float32
    """
    xp = xp_of(inv_freq)
    angles = position_ids.astype(xp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    angles = xp.concatenate([angles, angles], axis=-1)  # [B, T, hd]
    return xp.cos(angles), xp.sin(angles)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis.  [..., hd] -> [..., hd]"""
    xp = xp_of(x)
    half = x.shape[-1] // 2
    return xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x, cos, sin):
    """Rotate queries or keys: x * cos + rotate_half(x) * sin.

    x: [B, H, T, hd], cos/sin: [B, T, hd]  ->  [B, H, T, hd]
    """
    cos = cos[:, None].astype(x.dtype, copy=False)  # [B, 1, T, hd], broadcast over heads
    sin = sin[:, None].astype(x.dtype, copy=False)
    rotated = rotate_half(x)  # [B, H, T, hd], a new array, ours: scaled and summed in place
    rotated *= sin
    rotated += x * cos  # x * cos + rotate_half(x) * sin
    return rotated


def apply_rotary_backward(dy, cos, sin):
    """Gradient of ``apply_rotary`` with respect to x: the rotation by the opposite angle.

    dy: [B, H, T, hd] (the gradient of the rotated x), cos/sin: [B, T, hd]  ->  dx: [B, H, T, hd]

    The forward is linear in x, y = R x with R the rotation of each pair (i, i + hd/2) by m * theta_i, so
    dx = R^T dy; a rotation is orthogonal, R^T = R^-1, the rotation by -m * theta_i: cos stays, sin changes sign.
    (Term by term: the transpose of rotate_half is -rotate_half, and sin, the same on both halves of a head,
    commutes with it.) Computed in dy's dtype, a new array: dy is left as it is.
    """
    cos = cos[:, None].astype(dy.dtype, copy=False)  # [B, 1, T, hd], broadcast over heads
    sin = sin[:, None].astype(dy.dtype, copy=False)  # [B, 1, T, hd]
    return dy * cos - rotate_half(dy) * sin  # [B, H, T, hd]  dy cos(-a) + rotate_half(dy) sin(-a)
