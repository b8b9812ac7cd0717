"""The KV cache (minillava.model.kv_cache): a prefill then one-token decode steps give the logits of one full
forward, and Transformers' logits position by position."""

import numpy as np
import pytest

import minillava

from .helpers import LOGITS_TOL, hf_logits, make_inputs, rel_err


@pytest.mark.parametrize(
    "layout", [[[4, "img", 6]], [[3, "img", 5, "img", 7], [4, "img", 9]]], ids=["single", "left-padded-batch"]
)
def test_cached_steps_equal_full_forward(tiny_checkpoint, hf_model, device, layout):
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    model, hf = minillava.load_model(folder, device=device), hf_model(folder)
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(4), layout)
    full = model.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    ref = hf_logits(hf, input_ids, attention_mask, pixel_values)

    B, T = input_ids.shape
    n_steps = 6
    prefill = T - n_steps  # every image token lies in the prefill
    cache = model.new_cache(B, max_len=T + 2)
    logits = [
        model.forward(
            input_ids[:, :prefill], pixel_values=pixel_values, attention_mask=attention_mask[:, :prefill], cache=cache
        )
    ]
    assert cache.length == prefill
    for t in range(prefill, T):
        logits.append(model.forward(input_ids[:, t : t + 1], attention_mask=attention_mask[:, : t + 1], cache=cache))
    stepped = np.concatenate(logits, axis=1)
    assert cache.length == T
    real = attention_mask.astype(bool)
    assert rel_err(stepped[real], full[real]) <= LOGITS_TOL
    assert rel_err(stepped[real], ref[real]) <= LOGITS_TOL
    # The decode steps alone, position by position.
    for t in range(prefill, T):
        rows = real[:, t]
        assert rel_err(stepped[rows, t], ref[rows, t]) <= LOGITS_TOL


def test_update_writes_after_the_filled_positions_and_returns_views():
    from minillava.model.kv_cache import KVCache

    cache = KVCache(np, n_layers=2, batch=1, n_kv_heads=1, max_len=4, head_dim=2, dtype=np.float32)
    assert (cache.batch, cache.max_len, cache.length) == (1, 4, 0)
    for layer in (0, 1):  # a prefill of 3 positions: every layer writes at 0..2, then the length moves on
        keys, values = cache.update(layer, np.ones((1, 1, 3, 2), np.float32), np.full((1, 1, 3, 2), 2, np.float32))
        assert keys.shape == values.shape == (1, 1, 3, 2) and cache.length == 0
        assert np.shares_memory(keys, cache.keys[layer]) and np.shares_memory(values, cache.values[layer])
    cache.advance(3)
    keys, values = cache.update(0, np.full((1, 1, 1, 2), 3, np.float32), np.full((1, 1, 1, 2), 4, np.float32))
    np.testing.assert_array_equal(keys[0, 0, :, 0], [1, 1, 1, 3])
    np.testing.assert_array_equal(values[0, 0, :, 0], [2, 2, 2, 4])
    with pytest.raises(ValueError, match="KV cache is full: 5 positions needed, max_len is 4"):
        cache.update(1, np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 2), np.float32))
