"""Attention a block of queries at a time (minillava.model.attention.by_query_blocks, the model's eager attention on
the CPU) against the plain attention it must equal: float32 outputs within 1e-6 of the plain one's largest magnitude
(the keys it leaves out have probability exactly 0: only the softmax's sums run in another order), over block sizes
that divide the lengths and block sizes that do not, with causal and padding masks, grouped-query heads and the KV
cache; which keys each block is given; then the whole model: logits within 1e-5 of the whole-matrix model's, greedy
tokens equal, and the parity with Transformers (helpers.py)."""

import functools

import numpy as np
import pytest
import torch

import minillava
from minillava.model import attention, fused

from .helpers import BATCH, LOGITS_TOL, greedy_tokens, logits_in_steps, make_inputs, rel_err, rel_err_to_transformers
from .test_tiled_attention import MODEL_TOL, TILED_TOL, qkv

BLOCK_SIZES = [1, 3, 7, 64, 1000]  # 1, sizes that do not divide the lengths (3, 7), one that does (64), one > T


def assert_blocks_equal_plain(q, k, v, mask, block_size, tol=TILED_TOL):
    plain = attention.scaled_dot_product_attention(q, k, v, mask)
    ours = attention.by_query_blocks(q, k, v, mask, block_size=block_size)
    assert ours.shape == plain.shape and ours.dtype == plain.dtype
    assert rel_err(ours, plain) <= tol, (block_size, rel_err(ours, plain))


def spy():
    """An attention function that records the shapes it is called with, then computes the plain attention."""
    calls = []

    def attend(q, k, v, mask=None):
        calls.append((q.shape[2], k.shape[2]))  # (queries, keys) of this call
        return attention.scaled_dot_product_attention(q, k, v, mask)

    return attend, calls


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["H/KV=1", "H/KV=2", "H/KV=4"])
def test_causal_left_padded_batch_with_gqa(rng, n_kv_heads, block_size):
    B, H, T = 3, 4, 67
    q, k, v = qkv(rng, B, H, n_kv_heads, T, T)
    attention_mask = np.ones((B, T), dtype=np.int64)
    attention_mask[1, :9] = 0  # left padding: queries 0..8 of row 1 see no key at all
    attention_mask[2, :40] = 0
    assert_blocks_equal_plain(q, k, v, attention.causal_mask(attention_mask, T, 0), block_size)


@pytest.mark.parametrize("block_size", [1, 3, 7, 64])
@pytest.mark.parametrize("n_kv_heads", [4, 1], ids=["H/KV=1", "H/KV=4"])
def test_with_the_kv_cache(rng, n_kv_heads, block_size):
    """A prefill of 45 positions after 22 cached ones (query i at position 22 + i sees keys 0 .. 22 + i)."""
    B, H, start, Tq = 2, 4, 22, 45
    q, k, v = qkv(rng, B, H, n_kv_heads, Tq, start + Tq)
    attention_mask = np.ones((B, start + Tq), dtype=np.int64)
    attention_mask[0, :5] = 0
    assert_blocks_equal_plain(q, k, v, attention.causal_mask(attention_mask, Tq, start), block_size)


def test_each_block_gets_the_keys_up_to_its_last_position(rng):
    """A causal prefill of 10 positions after 4 cached ones, blocks of 4 queries: keys 0..7, 0..11, 0..13. A block
    with a query that sees no key (left padding) keeps every key: the plain attention makes that row uniform over all
    of them, and the result equals the plain one's there too."""
    attend, calls = spy()
    q, k, v = qkv(rng, 1, 2, 2, 10, 14)
    mask = attention.causal_mask(np.ones((1, 14), dtype=np.int64), 10, 4)
    attention.by_query_blocks(q, k, v, mask, attention=attend, block_size=4)
    assert calls == [(4, 8), (4, 12), (2, 14)]

    attend, calls = spy()
    q, k, v = qkv(rng, 2, 2, 2, 10, 10)
    attention_mask = np.ones((2, 10), dtype=np.int64)
    attention_mask[1, :5] = 0  # row 1: queries 0..4 see nothing
    mask = attention.causal_mask(attention_mask, 10, 0)
    ours = attention.by_query_blocks(q, k, v, mask, attention=attend, block_size=4)
    assert calls == [(4, 10), (4, 10), (2, 10)]  # the first two blocks hold padding queries of row 1
    plain = attention.scaled_dot_product_attention(q, k, v, mask)
    assert rel_err(ours[1, :, :5], plain[1, :, :5]) <= TILED_TOL  # the padding rows: uniform over all 10 keys


@pytest.mark.parametrize("mask", ["none", "short"])
def test_one_call_when_nothing_can_be_skipped(rng, mask):
    """No mask (the vision towers: every patch sees every patch), or no more queries than a block (a decode step):
    the attention function once, with exactly the arguments given."""
    attend, calls = spy()
    q, k, v = qkv(rng, 1, 2, 2, 5, 9)
    m = None if mask == "none" else attention.causal_mask(np.ones((1, 9), dtype=np.int64), 5, 4)
    out = attention.by_query_blocks(q, k, v, m, attention=attend, block_size=5 if mask == "short" else 2)
    assert calls == [(5, 9)]
    np.testing.assert_array_equal(out, attention.scaled_dot_product_attention(q, k, v, m))


def test_at_llava_widths_against_torch(rng):
    """A 600-position causal prefill with 32 heads of 128 (llava-1.5-7b's attention) in blocks of QUERY_BLOCK: within
    1e-6 of the plain attention and of torch's scaled_dot_product_attention (is_causal), which skips the same keys."""
    q, k, v = qkv(rng, 1, 32, 32, 600, 600, hd=128)
    mask = attention.causal_mask(np.ones((1, 600), dtype=np.int64), 600, 0)
    ours = attention.by_query_blocks(q, k, v, mask)
    assert rel_err(ours, attention.scaled_dot_product_attention(q, k, v, mask)) <= TILED_TOL
    ref = torch.nn.functional.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), is_causal=True)
    assert rel_err(ours, ref.numpy()) <= TILED_TOL


def test_float16_inputs(rng):
    q, k, v = qkv(rng, 2, 4, 2, 37, 37, dtype=np.float16)
    mask = attention.causal_mask(np.ones((2, 37), dtype=np.int64), 37, 0)
    plain = attention.scaled_dot_product_attention(q, k, v, mask)
    ours = attention.by_query_blocks(q, k, v, mask, block_size=8)
    assert ours.dtype == np.float16 and rel_err(ours, plain) <= 2**-10  # float16 rounding of the probabilities


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


def test_the_model_attends_by_query_blocks_on_the_cpu(tiny_checkpoint, device):
    """On the CPU the eager attention (plain, or fused with fused_kernels) is called by by_query_blocks; on a GPU
    it is called as it is; "tiled" keeps its own loop."""
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    for fused_kernels, base in (
        (False, attention.scaled_dot_product_attention),
        (True, fused.scaled_dot_product_attention),
    ):
        model = minillava.load_model(folder, device=device, fused_kernels=fused_kernels)
        if device == "cpu":
            assert model.attention.func is attention.by_query_blocks and model.attention.keywords == {"attention": base}
        else:
            assert model.attention is base
    assert (
        minillava.load_model(folder, device=device, attn_implementation="tiled").attention is attention.tiled_attention
    )


@pytest.fixture(scope="module", params=["base", "interleave"], ids=["llava-1.5", "interleave"])
def whole_and_blocks(request, tiny_checkpoint):
    """(a model attending with the whole matrix, one by blocks of 5 queries, folder) for each family. The tiny
    checkpoints' prompts are shorter than QUERY_BLOCK, so the blocks are made small to be exercised."""
    folder = tiny_checkpoint(request.param, "fresh", "float32", False)
    whole = minillava.load_model(folder)
    whole.attention = attention.scaled_dot_product_attention
    blocks = minillava.load_model(folder)
    blocks.attention = functools.partial(attention.by_query_blocks, block_size=5)
    return whole, blocks, folder


def test_logits_equal_the_whole_matrix_ones(whole_and_blocks):
    whole, blocks, _ = whole_and_blocks
    input_ids, attention_mask, pixel_values = make_inputs(whole.config, np.random.default_rng(0), BATCH)
    assert input_ids.shape[1] > 5 and input_ids.shape[1] % 5
    ref = whole.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    ours = blocks.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert rel_err(ours, ref) <= MODEL_TOL  # padding positions included: the same uniform rows there


def test_cached_steps_and_greedy_generation(whole_and_blocks):
    whole, blocks, _ = whole_and_blocks
    layout = [[3, "img", 5, "img", 8], [4, "img", 11]]  # the last 6 positions are text: steps after the images
    input_ids, attention_mask, pixel_values = make_inputs(whole.config, np.random.default_rng(1), layout)
    steps = [logits_in_steps(model, input_ids, attention_mask, pixel_values) for model in (whole, blocks)]
    assert rel_err(steps[1], steps[0]) <= MODEL_TOL
    np.testing.assert_array_equal(greedy_tokens(blocks, seed=2), greedy_tokens(whole, seed=2))


def test_logits_still_match_transformers(whole_and_blocks, hf_model):
    _, blocks, folder = whole_and_blocks
    assert rel_err_to_transformers(blocks, hf_model(folder), seed=3) <= LOGITS_TOL
