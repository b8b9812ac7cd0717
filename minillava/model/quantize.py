"""Weight-only quantization: a linear layer's weight stored as small integers and a few float scales.

A weight W [F, D] (torch.nn.Linear's [out, in]) becomes integers q and float32 scales s (a QuantizedWeight), and
is turned back into floats where it is multiplied (layers.linear calls ``dequantize``): W ≈ q s. Only the storage
shrinks; the matrix product still runs in the compute dtype. Three formats, each a rule for one group of G weights
of a row:

    int8   8 bits  G = D (one group: the whole row)   s = max|row| / 127     q = round(w / s) in [-127, 127]
    int4   4 bits  G = 64 inputs of a row              s = max|group| / 7     q = round(w / s) in [-7, 7]
    nf4    4 bits  G = 64 inputs of a row              s = max|group|         q = the NF4 code nearest w / s

int8 is LLM.int8()'s row-wise format (bitsandbytes' ``int8_vectorwise_quant``, what Transformers'
``load_in_8bit`` stores), without its outlier columns. nf4 is QLoRA's NormalFloat4 (Dettmers et al. 2023),
bitsandbytes' ``quantize_4bit(quant_type="nf4", blocksize=64)``, what the llava documentation's 4-bit Colab
runs, without its "double quantization" of the scales: 16 values placed at quantiles of a normal distribution,
so that more of them sit where most weights are (near 0). int4 is the plain uniform grid beside it, for
comparison. The 4-bit formats pack two codes per byte: the first of a pair (even input index) in the high 4 bits,
the second in the low 4 bits, as bitsandbytes does. int4 stores q + 8 (1 ... 15) so that a code is unsigned.

A row whose length D is not a multiple of G gets its last group padded with zeros: a zero does not change the
group's max|w|, it is stored as the code of 0, and ``dequantize`` cuts the padding off. (bitsandbytes cuts the
flattened matrix into blocks of G instead, across row ends; the two agree when G divides D, as it does for every
Llama and Qwen2 size.)

How a faster path builds on this: ``dequantize(q, dtype)`` is the whole reference, one function of the
dataclass's five fields, and its numbers are the ones to match (to float32 rounding where the order of
operations changes). Every row is independent: rows r0:r1 of W are
``dequantize(dataclasses.replace(q, data=q.data[r0:r1], scales=q.scales[r0:r1], shape=(r1 - r0, D)))``, so a
blockwise path may dequantize a few rows at a time into a cache-sized buffer and multiply them at once. With int8
a row's one scale multiplies that row's output alone, so it may also go on the output: x Wᵀ = (x qᵀ) sᵀ. That
path is ``blocked.py`` (``load_model(..., blocked_matmul=True)``).

Shape letters: F = output features (rows), D = input features, G = group size, n = groups per row (D / G,
rounded up), Dg = n * G (a row padded to whole groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .backend import xp_of

FORMATS = ("int8", "int4", "nf4")
GROUP_SIZE = 64  # inputs per scale for int4 and nf4: bitsandbytes' default blocksize for 4-bit weights

# The NF4 code book, exactly as bitsandbytes defines it (functional.get_4bit_type("nf4"), which
# create_normal_map(offset=0.9677083, use_extra_value=True) generates): normal quantiles scaled to [-1, 1],
# 7 below zero, an exact 0, 8 above. Code k (0 ... 15) stands for NF4[k]; the list is sorted.
NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
INT4_OFFSET = 8  # int4 codes are stored as q + 8, in 1 ... 15


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight [F, D] as integers and scales: data, nothing else (``dequantize`` turns it back into floats).

    data:       int8 [F, D] (int8), or uint8 [F, Dg / 2] (int4, nf4: two 4-bit codes per byte, the first of
                each pair in the high 4 bits)
    scales:     float32 [F, n]: one per group of ``group_size`` inputs of a row (int8: n = 1, the row's scale)
    format:     "int8", "int4" or "nf4"
    group_size: G, inputs per scale (int8: D)
    shape:      (F, D), the original weight's shape (so ``weight.shape`` reads the same as for an array)

    Construction checks that the five agree, so that code using one can trust it.
    """

    data: Any
    scales: Any
    format: str
    group_size: int
    shape: tuple[int, int]

    def __post_init__(self):
        _check(self)

    @property
    def nbytes(self) -> int:
        """Bytes held: the integers and the scales."""
        return int(self.data.nbytes) + int(self.scales.nbytes)


def _check(q: QuantizedWeight) -> None:
    """One ValueError naming what disagrees, for a QuantizedWeight built from inconsistent parts."""
    where = f"quantized weight (format {q.format!r}, shape {q.shape}, group_size {q.group_size})"
    if q.format not in FORMATS:
        raise ValueError(f"{where}: format must be one of {FORMATS}")
    if not (len(q.shape) == 2 and all(isinstance(n, int) and n > 0 for n in q.shape)):
        raise ValueError(f"{where}: shape must be two positive integers (F, D)")
    F, D = q.shape
    if q.format == "int8" and q.group_size != D:
        raise ValueError(f"{where}: int8 has one scale per row, so group_size must be D = {D}")
    if q.format != "int8" and not (isinstance(q.group_size, int) and q.group_size > 0 and q.group_size % 2 == 0):
        raise ValueError(f"{where}: a 4-bit group_size must be a positive even integer (two codes per byte)")
    n = math.ceil(D / q.group_size)
    data_shape, data_dtype = ((F, D), "int8") if q.format == "int8" else ((F, n * q.group_size // 2), "uint8")
    if tuple(q.data.shape) != data_shape or q.data.dtype.name != data_dtype:
        raise ValueError(f"{where}: data must be {data_dtype} {data_shape}, got {q.data.dtype.name} {q.data.shape}")
    if tuple(q.scales.shape) != (F, n) or q.scales.dtype.name != "float32":
        raise ValueError(f"{where}: scales must be float32 {(F, n)}, got {q.scales.dtype.name} {q.scales.shape}")


def quantized_nbytes(shape, format: str, group_size: int = GROUP_SIZE) -> int:
    """Bytes a weight of ``shape`` (F, D) takes quantized, without quantizing it (for memory plans)."""
    F, D = shape
    G = D if format == "int8" else group_size
    n = math.ceil(D / G)
    data = F * D if format == "int8" else F * n * G // 2  # 1 byte per value, or 2 values per byte
    return data + F * n * 4  # + float32 scales


# ---------------------------------------------------------------------------------------------
# Quantizing: weight [F, D] (any float dtype, NumPy or CuPy) -> QuantizedWeight
# ---------------------------------------------------------------------------------------------


def _groups(weight, group_size):
    """[F, D] -> float32 [F, n, G]: each row cut into groups of G inputs, the last one padded with zeros.

    Everything is computed in float32, whatever the weight's dtype (a float16 file's), as bitsandbytes does."""
    xp = xp_of(weight)
    F, D = weight.shape
    n = math.ceil(D / group_size)
    w = xp.asarray(weight, dtype=xp.float32)  # [F, D]  (one matrix at a time: a float16 file never all in float32)
    if n * group_size != D:
        w = xp.pad(w, ((0, 0), (0, n * group_size - D)))  # [F, Dg]  zeros: max|w| and the codes of 0 unchanged
    return w.reshape(F, n, group_size)  # [F, n, G]


def _on_grid(w, absmax, top):
    """w * ((1 / max|group|) * top): the weights on the grid's scale, in [-top, top].

    The reciprocal first, then the products, all in float32: bitsandbytes' arithmetic to the last bit (torch
    computes its ``127.0 / absmax`` as ``absmax.reciprocal() * 127``), so that values on a rounding tie go the
    same way. An all-zero group (max 0) stays zero instead of 0 * inf = nan.
    w: [F, n, G], absmax: [F, n, 1]  ->  [F, n, G]"""
    xp = xp_of(w)
    reciprocal = xp.float32(1) / xp.where(absmax > 0, absmax, xp.float32(1))  # [F, n, 1]
    return w * (reciprocal * xp.float32(top))  # [F, n, G]


def _pack(codes):
    """uint8 codes 0 ... 15 [F, Dg] -> bytes [F, Dg / 2]: code 2j in the high 4 bits of byte j, 2j + 1 in the low."""
    pairs = codes.reshape(codes.shape[0], -1, 2)  # [F, Dg/2, 2]
    return (pairs[..., 0] << 4) | pairs[..., 1]  # [F, Dg/2]


def _unpack(data):
    """The inverse of ``_pack``: bytes [F, Dg / 2] -> codes 0 ... 15 [F, Dg], in input order."""
    xp = xp_of(data)
    return xp.stack([data >> 4, data & 0x0F], axis=-1).reshape(data.shape[0], -1)  # [F, Dg/2, 2] -> [F, Dg]


def quantize_int8(weight) -> QuantizedWeight:
    """Symmetric int8, one scale per output row: s = max|row| / 127, q = round(w / s).

    Per row, because each output feature is one dot product: a row's scale multiplies its whole output, so an
    outlier in one row costs precision in that row only. |w - q s| <= s / 2 for every weight.
    weight: [F, D] -> data int8 [F, D], scales float32 [F, 1]
    """
    xp = xp_of(weight)
    F, D = weight.shape
    w = _groups(weight, D)  # [F, 1, D]
    absmax = xp.abs(w).max(axis=-1, keepdims=True)  # [F, 1, 1]
    # round(w * 127 / max|row|) as bitsandbytes' int8_vectorwise_quant; round half to even, like torch. In place
    # (out=q): a 7B's matrices are 180 MB in float32, and every fresh array of that size costs time to map.
    q = _on_grid(w, absmax, 127)  # [F, 1, D]
    xp.clip(xp.rint(q, out=q), -127, 127, out=q)  # [F, 1, D]
    scales = absmax / xp.float32(127)  # [F, 1, 1]
    return QuantizedWeight(q.astype(xp.int8).reshape(F, D), scales.reshape(F, 1), "int8", D, (F, D))


def quantize_int4(weight, group_size: int = GROUP_SIZE) -> QuantizedWeight:
    """Symmetric int4 in groups of G inputs: s = max|group| / 7, q = round(w / s) in [-7, 7], stored as q + 8.

    Groups, because 15 levels per whole row would be too coarse: one large weight would flatten the rest of its
    row to 0. |w - q s| <= s / 2 for every weight, s of its group.
    weight: [F, D] -> data uint8 [F, Dg / 2] (packed), scales float32 [F, n]
    """
    xp = xp_of(weight)
    F, D = weight.shape
    w = _groups(weight, group_size)  # [F, n, G]
    absmax = xp.abs(w).max(axis=-1, keepdims=True)  # [F, n, 1]
    q = _on_grid(w, absmax, 7)  # [F, n, G]
    xp.clip(xp.rint(q, out=q), -7, 7, out=q)  # [F, n, G]  in place, as int8's
    q += INT4_OFFSET  # [F, n, G]  stored as q + 8
    codes = q.astype(xp.uint8).reshape(F, -1)  # [F, Dg]  1 ... 15
    scales = absmax / xp.float32(7)  # [F, n, 1]
    return QuantizedWeight(_pack(codes), scales.reshape(F, -1), "int4", group_size, (F, D))


def quantize_nf4(weight, group_size: int = GROUP_SIZE) -> QuantizedWeight:
    """NF4 in groups of G inputs, as bitsandbytes' quantize_4bit: s = max|group|, then w / s (in [-1, 1]) becomes
    the index of the nearest of the 16 NF4 values.

    Nearest value as bitsandbytes finds it: compare with the midpoints between neighbouring codes (computed in
    float32); a value exactly on a midpoint takes the lower code (torch.bucketize, the CUDA kernel's ``x > mid``).
    Counting the midpoints below a value gives its code, as a binary search (searchsorted) would, 2-4x faster here.
    weight: [F, D] -> data uint8 [F, Dg / 2] (packed), scales float32 [F, n] (max|group|: the "absmax")
    """
    xp = xp_of(weight)
    F, D = weight.shape
    w = _groups(weight, group_size)  # [F, n, G]
    scales = xp.abs(w).max(axis=-1, keepdims=True)  # [F, n, 1]  the "absmax"
    normalized = _on_grid(w, scales, 1)  # [F, n, G]  in [-1, 1]
    code_book = xp.asarray(NF4, dtype=xp.float32)  # [16]
    midpoints = (code_book[:-1] + code_book[1:]) / 2  # [15]
    codes = xp.zeros(normalized.shape, dtype=xp.uint8)  # [F, n, G]
    for midpoint in midpoints:  # the nearest code's index is the number of midpoints below the value
        codes += normalized > midpoint  # [F, n, G]
    return QuantizedWeight(_pack(codes.reshape(F, -1)), scales.reshape(F, -1), "nf4", group_size, (F, D))


def quantize(weight, format: str, group_size: int = GROUP_SIZE) -> QuantizedWeight:
    """``weight`` [F, D] quantized in ``format`` ("int8", "int4" or "nf4"; group_size is the 4-bit formats')."""
    if format == "int8":
        return quantize_int8(weight)
    if format == "int4":
        return quantize_int4(weight, group_size)
    if format == "nf4":
        return quantize_nf4(weight, group_size)
    raise ValueError(f"quantization format must be one of {FORMATS}, got {format!r}")


# ---------------------------------------------------------------------------------------------
# Dequantizing: QuantizedWeight -> weight [F, D] in a float dtype
# ---------------------------------------------------------------------------------------------


def dequantize(q: QuantizedWeight, dtype="float32"):
    """The weight back as floats: each integer (or NF4 value) times its group's scale, in float32, then cast to
    ``dtype`` (bitsandbytes and torchao do the same).  -> [F, D]

    The plain path: the whole matrix at once, every time the layer runs (layers.linear calls it).
    """
    xp = xp_of(q.data)
    F, D = q.shape
    if q.format == "int8":
        values = q.data  # [F, D]  int8
    elif q.format == "int4":
        values = _unpack(q.data).astype(xp.int8) - INT4_OFFSET  # [F, Dg]  int8, back to -7 ... 7
    else:
        values = xp.asarray(NF4, dtype=xp.float32)[_unpack(q.data)]  # [F, Dg]  the code book's values
    # integers times float32 scales are float32 (an int8 is exact in float32): one pass, no float copy of q first
    groups = values.reshape(F, -1, q.group_size) * q.scales[:, :, None]  # [F, n, G] * [F, n, 1]
    return groups.reshape(F, -1)[:, :D].astype(dtype, copy=False)  # [F, D]  the padding of the last group cut off
