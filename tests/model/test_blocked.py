"""Weights at rest multiplied a block of rows at a time (minillava.model.blocked, load_model(blocked_matmul=True))
against the plain path it must equal (layers.linear: the whole weight cast, then one product): float32 outputs
within 1e-6 of the plain ones' largest magnitude, for float16 weights and every quantized format, on one thread
and several, block sizes that divide the rows and that do not; then the whole model: logits and greedy tokens."""

import numpy as np
import pytest

import minillava
from minillava.model import blocked, layers
from minillava.model.blocked import BlockedWeight, linear_blocked, thread_pool
from minillava.model.quantize import quantize

from .helpers import BATCH, make_inputs, rel_err

TOL = 1e-6  # the same products, summed in blocks: float32 rounding


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((203, 96), dtype=np.float32)  # 203 rows: no block size below divides them all
    return {
        "float16": w.astype(np.float16),
        "int8": quantize(w, "int8"),
        "int4": quantize(w, "int4"),
        "nf4": quantize(w, "nf4"),
    }


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("block_rows", [None, 1, 7, 64, 1000])
@pytest.mark.parametrize("fmt", ["float16", "int8", "int4", "nf4"])
def test_blocks_equal_the_plain_product(weights, fmt, block_rows, threads):
    rng = np.random.default_rng(1)
    weight, bias = weights[fmt], rng.standard_normal(203, dtype=np.float32)
    pool = thread_pool(threads)
    for shape in ((1, 1, 96), (2, 1, 96), (3, 5, 96)):  # a decode step, a batch of them, a few positions
        x = rng.standard_normal(shape, dtype=np.float32)
        plain = layers.linear(x, weight, bias)  # [..., 203]
        ours = linear_blocked(x, BlockedWeight(weight, block_rows, pool), bias)
        assert ours.shape == plain.shape == (*shape[:-1], 203) and ours.dtype == np.float32
        assert rel_err(ours, plain) <= TOL, (fmt, block_rows, threads, shape)
        assert rel_err(layers.linear(x, BlockedWeight(weight, block_rows, pool), bias), plain) <= TOL


def test_many_rows_go_to_the_plain_path(weights, monkeypatch):
    """A prefill (more rows of x than MAX_ROWS_OF_X) takes the plain path: the same numbers exactly."""
    x = np.random.default_rng(2).standard_normal((1, blocked.MAX_ROWS_OF_X + 1, 96), dtype=np.float32)
    wrapped = BlockedWeight(weights["int8"], 7, thread_pool(2))
    calls = []
    monkeypatch.setattr(layers, "linear_blocked", lambda *args: calls.append(args))
    np.testing.assert_array_equal(layers.linear(x, wrapped), layers.linear(x, weights["int8"]))
    assert not calls
    layers.linear(x[:, :1], wrapped)
    assert len(calls) == 1


def test_int8_scales_go_on_the_output(weights):
    """For int8 a block is the integers alone: x qᵀ is computed, then each column times its row's scale."""
    q = weights["int8"]
    rows = blocked.rows_as(q, 10, 20, np.float32)
    np.testing.assert_array_equal(rows, q.data[10:20].astype(np.float32))
    np.testing.assert_array_equal(blocked.rows_as(weights["float16"], 10, 20, np.float32), weights["float16"][10:20])


@pytest.mark.parametrize("quantize_format", [None, "int8", "nf4"])
def test_the_whole_model_is_unchanged(tiny_checkpoint, quantize_format):
    """float16 at rest (and quantized): logits within 1e-5 of the plain path's (the layers amplify the rounding) and
    the same greedy tokens, on a left-padded batch with images."""
    folder = tiny_checkpoint("base", "hub", "float16", True)
    options = dict(low_memory=True, quantize=quantize_format)
    plain = minillava.load_model(folder, **options)
    fast = minillava.load_model(folder, **options, blocked_matmul=True, threads=2)
    layer = fast.params["language_model"]["layers"][0]
    assert isinstance(layer["mlp"]["up_proj"]["weight"], BlockedWeight)
    assert isinstance(fast.params["lm_head"]["weight"], BlockedWeight)
    assert not isinstance(fast.params["vision_tower"]["encoder"]["layers"][0]["mlp"]["fc1"]["weight"], BlockedWeight)
    input_ids, attention_mask, pixel_values = make_inputs(plain.config, np.random.default_rng(3), BATCH)
    cache_plain, cache_fast = plain.new_cache(2, input_ids.shape[1] + 1), fast.new_cache(2, input_ids.shape[1] + 1)
    for model, cache in ((plain, cache_plain), (fast, cache_fast)):
        model.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask, cache=cache)
    step = np.array([[5], [9]])
    mask = np.concatenate([attention_mask, np.ones((2, 1), np.int64)], axis=1)
    a = plain.forward(step, attention_mask=mask, cache=cache_plain)  # one token per row: the blocked path
    b = fast.forward(step, attention_mask=mask, cache=cache_fast)
    assert rel_err(b, a) <= 1e-5
    kwargs = dict(max_new_tokens=24, eos_token_id=None)
    np.testing.assert_array_equal(
        fast.generate(input_ids, pixel_values, attention_mask, **kwargs),
        plain.generate(input_ids, pixel_values, attention_mask, **kwargs),
    )


def test_weights_in_the_compute_dtype_are_left_alone(tiny_checkpoint):
    model = minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False), blocked_matmul=True)
    assert not isinstance(model.params["lm_head"]["weight"], BlockedWeight)  # float32 in RAM: nothing to cast


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"blocked_matmul": "yes"}, "blocked_matmul must be True or False"),
     ({"blocked_matmul": True, "threads": 0}, "threads must be None"),
     ({"threads": 1.5}, "threads must be None"),
     ({"blocked_matmul": True, "device": "cuda"}, "blocked_matmul is for weights at rest on the CPU")],
)  # fmt: skip
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        minillava.load_model(**kwargs)
