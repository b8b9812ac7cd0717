"""Tiled attention with an online softmax (minillava.model.attention.tiled_attention, attn_implementation="tiled")
against the plain attention it must equal: float32 outputs within 1e-6 of the plain one's largest magnitude, over
block sizes that divide the lengths and block sizes that do not, with causal and padding masks, grouped-query heads,
the KV cache and the vision tower's bidirectional attention; then the whole model: logits within 1e-5 (the modules'
tolerance: the layers amplify the rounding) of the eager model's, greedy tokens equal, and the parity with
Transformers within the usual tolerances (helpers.py)."""

import functools
import tracemalloc

import numpy as np
import pytest
from PIL import Image

import minillava
from minillava import parity
from minillava.model import attention
from minillava.model.kv_cache import KVCache

from .helpers import BATCH, LOGITS_TOL, greedy_tokens, logits_in_steps, make_inputs, rel_err, rel_err_to_transformers

TILED_TOL = 1e-6  # tiled vs plain, float32: the same sums in another order
# The whole model, tiled against eager: each attention call differs by float32 rounding alone (TILED_TOL), which
# the layers after it amplify (measured here up to 9.4e-7 over 8 seeds x 3 block sizes): the modules' tolerance,
# so that another BLAS (or a GPU) does not fail a test that checks nothing about the function itself.
MODEL_TOL = 1e-5
BLOCK_SIZES = [1, 3, 7, 64, 1000]  # 1, sizes that do not divide the lengths (3, 7), one that does (64), one > T


def qkv(rng, B, H, KV, Tq, Tk, hd=16, dtype=np.float32):
    q = rng.standard_normal((B, H, Tq, hd)).astype(dtype)  # [B, H, Tq, hd]
    k = rng.standard_normal((B, KV, Tk, hd)).astype(dtype)  # [B, KV, Tk, hd]
    v = rng.standard_normal((B, KV, Tk, hd)).astype(dtype)  # [B, KV, Tk, hd]
    return q, k, v


def assert_tiled_equals_plain(q, k, v, mask, block_size, tol=TILED_TOL):
    plain = attention.scaled_dot_product_attention(q, k, v, mask)
    tiled = attention.tiled_attention(q, k, v, mask, block_size=block_size)
    assert tiled.shape == plain.shape and tiled.dtype == plain.dtype
    assert np.isfinite(tiled).all()
    assert rel_err(tiled, plain) <= tol, (block_size, rel_err(tiled, plain))


# ---------------------------------------------------------------------------------------------
# The function against the plain one
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["H/KV=1", "H/KV=2", "H/KV=4"])
def test_causal_left_padded_batch_with_gqa(rng, n_kv_heads, block_size):
    B, H, T = 3, 4, 20
    q, k, v = qkv(rng, B, H, n_kv_heads, T, T)
    attention_mask = np.ones((B, T), dtype=np.int64)
    attention_mask[1, :5] = 0  # row 1 left-padded by five: its first five queries see no key at all
    attention_mask[2, :13] = 0  # row 2 by thirteen: whole key blocks of padding for the small block sizes
    mask = attention.causal_mask(attention_mask, T, 0)  # [B, 1, T, T]
    assert_tiled_equals_plain(q, k, v, mask, block_size)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_bidirectional_vision_attention(rng, block_size):
    """CLIP and SigLIP: no mask, every patch attends to every patch (here 17 tokens: a CLS and 4 x 4 patches)."""
    q, k, v = qkv(rng, 2, 4, 4, 17, 17)
    assert_tiled_equals_plain(q, k, v, None, block_size)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("n_kv_heads", [4, 1], ids=["H/KV=1", "H/KV=4"])
def test_with_the_kv_cache(rng, n_kv_heads, block_size):
    """A prefill, a one-token step and a several-token step: the keys are the cache's filled part (views)."""
    B, H, hd, max_len = 2, 4, 16, 40
    attention_mask = np.ones((B, max_len), dtype=np.int64)
    attention_mask[0, :6] = 0  # row 0 left-padded in its prompt
    cache = KVCache(np, n_layers=1, batch=B, n_kv_heads=n_kv_heads, max_len=max_len, head_dim=hd, dtype=np.float32)
    for n_new in (23, 1, 5, 1):  # prefill, one token, several tokens (speculative-style), one token
        q, k_new, v_new = qkv(rng, B, H, n_kv_heads, n_new, n_new, hd)
        k, v = cache.update(0, k_new, v_new)  # [B, KV, cache.length + n_new, hd]
        assert k.shape[2] == cache.length + n_new < max_len
        mask = attention.causal_mask(attention_mask[:, : cache.length + n_new], n_new, cache.length)
        assert_tiled_equals_plain(q, k, v, mask, block_size)
        cache.advance(n_new)


def test_fully_masked_rows_give_what_the_plain_one_gives(rng):
    """A padding query sees no key: the plain softmax is then uniform over all the keys (finite, not NaN), and so
    is the tiled one, whichever block first sees a real key for the other rows."""
    q, k, v = qkv(rng, 1, 2, 2, 4, 9)
    mask = np.ones((1, 1, 4, 9), dtype=bool)
    mask[0, 0, 1] = False  # query 1: nothing
    mask[0, 0, 2, :7] = False  # query 2: only the last two keys, in the last block of 3
    for block_size in (1, 3, 4, 100):
        tiled = attention.tiled_attention(q, k, v, mask, block_size=block_size)
        assert np.isfinite(tiled).all()
        np.testing.assert_allclose(tiled[0, :, 1], v[0, :].mean(axis=1), rtol=1e-6, atol=1e-6)  # uniform
        assert_tiled_equals_plain(q, k, v, mask, block_size)
    everything_masked = np.zeros((1, 1, 4, 9), dtype=bool)
    assert_tiled_equals_plain(q, k, v, everything_masked, 2)


def test_skips_the_key_blocks_a_causal_mask_hides(rng):
    """Above the diagonal a key block is hidden from every query of a query block: it is skipped, never read. NaN
    keys and values there show it (0 * NaN is NaN: one read would spoil the row), while the rows that see them
    must still equal the plain attention on finite keys. A block holding a padding query (no key visible) is not
    skipped: its uniform row reads every key, NaN included."""
    B, H, T, block = 1, 2, 12, 4
    q, k, v = qkv(rng, B, H, H, T, T)
    mask = attention.causal_mask(np.ones((B, T), np.int64), T, 0)  # [B, 1, T, T]
    expected = attention.scaled_dot_product_attention(q, k, v, mask)
    k_nan, v_nan = k.copy(), v.copy()
    k_nan[..., 8:, :] = np.nan  # key block 2: hidden from query blocks 0 and 1 (queries 0-7)
    v_nan[..., 8:, :] = np.nan
    tiled = attention.tiled_attention(q, k_nan, v_nan, mask, block_size=block)
    assert np.isfinite(tiled[..., :8, :]).all()  # the hidden block was skipped for queries 0-7
    assert rel_err(tiled[..., :8, :], expected[..., :8, :]) <= TILED_TOL
    assert np.isnan(tiled[..., 8:, :]).all()  # queries 8-11 see keys 8-11: read, as they must be
    padded = np.ones((B, T), np.int64)
    padded[0, :2] = 0  # queries 0 and 1 see nothing: block 0 has a padding query and reads every block
    tiled = attention.tiled_attention(q, k_nan, v_nan, attention.causal_mask(padded, T, 0), block_size=block)
    assert np.isnan(tiled[..., :4, :]).all()  # query block 0 read key block 2 (0 * NaN spoils rows 2 and 3 too)
    assert np.isfinite(tiled[..., 4:8, :]).all()  # query block 1 (no padding query) still skipped it


@pytest.mark.parametrize("block_size", [3, 64])
def test_float16_inputs_upcast_like_the_plain_path(rng, block_size):
    """float16 q, k, v: scores and the softmax's statistics in float32, a float16 result close to the plain one's
    (both round the probabilities to float16 before they weigh the values; in different places)."""
    B, T = 2, 30
    q, k, v = qkv(rng, B, 4, 2, T, T, dtype=np.float16)
    attention_mask = np.ones((B, T), dtype=np.int64)
    attention_mask[1, :4] = 0
    mask = attention.causal_mask(attention_mask, T, 0)
    assert_tiled_equals_plain(q, k, v, mask, block_size, tol=2e-3)
    plain32 = attention.scaled_dot_product_attention(*(x.astype(np.float32) for x in (q, k, v)), mask)
    tiled = attention.tiled_attention(q, k, v, mask, block_size=block_size)
    assert rel_err(tiled, plain32) <= 2e-3  # no worse than float16 rounding of the output


def test_never_holds_the_score_matrix(rng):
    """Peak memory (tracemalloc sees NumPy's allocations) stays far below one [B, H, Tq, Tk] float32 score
    matrix, which the plain path allocates (once: its scale, mask and softmax then work in place)."""
    B, H, T, hd = 1, 8, 512, 32
    q, k, v = qkv(rng, B, H, H, T, T, hd)
    mask = attention.causal_mask(np.ones((B, T), dtype=np.int64), T, 0)
    scores_bytes = B * H * T * T * 4  # 8 MiB
    peaks = {}
    for name, fn in [("plain", attention.scaled_dot_product_attention), ("tiled", attention.tiled_attention)]:
        tracemalloc.start()
        fn(q, k, v, mask)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["plain"] >= scores_bytes
    assert peaks["tiled"] <= scores_bytes / 2, peaks  # the [B, H, Tq, hd] output (0.5 MiB) and a few blocks


# ---------------------------------------------------------------------------------------------
# The whole model with attn_implementation="tiled"
# ---------------------------------------------------------------------------------------------


def test_attn_implementation_selects_the_function(tiny_checkpoint):
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    default = minillava.load_model(folder).attention  # eager: the plain function, by blocks of queries on the CPU
    assert (
        default.func is attention.by_query_blocks
        and default.keywords["attention"] is attention.scaled_dot_product_attention
    )
    tiled = minillava.load_model(folder, attn_implementation="tiled")
    assert tiled.attn_implementation == "tiled" and tiled.attention is attention.tiled_attention
    with pytest.raises(ValueError, match=r"attn_implementation must be one of \('eager', 'tiled'\), got 'flash'"):
        minillava.model.llava.LlavaModel(tiled.config, tiled.params, attn_implementation="flash")


@pytest.fixture(scope="module", params=["base", "interleave"], ids=["llava-1.5", "interleave"])
def eager_and_tiled(request, tiny_checkpoint, device):
    """(eager model, tiled model, folder) on a tiny checkpoint of each family (CLIP + Llama, SigLIP + Qwen2)."""
    folder = tiny_checkpoint(request.param, "fresh", "float32", False)
    eager = minillava.load_model(folder, device=device)
    tiled = minillava.load_model(folder, device=device, attn_implementation="tiled")
    return eager, tiled, folder


@pytest.mark.parametrize("block_size", [3, 7, attention.DEFAULT_BLOCK_SIZE])
def test_logits_equal_the_eager_ones(eager_and_tiled, block_size):
    eager, tiled, _ = eager_and_tiled
    tiled.attention = functools.partial(attention.tiled_attention, block_size=block_size)
    input_ids, attention_mask, pixel_values = make_inputs(eager.config, np.random.default_rng(0), BATCH)
    assert input_ids.shape[1] % 3 and input_ids.shape[1] % 7  # the blocks do not divide the prompt
    ref = eager.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    ours = tiled.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert rel_err(ours, ref) <= MODEL_TOL  # padding positions included: the same uniform rows there
    vision = (eager.encode_image(pixel_values), tiled.encode_image(pixel_values))  # the bidirectional tower
    assert (
        rel_err(minillava.model.backend.to_numpy(vision[1]), minillava.model.backend.to_numpy(vision[0])) <= MODEL_TOL
    )


def test_cached_steps_equal_the_eager_ones(eager_and_tiled):
    """Prefill, then a several-token step and one-token steps, through the model's KV cache."""
    eager, tiled, _ = eager_and_tiled
    tiled.attention = functools.partial(attention.tiled_attention, block_size=5)
    layout = [[3, "img", 5, "img", 8], [4, "img", 11]]  # the last 6 positions are text: steps after the images
    input_ids, attention_mask, pixel_values = make_inputs(eager.config, np.random.default_rng(1), layout)
    logits = {name: logits_in_steps(model, input_ids, attention_mask, pixel_values)
              for name, model in (("eager", eager), ("tiled", tiled))}  # fmt: skip
    assert rel_err(logits["tiled"], logits["eager"]) <= MODEL_TOL


def test_greedy_generation_equals_the_eager_one_token_for_token(eager_and_tiled):
    eager, tiled, _ = eager_and_tiled
    tiled.attention = functools.partial(attention.tiled_attention, block_size=7)
    np.testing.assert_array_equal(greedy_tokens(tiled, seed=2), greedy_tokens(eager, seed=2))


def test_logits_still_match_transformers(eager_and_tiled, hf_model):
    eager, tiled, folder = eager_and_tiled
    tiled.attention = attention.tiled_attention
    assert rel_err_to_transformers(tiled, hf_model(folder), seed=3) <= LOGITS_TOL


def test_parity_report_passes_with_tiled_attention(tiny_checkpoint, device):
    """`minillava parity`'s comparison, module by module, with the default tolerances (1e-5, lm_head 1e-4), on the
    chat checkpoint (float16 sharded files) and a left-padded batch of two prompts, one with two images."""
    folder = tiny_checkpoint("chat", "hub", "float16", True)
    model = minillava.load_model(folder, device=device, attn_implementation="tiled")
    model.attention = functools.partial(attention.tiled_attention, block_size=7)
    processor = minillava.load_processor(folder)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((40, 60), (50, 30), (32, 32))]
    prompts = ["<image>\n<image>\nCompare the two pictures.", "<image>\nWhat is shown?"]
    inputs = parity.build_inputs(processor, [Image.fromarray(a) for a in images], prompts, raw=True)
    assert inputs["attention_mask"].min() == 0  # a padded batch
    reference, error = parity.transformers_trace(parity.load_transformers(folder), model.config, inputs)
    assert error is None
    ours, error = parity.minillava_trace(model, inputs)
    assert error is None
    report = parity.compare_traces(reference, ours)
    assert report.passed, parity.format_report(report)
