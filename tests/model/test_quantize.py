"""Weight-only quantization (minillava.model.quantize): each format against its definition (the round-trip bound,
the nearest NF4 code, the packing order), against bitsandbytes (NF4 and LLM.int8's row-wise int8, exactly) and
torchao (int8 weight-only's dequantization, exactly) when they are installed, and linear with a quantized weight."""

import dataclasses
import inspect
import math

import numpy as np
import pytest

from minillava.model import layers, quantize
from minillava.model.quantize import (
    NF4,
    QuantizedWeight,
    dequantize,
    quantize_int4,
    quantize_int8,
    quantize_nf4,
    quantized_nbytes,
)

# bitsandbytes' NF4 table, copied from its functional.get_4bit_type("nf4") (bitsandbytes 0.50, and unchanged since
# QLoRA): checked here against minillava's copy, and against the installed bitsandbytes below when there is one.
BITSANDBYTES_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip


def weights(rng, F=96, D=256, dtype=np.float32):
    """A [F, D] weight whose rows differ in scale (as real ones do), an all-zero row and an outlier."""
    w = rng.standard_normal((F, D)) * rng.uniform(0.01, 1.0, (F, 1))
    w[5] = 0.0
    w[7, 3] = 25.0
    return w.astype(dtype)


def test_the_nf4_code_book_is_bitsandbytes():
    assert list(NF4) == BITSANDBYTES_NF4
    assert sorted(NF4) == list(NF4) and NF4[7] == 0.0 and (NF4[0], NF4[-1]) == (-1.0, 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_int8_round_trip_per_row(rng, dtype):
    w = weights(rng, dtype=dtype)
    q = quantize_int8(w)
    assert (q.format, q.group_size, q.shape, q.data.dtype, q.scales.shape) == ("int8", 256, (96, 256), np.int8, (96, 1))
    w32 = w.astype(np.float32)
    np.testing.assert_array_equal(q.scales[:, 0], np.abs(w32).max(axis=1) / np.float32(127))  # s = max|row| / 127
    error = np.abs(w32 - dequantize(q))  # [F, D]
    # |w - q s| <= s / 2 per row, up to float32 rounding: w * 127 / max carries ~1e-7 of 127, so a tie (frequent
    # for float16 weights) may round either way, 1e-5 s past the half
    assert (error <= q.scales * (0.5 + 1e-5)).all()
    assert np.abs(q.data).max() == 127 and (np.abs(q.data).max(axis=1)[q.scales[:, 0] > 0] == 127).all()
    assert (q.data[5] == 0).all() and (dequantize(q)[5] == 0).all()  # an all-zero row stays zero, no nan


@pytest.mark.parametrize("D", [256, 200])  # 200: the last group of each row has 8 values and 56 of padding
def test_int4_round_trip_per_group(rng, D):
    w = weights(rng, D=D)
    q = quantize_int4(w)
    G, n = 64, math.ceil(D / 64)
    assert (q.format, q.group_size, q.data.shape, q.scales.shape) == ("int4", G, (96, n * G // 2), (96, n))
    padded = np.pad(w, ((0, 0), (0, n * G - D))).reshape(96, n, G)  # [F, n, G]
    np.testing.assert_array_equal(q.scales, np.abs(padded).max(axis=-1) / np.float32(7))  # s = max|group| / 7
    dq = dequantize(q)
    assert dq.shape == (96, D)
    error = np.pad(np.abs(w - dq), ((0, 0), (0, n * G - D))).reshape(96, n, G)
    assert (error <= q.scales[:, :, None] * (0.5 + 1e-5)).all()  # per group, up to float32 rounding as int8's
    codes = quantize._unpack(q.data)  # [F, n*G]  stored q + 8
    assert codes.min() >= 1 and codes.max() == 15
    assert (codes[:, D:] == 8).all()  # the padding is stored as 0 (code 8)


@pytest.mark.parametrize("D", [256, 200])
def test_nf4_every_value_takes_its_nearest_code(rng, D):
    w = weights(rng, D=D)
    q = quantize_nf4(w)
    G, n = 64, math.ceil(D / 64)
    padded = np.pad(w, ((0, 0), (0, n * G - D))).reshape(96, n, G)  # [F, n, G]
    np.testing.assert_array_equal(q.scales, np.abs(padded).max(axis=-1))  # s = max|group| (bitsandbytes' absmax)
    codes = quantize._unpack(q.data).reshape(96, n, G)  # [F, n, G]
    normalized = padded / np.where(q.scales > 0, q.scales, 1)[:, :, None]  # [F, n, G] in [-1, 1]
    distance = np.abs(normalized[..., None] - np.array(NF4, np.float32))  # [F, n, G, 16]
    chosen = np.take_along_axis(distance, codes[..., None].astype(np.int64), axis=-1)[..., 0]
    assert (chosen <= distance.min(axis=-1) + 1e-6).all()  # the nearest code (ties within float32 rounding)
    assert (codes[normalized == 1.0] == 15).all() and (codes[normalized == 0.0] == 7).all()
    np.testing.assert_array_equal(dequantize(q), np.array(NF4, np.float32)[codes].reshape(96, -1)[:, :D]
                                  * np.repeat(q.scales, G, axis=1)[:, :D])  # fmt: skip


def test_a_value_on_a_midpoint_takes_the_lower_code():
    """bitsandbytes' rule: compare with the float32 midpoints, ``x > mid`` goes up (torch.bucketize, the CUDA tree)."""
    code_book = np.array(NF4, np.float32)
    midpoints = (code_book[:-1] + code_book[1:]) / 2
    w = np.array([[1.0, midpoints[7], np.nextafter(midpoints[7], 1), -1.0]], np.float32)  # max|w| = 1
    codes = quantize._unpack(quantize_nf4(w, group_size=4).data)
    np.testing.assert_array_equal(codes, [[15, 7, 8, 0]])


def test_packing_order():
    """Two 4-bit codes per byte: the first of each pair (even input index) in the high 4 bits, as bitsandbytes."""
    q = quantize_int4(np.array([[7.0, -7.0, 0.0, 1.0]], np.float32), group_size=4)  # s = 1: q = 7, -7, 0, 1
    np.testing.assert_array_equal(q.data, [[0xF1, 0x89]])  # codes q + 8 = 15, 1 | 8, 9
    q = quantize_nf4(np.array([[1.0, -1.0, 0.0, 0.08]], np.float32), group_size=4)  # codes 15, 0 | 7, 8
    np.testing.assert_array_equal(q.data, [[0xF0, 0x78]])
    np.testing.assert_array_equal(quantize._unpack(q.data), [[15, 0, 7, 8]])


@pytest.mark.parametrize("fmt", quantize.FORMATS)
def test_dequantize_to_float16_is_float32_cast(rng, fmt):
    q = quantize.quantize(weights(rng), fmt)
    out = dequantize(q, np.float16)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, dequantize(q).astype(np.float16))


@pytest.mark.parametrize("fmt", quantize.FORMATS)
def test_nbytes_and_the_memory_plans_arithmetic(rng, fmt):
    q = quantize.quantize(weights(rng, D=200), fmt)
    assert q.nbytes == quantized_nbytes((96, 200), fmt)
    per_weight = {"int8": 1 + 4 / 4096, "int4": 0.5 + 4 / 64, "nf4": 0.5 + 4 / 64}[fmt]  # bytes per weight, 7B rows
    assert quantized_nbytes((11008, 4096), fmt) == 11008 * 4096 * per_weight


@pytest.mark.parametrize("fmt", quantize.FORMATS)
def test_linear_dequantizes_where_it_multiplies(rng, fmt):
    q = quantize.quantize(weights(rng, F=96, D=200), fmt)
    x = rng.standard_normal((2, 3, 200)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    np.testing.assert_array_equal(layers.linear(x, q, bias), layers.linear(x, dequantize(q), bias))


@pytest.mark.parametrize("fmt", quantize.FORMATS)
def test_rows_dequantize_on_their_own(rng, fmt):
    """What a blockwise path relies on (the module's docstring): a slice of rows is a QuantizedWeight of its own."""
    q = quantize.quantize(weights(rng, D=200), fmt)
    rows = dataclasses.replace(q, data=q.data[10:30], scales=q.scales[10:30], shape=(20, 200))
    np.testing.assert_array_equal(dequantize(rows), dequantize(q)[10:30])


def test_inconsistent_quantized_weights_are_refused(rng):
    good = quantize_int4(weights(rng))  # data [96, 128], scales [96, 4]
    cases = [
        (dict(format="int3"), "format must be one of"),
        (dict(shape=(96,)), "shape must be two positive integers"),
        (dict(data=good.data[:, :100]), r"data must be uint8 \(96, 128\), got uint8 \(96, 100\)"),
        (dict(data=good.data.astype(np.int8)), "data must be uint8"),
        (dict(scales=good.scales[:, :3]), r"scales must be float32 \(96, 4\), got float32 \(96, 3\)"),
        (dict(scales=good.scales.astype(np.float16)), "scales must be float32"),
        (dict(group_size=63), "positive even integer"),
        (dict(shape=(96, 300)), r"data must be uint8 \(96, 160\)"),
        (dict(format="int8"), "group_size must be D = 256"),
    ]
    fields = dict(data=good.data, scales=good.scales, format="int4", group_size=64, shape=(96, 256))
    for change, message in cases:
        with pytest.raises(ValueError, match=r"quantized weight \(format .*" + message):
            QuantizedWeight(**{**fields, **change})
    with pytest.raises(ValueError, match="quantization format must be one of .*'int2'"):
        quantize.quantize(weights(rng), "int2")


def test_the_model_math_is_namespace_agnostic():
    """Rule 2: the module computes with ``xp = xp_of(...)``, never NumPy by name (it runs on CuPy arrays too)."""
    source = inspect.getsource(quantize)
    assert "import numpy" not in source and "np." not in source


# ---------------------------------------------------------------------------------------------
# The references, when installed (test-only; minillava never imports them)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_nf4_is_bitsandbytes_quantize_4bit(rng, dtype):
    """Codes, absmax and dequantized values equal bitsandbytes' quantize_4bit / dequantize_4bit(nf4, blocksize 64)
    exactly, from float32 and from float16 weights (G divides D: bitsandbytes' flat blocks are our row groups)."""
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    code = functional.get_4bit_type("nf4", device="cpu")
    assert code.tolist() == list(np.array(NF4, np.float32))
    w = weights(rng, F=192, D=512, dtype=dtype)
    packed, state = functional.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4")
    q = quantize_nf4(w)
    np.testing.assert_array_equal(packed.numpy().reshape(q.data.shape), q.data)
    np.testing.assert_array_equal(state.absmax.numpy().reshape(q.scales.shape), q.scales)
    reference = functional.dequantize_4bit(packed, state)  # in the weight's dtype
    np.testing.assert_array_equal(reference.numpy(), dequantize(q, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_int8_is_bitsandbytes_int8_vectorwise_quant(rng, dtype):
    """LLM.int8()'s row-wise weights: the same integers (bitsandbytes keeps max|row|, we keep it / 127)."""
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    w = weights(rng, F=192, D=512, dtype=dtype)
    codes, row_max, _ = functional.int8_vectorwise_quant(torch.from_numpy(w.copy()))
    q = quantize_int8(w)
    np.testing.assert_array_equal(codes.numpy(), q.data)
    np.testing.assert_array_equal(row_max.numpy() / np.float32(127), q.scales[:, 0])
    # bitsandbytes dequantizes as (q * max) / 127, we as q * (max / 127): the same up to float32 rounding.
    reference = functional.int8_vectorwise_dequant(codes, row_max).numpy()
    np.testing.assert_allclose(dequantize(q), reference, rtol=2e-7, atol=0)


def test_torchao_int8_weight_only_reads_the_same(rng):
    """torchao's Int8WeightOnlyConfig stores the same thing (int8 [F, D], one float32 scale per row) and dequantizes
    it as we do, exactly; it picks its scale differently (max|row| / 127.5 and integers in [-128, 127])."""
    torch = pytest.importorskip("torch")
    torchao = pytest.importorskip("torchao.quantization")
    w = weights(rng, F=192, D=512)
    module = torch.nn.Linear(512, 192, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w))
    torchao.quantize_(module, torchao.Int8WeightOnlyConfig())
    theirs = module.weight
    q = QuantizedWeight(theirs.qdata.numpy(), theirs.scale.numpy(), "int8", 512, (192, 512))
    np.testing.assert_array_equal(dequantize(q), theirs.dequantize().numpy())
    eps = np.finfo(np.float32).eps  # their smallest scale (the all-zero row)
    np.testing.assert_allclose(theirs.scale.numpy()[:, 0], np.maximum(np.abs(w).max(axis=1) / 127.5, eps), rtol=1e-7)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    np.testing.assert_allclose(layers.linear(x, q), module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
