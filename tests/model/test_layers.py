"""minillava.model.layers against torch and Transformers: LayerNorm, Llama's RMSNorm, every activation."""

import numpy as np
import pytest
import torch

from minillava.model import layers

from .helpers import close


def test_layer_norm(rng):
    x = rng.standard_normal((2, 5, 32)).astype(np.float32) * 3 + 1
    w, b = rng.standard_normal(32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (32,), torch.from_numpy(w), torch.from_numpy(b), 1e-5)
    close(layers.layer_norm(x, w, b, 1e-5), ref)


def test_rms_norm_matches_llama_rms_norm(rng):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = rng.standard_normal((2, 5, 32)).astype(np.float32) * 3
    module = LlamaRMSNorm(32, eps=1e-6)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(rng.standard_normal(32).astype(np.float32)))
    close(layers.rms_norm(x, module.weight.detach().numpy(), 1e-6), module(torch.from_numpy(x)))


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
def test_activations_match_transformers(rng, name):
    from transformers.activations import ACT2FN

    x = (rng.standard_normal(100_000) * 4).astype(np.float32)
    close(layers.activation(name)(x), ACT2FN[name](torch.from_numpy(x)))


def test_in_place_steps_give_the_formulas_bits(rng):
    """sigmoid, silu, quick_gelu, gelu, RMSNorm and softmax work in place in an array of their own, for speed:
    the same operations as their one-line formulas, so the same bits, and their input left as it was."""
    import math

    x = (rng.standard_normal((3, 7, 64)) * 4).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float32)
    before = x.copy()
    sigmoid = 0.5 + 0.5 * np.tanh(0.5 * x)
    exp = np.exp(x - x.max(axis=-1, keepdims=True))
    formulas = {
        "sigmoid": (layers.sigmoid(x), sigmoid),
        "silu": (layers.silu(x), x * sigmoid),
        "quick_gelu": (layers.quick_gelu(x), x * (0.5 + 0.5 * np.tanh(0.5 * (1.702 * x)))),
        "gelu": (layers.gelu(x), (0.5 * x * layers.erfc(-x / math.sqrt(2.0))).astype(np.float32)),
        "rms_norm": (layers.rms_norm(x, w, 1e-6), w * (x * (1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)))),
        "softmax": (layers.softmax(x), exp / exp.sum(axis=-1, keepdims=True)),
    }
    for name, (ours, formula) in formulas.items():
        assert ours.dtype == np.float32 and np.array_equal(ours, formula), name
    assert np.array_equal(x, before)
    assert layers.softmax(x, out=x) is x and np.array_equal(x, formulas["softmax"][1])  # out=: in x's memory


def test_erfc_within_its_documented_error():
    """Numerical Recipes' erfcc, evaluated in float64: fractional error below 1.2e-7 for every x."""
    import math

    x = np.concatenate([np.linspace(-6, 26, 20_001), np.linspace(-0.01, 0.01, 201)])
    exact = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(layers.erfc(x) - exact) / exact) < 1.2e-7


def test_gelu_in_blocks_is_the_formula_bit_for_bit(rng):
    """A large input (the projector's [576, 4096] at llava-1.5's size) is computed GELU_BLOCK values at a time on the
    CPU: every value is computed alone, so the blocks give the whole-array formula's numbers exactly, and torch's."""
    x = (rng.standard_normal((1, 3 * layers.GELU_BLOCK // 64 + 5, 64)) * 4).astype(np.float32)  # not a whole block
    blocked = layers.gelu(x)
    assert x.size > layers.GELU_BLOCK and blocked.shape == x.shape and blocked.dtype == np.float32
    np.testing.assert_array_equal(blocked.view(np.uint32), layers._gelu(x).view(np.uint32))
    close(blocked, torch.nn.functional.gelu(torch.from_numpy(x)))
