"""The whole model (minillava.model.llava) against Transformers' LlavaForConditionalGeneration on tiny random
checkpoints: logits on every checkpoint variant, text-only prompts, weights kept float16, and every module
against its Transformers submodule (forward hooks) on the same inputs. Tolerances: tests/model/helpers.py.
"""

import numpy as np
import pytest

import minillava
from minillava.model.backend import to_numpy
from minillava.model.trace import activation_names

from .helpers import BATCH, LOGITS_TOL, MODULE_TOL, hf_logits, make_inputs, rel_err

CHECKPOINTS = [
    # variant, layout, file dtype, sharded
    ("base", "fresh", "float32", False),
    ("base", "hub", "float32", True),
    ("base", "internal", "float32", False),
    ("base", "hub", "float16", True),
    ("base", "fresh", "bfloat16", False),
    ("layer_list", "fresh", "float32", False),
    ("full", "fresh", "float32", False),
    ("layer_0", "fresh", "float32", False),
    ("mha", "fresh", "float32", False),
    ("no_projector_bias", "hub", "float32", False),
    ("biases", "fresh", "float32", False),
    ("head_dim", "fresh", "float32", False),
    ("rope_linear", "fresh", "float32", False),
    ("rope_llama3", "fresh", "float32", False),
    ("tied", "fresh", "float32", False),
    # llava-interleave's shape: SigLIP + Qwen2, in every layout and file dtype
    ("interleave", "fresh", "float32", False),
    ("interleave", "hub", "float16", True),
    ("interleave", "internal", "bfloat16", False),
    ("interleave_head", "hub", "float32", False),
    ("interleave_default", "fresh", "float32", False),
    ("interleave_untied", "internal", "float32", False),
]


@pytest.mark.parametrize("variant,layout,dtype,shard", CHECKPOINTS, ids=["-".join(map(str, c)) for c in CHECKPOINTS])
def test_logits_match_transformers(tiny_checkpoint, hf_model, device, variant, layout, dtype, shard):
    folder = tiny_checkpoint(variant, layout, dtype, shard)
    model = minillava.load_model(folder, device=device)
    hf = hf_model(folder)
    rng = np.random.default_rng(0)
    input_ids, attention_mask, pixel_values = make_inputs(model.config, rng, BATCH)
    ours = model.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    ref = hf_logits(hf, input_ids, attention_mask, pixel_values)
    real = attention_mask.astype(bool)
    assert ours.dtype == np.float32
    assert rel_err(ours[real], ref[real]) <= LOGITS_TOL


@pytest.mark.parametrize("layout", [[[7]], [[5], [9]]], ids=["one-row", "padded-batch"])
def test_text_only_logits(tiny_checkpoint, hf_model, device, layout):
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    model, hf = minillava.load_model(folder, device=device), hf_model(folder)
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(1), layout)
    assert pixel_values is None
    ours = model.forward(input_ids, attention_mask=attention_mask)
    ref = hf_logits(hf, input_ids, attention_mask, None)
    real = attention_mask.astype(bool)
    assert rel_err(ours[real], ref[real]) <= LOGITS_TOL


def test_low_memory_float16_weights_give_the_same_logits(tiny_checkpoint):
    """Weights kept float16 and memory-mapped, cast at use: identical to casting them all at load."""
    folder = tiny_checkpoint("base", "hub", "float16", True)
    eager, lazy = minillava.load_model(folder), minillava.load_model(folder, low_memory=True)
    assert lazy.params["language_model"]["layers"][0]["mlp"]["up_proj"]["weight"].dtype == np.float16
    input_ids, attention_mask, pixel_values = make_inputs(eager.config, np.random.default_rng(2), BATCH)
    a = eager.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    b = lazy.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Every module against its Transformers submodule (forward hooks), on the same inputs
# ---------------------------------------------------------------------------------------------


def hf_module_outputs(hf, names, input_ids, attention_mask, pixel_values):
    """Run hf once with forward hooks on the named submodules; return {name: output array}."""
    outputs, handles = {}, []
    modules = dict(hf.named_modules())

    def hook(name):
        def save(module, args, output):
            value = output[0] if isinstance(output, tuple) else output
            outputs.setdefault(name, []).append(value.detach().numpy().copy())

        return save

    for ours_name, hf_name in names.items():
        handles.append(modules[hf_name].register_forward_hook(hook(ours_name)))
    try:
        hf_logits(hf, input_ids, attention_mask, pixel_values)
    finally:
        for h in handles:
            h.remove()
    return outputs


@pytest.mark.parametrize("variant", ["base", "layer_list", "full", "interleave", "interleave_default"])
def test_every_module_matches_its_transformers_submodule(tiny_checkpoint, hf_model, device, variant):
    folder = tiny_checkpoint(variant, "fresh", "float32", False)
    model, hf = minillava.load_model(folder, device=device), hf_model(folder)
    cfg = model.config
    input_ids, attention_mask, pixel_values = make_inputs(cfg, np.random.default_rng(3), BATCH)

    names = {  # our trace name -> Transformers module path
        "vision_tower.embeddings": "model.vision_tower.embeddings",
        "multi_modal_projector": "model.multi_modal_projector",
        "language_model.embed_tokens": "model.language_model.embed_tokens",
        "language_model.norm": "model.language_model.norm",
        "lm_head": "lm_head",
    }
    if cfg.vision.model_type == "clip_vision_model":  # SigLIP has no LayerNorm before its layers
        names["vision_tower.pre_layrnorm"] = "model.vision_tower.pre_layrnorm"
    for i in range(cfg.vision_layers_needed):
        for part in ("", ".layer_norm1", ".self_attn", ".layer_norm2", ".mlp"):
            names[f"vision_tower.encoder.layers.{i}{part}"] = f"model.vision_tower.encoder.layers.{i}{part}"
    for i in range(cfg.text.num_hidden_layers):
        for part in ("", ".input_layernorm", ".self_attn", ".post_attention_layernorm", ".mlp"):
            names[f"language_model.layers.{i}{part}"] = f"model.language_model.layers.{i}{part}"
    ref = hf_module_outputs(hf, names, input_ids, attention_mask, pixel_values)
    trace = {}
    model.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask, trace=trace)

    real = attention_mask.astype(bool)
    for name in names:
        assert len(ref[name]) == 1, f"{name} ran {len(ref[name])} times in Transformers"
        ours, theirs = to_numpy(trace[name]), ref[name][0]
        if name.startswith(("language_model", "lm_head")):  # [B, T, ...]: real positions only
            ours, theirs = ours[real], theirs[real]
        assert rel_err(ours, theirs) <= MODULE_TOL, name
    # Layers past the selected one are never computed.
    n_computed = sum(name.startswith("vision_tower.encoder.layers.") and name.count(".") == 3 for name in trace)
    every_layer = variant in ("layer_list", "interleave")  # they read the last layer
    assert n_computed == cfg.vision_layers_needed < cfg.vision.num_hidden_layers + every_layer
    assert sorted(trace) == sorted(activation_names(cfg, with_images=True))


# ---------------------------------------------------------------------------------------------------------------
# Inputs that used to give a silently wrong answer: refused at the entry points, naming the argument
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "match"),
    [([[1, 1, 2]], r"attention_mask must hold only 0 \(padding\) and 1 \(a token\), got 2"),
     ([[1.0, 0.5, 1.0]], "attention_mask must hold only 0 .* got 0.5"),
     ([[1, 1, 1], [0, 0, 0]], "attention_mask row 1 is all 0"),
     ([["1", "1", "1"]], "attention_mask must be 0s and 1s, got dtype")],
)  # fmt: skip
def test_attention_mask_of_other_values_is_refused(tiny_checkpoint, mask, match):
    model = minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False))
    input_ids = np.array([[1, 5, 6]] * len(mask))
    for call in (model.forward, model.generate):
        with pytest.raises(ValueError, match=match):
            call(input_ids, attention_mask=np.array(mask))


def test_masks_of_booleans_and_floats_of_0_and_1_are_the_same(tiny_checkpoint):
    model = minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False))
    input_ids = np.array([[0, 5, 6], [1, 5, 6]])
    ints = np.array([[0, 1, 1], [1, 1, 1]])
    expected = model.forward(input_ids, attention_mask=ints)
    for mask in (ints.astype(bool), ints.astype(np.float32)):
        np.testing.assert_array_equal(model.forward(input_ids, attention_mask=mask), expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixel_values_are_refused(tiny_checkpoint, bad):
    model = minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False))
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(0), [[2, "img", 2]])
    pixel_values[0, 1, 2, 3] = bad
    for call in (model.forward, model.generate, model.encode_image):
        args = (pixel_values,) if call == model.encode_image else (input_ids, pixel_values, attention_mask)
        with pytest.raises(ValueError, match="pixel_values hold NaN or infinite values"):
            call(*args)


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs to forward and generate: one clear error naming the argument, before any compute
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(tiny_checkpoint):
    return minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False))


def image_prompt(model, n_image_tokens):
    cfg = model.config
    return np.array([[1, 5] + [cfg.image_token_index] * n_image_tokens + [7, 8]])


def test_pixel_values_of_the_wrong_size(base_model):
    side = base_model.config.vision.image_size
    ids = image_prompt(base_model, base_model.config.num_image_tokens)
    for shape in [(1, 3, side + 14, side), (3, side, side), (1, 1, side, side)]:
        with pytest.raises(ValueError, match="pixel_values must have shape"):
            base_model.forward(ids, pixel_values=np.zeros(shape, np.float32))


@pytest.mark.parametrize("n_images,n_tokens", [(1, 15), (1, 17), (2, 16), (1, 32)])
def test_image_tokens_that_do_not_match_the_images(base_model, n_images, n_tokens):
    side = base_model.config.vision.image_size
    pixel_values = np.zeros((n_images, 3, side, side), np.float32)
    with pytest.raises(ValueError, match=f"{n_tokens} image tokens.*{n_images} image"):
        base_model.forward(image_prompt(base_model, n_tokens), pixel_values=pixel_values)


def test_image_tokens_without_pixel_values(base_model):
    with pytest.raises(ValueError, match="no pixel_values"):
        base_model.forward(image_prompt(base_model, 16))


@pytest.mark.parametrize(
    ("input_ids", "match"),
    [(np.array([[1, 128]]), r"input_ids must lie in \[0, 128\)"),
     (np.array([[-1, 5]]), r"input_ids must lie in \[0, 128\)"),
     (np.array([1, 2, 3]), r"input_ids must be an integer array \[B, T\] with at least one row and one token"),
     (np.zeros((0, 5), np.int64), r"at least one row and one token, got shape \[0, 5\]"),
     (np.zeros((2, 0), np.int64), r"at least one row and one token, got shape \[2, 0\]"),
     (np.array([[1.0, 2.0]]), "input_ids must be an integer array .* dtype float64")],
)  # fmt: skip
def test_bad_input_ids(base_model, input_ids, match):
    for call in (base_model.forward, base_model.generate):
        with pytest.raises(ValueError, match=match):
            call(input_ids)


def test_bad_attention_mask_and_too_long_sequence(base_model):
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        base_model.forward(np.array([[1, 2, 3]]), attention_mask=np.ones((1, 2)))
    too_long = np.ones((1, base_model.config.text.max_position_embeddings + 1), dtype=np.int64)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        base_model.forward(too_long)
    cache = base_model.new_cache(1, max_len=4)
    base_model.forward(np.array([[1, 2, 3, 4]]), cache=cache)
    with pytest.raises(ValueError, match="KV cache is full"):
        base_model.forward(np.array([[5]]), cache=cache)
