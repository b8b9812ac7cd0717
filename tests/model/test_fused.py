"""The fused elementwise kernels (minillava.model.fused, load_model(fused_kernels=True)) against the plain twins they
must equal: RMSNorm, SwiGLU's gating, RoPE and eager attention's scale-mask-softmax, in float32 and float16, over
leading axes, one-token decode shapes, left-padded rows and fully masked padding queries; then the whole model of
each family: logits, cached steps and greedy tokens against the plain model.

Tolerance: on the CPU none. A fused body runs unfused on NumPy, the same operations in the same order as its
plain twin (the same reductions over the same contiguous rows, a - b where the twin adds -b, a + b where it adds
b + a: all exact in IEEE arithmetic), so the outputs are equal bit for bit, and the tests say so. With
`pytest --device cuda` the same tests run the compiled kernels (cupy.fuse) against the plain CuPy path, which may
round differently: the compiler contracts a * b + c into one fused multiply-add, and a reduction kernel sums in
its own order. There the tests allow a few float32 ulps (1e-6 of the largest magnitude) and one float16 ulp (2^-10)
per operation; for the whole model, 1e-5 of the logits' scale, the modules' tolerance (helpers.py). The GPU
tolerances are reasoned, not yet measured.
"""

import numpy as np
import pytest

import minillava
from minillava.model import attention, backend, fused, layers, rope
from minillava.model.kv_cache import KVCache
from minillava.model.llava import LlavaModel

from .helpers import BATCH, greedy_tokens, logits_in_steps, make_inputs, rel_err

GPU_TOL = {np.float32: 1e-6, np.float16: 2**-10}  # compiled kernels vs the plain CuPy path (see above)
MODEL_TOL = 1e-5  # the whole model on a GPU: the modules' tolerance
DTYPES = [np.float32, np.float16]


def assert_twins_equal(ours, plain, device, dtype):
    """The fused output equals the plain twin's: bit for bit on the CPU, within GPU_TOL[dtype] on a GPU."""
    ours, plain = backend.to_numpy(ours), backend.to_numpy(plain)
    assert ours.shape == plain.shape and ours.dtype == plain.dtype == dtype, (ours.shape, ours.dtype, plain.dtype)
    assert np.isfinite(ours).all()
    if device == "cpu":
        np.testing.assert_array_equal(ours, plain)
    else:
        assert rel_err(ours, plain) <= GPU_TOL[dtype], rel_err(ours, plain)


def on(device, *arrays):
    return [backend.to_device(a, device) for a in arrays]


# ---------------------------------------------------------------------------------------------
# Each fused form against its plain twin
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_dtype", [np.float32, np.float16], ids=["weight-f32", "weight-f16-at-rest"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float16"])
@pytest.mark.parametrize("shape", [(1, 1, 64), (3, 1, 64), (2, 9, 64), (2, 3, 5, 37)],
                         ids=["decode", "decode-batch", "prefill", "leading-axes-odd-D"])  # fmt: skip
def test_rms_norm_equals_layers_rms_norm(rng, device, shape, dtype, weight_dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)  # [N..., D]
    x[..., 0, :] *= 1e-3  # a row of small values: the eps matters there
    weight = rng.standard_normal(shape[-1]).astype(weight_dtype)  # [D]
    x, weight = on(device, x, weight)
    assert_twins_equal(fused.rms_norm(x, weight, 1e-5), layers.rms_norm(x, weight, 1e-5), device, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float16"])
@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 7, 33), (2, 3, 4, 5)], ids=["decode", "prefill", "leading-axes"])
def test_silu_gating_equals_the_plain_form(rng, device, shape, dtype):
    gate = (rng.standard_normal(shape) * 6).astype(dtype)  # [N..., F], up to |x| ~ 25: tanh saturates
    gate.flat[:3] = [0.0, 40.0, -40.0]
    up = rng.standard_normal(shape).astype(dtype)  # [N..., F]
    gate, up = on(device, gate, up)
    ours = fused.gated_activation(gate, up, "silu")
    plain = fused.plain_gated_activation(gate.copy(), up, "silu")
    assert_twins_equal(ours, plain, device, dtype)


def test_the_plain_gating_is_what_the_mlp_computed(rng):
    """PLAIN's gating is llama.mlp's former inline code: activation(hidden_act)(gate), then times up."""
    gate, up = rng.standard_normal((2, 5, 16)).astype(np.float32), rng.standard_normal((2, 5, 16)).astype(np.float32)
    for name in layers.ACTIVATIONS:
        expected = layers.activation(name)(gate) * up
        np.testing.assert_array_equal(fused.plain_gated_activation(gate, up, name), expected)


@pytest.mark.parametrize("hidden_act", sorted(set(layers.ACTIVATIONS) - {"silu"}))
def test_other_activations_take_the_plain_form(rng, hidden_act):
    gate, up = rng.standard_normal((2, 5, 16)).astype(np.float32), rng.standard_normal((2, 5, 16)).astype(np.float32)
    np.testing.assert_array_equal(
        fused.gated_activation(gate, up, hidden_act), fused.plain_gated_activation(gate, up, hidden_act)
    )


def test_an_unknown_activation_is_the_plain_forms_error(rng):
    gate = rng.standard_normal((1, 2, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"unsupported activation 'swish'; minillava knows"):
        fused.gated_activation(gate, gate, "swish")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float16"])
@pytest.mark.parametrize(("B", "H", "T", "start"), [(1, 4, 1, 0), (2, 4, 1, 700), (2, 3, 9, 0), (3, 2, 5, 40)],
                         ids=["first-token", "decode-late", "prefill", "continuation"])  # fmt: skip
def test_apply_rotary_equals_rope_apply_rotary(rng, device, B, H, T, start, dtype):
    hd = 16
    x = rng.standard_normal((B, H, T, hd)).astype(dtype)  # [B, H, T, hd]
    position_ids = start + np.arange(T)[None].repeat(B, axis=0)  # [B, T]
    position_ids[0] = np.maximum(position_ids[0] - 3, 0)  # a left-padded row: positions start later (clipped at 0)
    x, position_ids = on(device, x, position_ids)
    inv_freq = rope.inverse_frequencies(backend.xp_of(x), hd, 10000.0)  # [hd/2]
    cos, sin = rope.rotary_cos_sin(position_ids, inv_freq)  # [B, T, hd] float32
    assert_twins_equal(fused.apply_rotary(x, cos, sin), rope.apply_rotary(x, cos, sin), device, dtype)


def test_apply_rotary_takes_cos_and_sin_as_given(rng):
    """The fused rotation uses both halves of cos and sin as given, as rope.apply_rotary does (no assumption that
    they repeat, as rotary_cos_sin makes them)."""
    x = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    cos, sin = rng.standard_normal((2, 2, 4, 8)).astype(np.float32)  # [B, T, hd] each, the halves differ
    np.testing.assert_array_equal(fused.apply_rotary(x, cos, sin), rope.apply_rotary(x, cos, sin))


def qkv(rng, B, H, KV, Tq, Tk, dtype, hd=16):
    q = (rng.standard_normal((B, H, Tq, hd)) * 2).astype(dtype)  # [B, H, Tq, hd]
    k = (rng.standard_normal((B, KV, Tk, hd)) * 2).astype(dtype)  # [B, KV, Tk, hd]
    v = rng.standard_normal((B, KV, Tk, hd)).astype(dtype)  # [B, KV, Tk, hd]
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float16"])
@pytest.mark.parametrize("n_kv_heads", [4, 1], ids=["H/KV=1", "H/KV=4"])
def test_attention_equals_the_plain_one_on_a_left_padded_prefill(rng, device, n_kv_heads, dtype):
    """Causal, rows left-padded by 0, 3 and 6: padding queries see no key (a fully masked row: uniform)."""
    B, H, T = 3, 4, 11
    q, k, v = qkv(rng, B, H, n_kv_heads, T, T, dtype)
    attention_mask = np.ones((B, T), dtype=np.int64)
    attention_mask[1, :3] = 0
    attention_mask[2, :6] = 0
    q, k, v, attention_mask = on(device, q, k, v, attention_mask)
    mask = attention.causal_mask(attention_mask, T, 0)  # [B, 1, T, T]
    assert not bool(mask[2, 0, 0].any())  # a fully masked row is among them
    ours = fused.scaled_dot_product_attention(q, k, v, mask)
    assert_twins_equal(ours, attention.scaled_dot_product_attention(q, k, v, mask), device, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float16"])
def test_attention_equals_the_plain_one_in_cached_decode_steps(rng, device, dtype):
    """A prefill, then one-token steps (Tq = 1) against the cache's keys, a left-padded row among them."""
    B, H, KV, hd, max_len = 2, 4, 2, 16, 20
    cache = KVCache(backend.namespace(device), 1, B, KV, max_len, hd, np.dtype(dtype))
    attention_mask = np.ones((B, max_len), dtype=np.int64)
    attention_mask[0, :4] = 0
    attention_mask = backend.to_device(attention_mask, device)
    for n_new in (9, 1, 1, 1):
        q, k_new, v_new = on(device, *qkv(rng, B, H, KV, n_new, n_new, dtype, hd))
        k, v = cache.update(0, k_new, v_new)  # [B, KV, cached + n_new, hd]
        mask = attention.causal_mask(attention_mask[:, : cache.length + n_new], n_new, cache.length)
        ours = fused.scaled_dot_product_attention(q, k, v, mask)
        assert_twins_equal(ours, attention.scaled_dot_product_attention(q, k, v, mask), device, dtype)
        cache.advance(n_new)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float16"])
def test_attention_without_a_mask_equals_the_plain_one(rng, device, dtype):
    """mask=None (a bidirectional tower's call): every key visible."""
    q, k, v = on(device, *qkv(rng, 2, 4, 4, 17, 17, dtype))
    ours = fused.scaled_dot_product_attention(q, k, v)
    assert_twins_equal(ours, attention.scaled_dot_product_attention(q, k, v), device, dtype)


def test_a_fully_masked_query_is_uniform_and_finite(rng):
    q, k, v = qkv(rng, 1, 2, 2, 3, 5, np.float32)
    mask = np.ones((1, 1, 3, 5), dtype=bool)
    mask[0, 0, 1] = False  # query 1 sees nothing
    ours = fused.scaled_dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(ours[0, :, 1], v[0].mean(axis=1), rtol=1e-6, atol=1e-6)  # the mean of the values
    np.testing.assert_array_equal(ours, attention.scaled_dot_product_attention(q, k, v, mask))


def test_the_two_sets_name_the_plain_functions_and_their_twins():
    assert fused.PLAIN == fused.Kernels(
        layers.rms_norm, fused.plain_gated_activation, rope.apply_rotary, attention.scaled_dot_product_attention
    )
    assert fused.FUSED == fused.Kernels(
        fused.rms_norm, fused.gated_activation, fused.apply_rotary, fused.scaled_dot_product_attention
    )


def test_the_kernels_are_made_once_per_namespace():
    """CuPy compiles a fused function once and keeps it in that function's object: the bodies must be the same
    objects from call to call (on NumPy they are the bare bodies, for the same reason the same objects)."""
    assert fused.kernels_for(np) is fused.kernels_for(np)
    assert sorted(vars(fused.kernels_for(np))) == [
        "normalize_and_scale", "rotate_halves", "silu_times", "softmax_max", "softmax_normalize", "softmax_sum",
        "sum_of_squares",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The whole model with fused_kernels=True
# ---------------------------------------------------------------------------------------------


def test_fused_kernels_selects_the_fused_set(tiny_checkpoint, monkeypatch):
    """The option really switches the path: with it the fused kernels run, without it they do not (so the equality
    tests below compare two different paths)."""
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    plain, with_fused = minillava.load_model(folder), minillava.load_model(folder, fused_kernels=True)
    assert plain.fused_kernels is False and with_fused.fused_kernels is True
    calls = []
    real_kernels_for = fused.kernels_for
    monkeypatch.setattr(fused, "kernels_for", lambda xp: calls.append(xp) or real_kernels_for(xp))
    input_ids, attention_mask, pixel_values = make_inputs(plain.config, np.random.default_rng(0), [[3, "img", 2]])
    plain.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert calls == []
    with_fused.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    n_layers, n_vision_layers = plain.config.text.num_hidden_layers, plain.config.vision_layers_needed
    # Per text layer: 2 RMSNorms, q's and k's rotations, the gating, the attention; the final norm; and the
    # attention of each vision layer run (the model has one attention function, the kernel set's for "eager").
    assert len(calls) == 6 * n_layers + 1 + n_vision_layers and set(calls) == {np}
    # (by blocks of queries on the CPU: test_query_blocks.py)
    assert with_fused.attention.keywords["attention"] is fused.scaled_dot_product_attention
    assert plain.attention.keywords["attention"] is attention.scaled_dot_product_attention


@pytest.mark.parametrize(
    "kwargs",
    [{"fused_kernels": "yes"}, {"fused_kernels": None}, {"fused_kernels": 1.5}],
    ids=["a string", "None", "a float"],
)
def test_a_bad_fused_kernels_value_is_refused_before_reading(tmp_path, kwargs):
    """One clear error naming the option and the value, before the folder is looked at (here, one that does not
    exist: FileNotFoundError would mean the option was checked too late)."""
    with pytest.raises(ValueError, match=rf"fused_kernels must be True or False, got {kwargs['fused_kernels']!r}"):
        minillava.load_model(tmp_path / "missing", **kwargs)


def test_llava_model_refuses_a_bad_fused_kernels_value(tiny_checkpoint):
    model = minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False))
    with pytest.raises(ValueError, match=r"fused_kernels must be True or False, got 'on'"):
        LlavaModel(model.config, model.params, fused_kernels="on")


@pytest.fixture(scope="module", params=["base", "interleave"], ids=["llava-1.5", "interleave"])
def plain_and_fused(request, tiny_checkpoint, device):
    """(plain model, fused model) on a tiny checkpoint of each family (CLIP + Llama, SigLIP + Qwen2)."""
    folder = tiny_checkpoint(request.param, "fresh", "float32", False)
    return minillava.load_model(folder, device=device), minillava.load_model(folder, device=device, fused_kernels=True)


def assert_logits_equal(ours, ref, device):
    """Bit for bit on the CPU (the same operations); within MODEL_TOL of the logits' scale on a GPU."""
    assert np.isfinite(ours).all()
    if device == "cpu":
        np.testing.assert_array_equal(ours, ref)
    else:
        assert rel_err(ours, ref) <= MODEL_TOL, rel_err(ours, ref)


def test_logits_equal_the_plain_ones(plain_and_fused, device):
    plain, with_fused = plain_and_fused
    input_ids, attention_mask, pixel_values = make_inputs(plain.config, np.random.default_rng(0), BATCH)
    assert attention_mask.min() == 0  # a left-padded batch: fully masked padding queries in the shorter row
    ref = plain.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    ours = with_fused.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert_logits_equal(ours, ref, device)  # padding positions included: the same uniform rows there


def test_cached_steps_equal_the_plain_ones(plain_and_fused, device):
    """Prefill, then a several-token step and one-token steps (the decode shapes), through the KV cache."""
    plain, with_fused = plain_and_fused
    layout = [[3, "img", 5, "img", 8], [4, "img", 11]]  # the last 6 positions are text: steps after the images
    input_ids, attention_mask, pixel_values = make_inputs(plain.config, np.random.default_rng(1), layout)
    logits = {name: logits_in_steps(model, input_ids, attention_mask, pixel_values)
              for name, model in (("plain", plain), ("fused", with_fused))}  # fmt: skip
    assert_logits_equal(logits["fused"], logits["plain"], device)


def test_greedy_generation_equals_the_plain_one_token_for_token(plain_and_fused):
    plain, with_fused = plain_and_fused
    np.testing.assert_array_equal(greedy_tokens(with_fused, seed=2), greedy_tokens(plain, seed=2))


def test_with_tiled_attention_the_other_chains_are_fused(plain_and_fused, device):
    """attn_implementation="tiled" keeps its own online softmax; RMSNorm, the gating and RoPE are still fused."""
    plain, _ = plain_and_fused
    kwargs = {"generation_defaults": plain.generation_defaults, "attn_implementation": "tiled"}
    tiled = LlavaModel(plain.config, plain.params, device=device, **kwargs)
    tiled_fused = LlavaModel(plain.config, plain.params, device=device, fused_kernels=True, **kwargs)
    input_ids, attention_mask, pixel_values = make_inputs(plain.config, np.random.default_rng(3), BATCH)
    ref = tiled.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    ours = tiled_fused.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert_logits_equal(ours, ref, device)


def test_float16_model_equals_the_plain_one_on_the_cpu(tiny_checkpoint):
    """The model's float16 compute dtype: the casts of the fused forms (statistics and softmax in float32, results
    in float16) are the plain ones', bit for bit on NumPy."""
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    plain = minillava.load_model(folder, dtype="float16")
    with_fused = minillava.load_model(folder, dtype="float16", fused_kernels=True)
    input_ids, attention_mask, pixel_values = make_inputs(plain.config, np.random.default_rng(4), BATCH)
    ref = plain.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    ours = with_fused.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert ref.dtype == np.float16
    np.testing.assert_array_equal(ours, ref)
