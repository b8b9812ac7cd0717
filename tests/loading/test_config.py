"""minillava.loading.config against Transformers' LlavaConfig: same values for every field, and clear errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from minillava.loading.config import config_from_dict, load_config
from minillava.loading.weights import expected_shapes
from minillava.model.config import LlavaConfig

DATA = Path(__file__).resolve().parents[1] / "data"
LLAVA_7B = DATA / "llava-1.5-7b-hf"

# llama3 RoPE as Llama-3.1 ships it (old `rope_scaling` spelling).
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}

CASES = {
    "llava-1.5-7b": json.loads((LLAVA_7B / "config.json").read_text()),
    "llava-interleave-qwen-0.5b": json.loads((DATA / "llava-interleave-qwen-0.5b-hf" / "config.json").read_text()),
    "llava-interleave-qwen-7b": json.loads((DATA / "llava-interleave-qwen-7b-hf" / "config.json").read_text()),
    "everything-absent": {"model_type": "llava"},
    "model-type-absent": {},
    "vision-partial": {"vision_config": {"hidden_size": 96, "num_hidden_layers": 4}},
    "vision-empty-dict": {"vision_config": {}},
    "vision-null": {"vision_config": None, "text_config": None},
    "text-absent": {"vision_config": {"image_size": 336, "patch_size": 14}},
    "text-partial": {"text_config": {"max_position_embeddings": 4096, "vocab_size": 32064}},
    "gqa": {"text_config": {"num_attention_heads": 32, "num_key_value_heads": 8}},
    "gqa-nulls": {"text_config": {"num_key_value_heads": None, "head_dim": None}},
    "head-dim-explicit": {"text_config": {"hidden_size": 512, "num_attention_heads": 8, "head_dim": 32}},
    "rope-theta-int": {"text_config": {"rope_theta": 500000}},
    "rope-scaling-null": {"text_config": {"rope_theta": 1234.0, "rope_scaling": None}},
    "rope-linear-type": {"text_config": {"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}},
    "rope-linear-rope-type-int-factor": {"text_config": {"rope_scaling": {"rope_type": "linear", "factor": 4}}},
    "rope-dynamic": {"text_config": {"rope_scaling": {"type": "dynamic", "factor": 2.0}}},
    "rope-llama3-rope-scaling": {
        "text_config": {"rope_theta": 5e5, "max_position_embeddings": 131072, "rope_scaling": LLAMA3_SCALING}
    },
    "rope-llama3-type-key-no-original": {
        "text_config": {
            "max_position_embeddings": 4096,
            "rope_scaling": {
                "type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            },
        }
    },
    "rope-llama3-rope-parameters": {
        "text_config": {
            "max_position_embeddings": 131072,
            "rope_parameters": {**LLAMA3_SCALING, "rope_theta": 5e5},
        }
    },
    "rope-llama3-top-level-original": {
        "text_config": {
            "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096,
            "rope_parameters": {**LLAMA3_SCALING, "rope_theta": 5e5},
        }
    },
    "rope-parameters-theta-wins": {
        "text_config": {
            "rope_theta": 5e5,
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 3.0},
        }
    },
    "rope-scaling-wins": {
        "text_config": {
            "rope_parameters": {"rope_type": "default", "rope_theta": 10.0},
            "rope_scaling": {"rope_type": "linear", "factor": 3.0},
        }
    },
    "rope-default-partial-ignored": {"text_config": {"partial_rotary_factor": 0.5}},
    "feature-layer-list": {"vision_feature_layer": [-2, -5, 3]},
    "feature-layer-zero": {"vision_feature_layer": 0},
    "feature-layer-last": {"vision_feature_layer": -1, "vision_feature_select_strategy": "full"},
    "strategy-full": {"vision_feature_select_strategy": "full"},
    "projector-no-bias": {"multimodal_projector_bias": False, "projector_hidden_act": "gelu_pytorch_tanh"},
    "llama-biases": {"text_config": {"attention_bias": True, "mlp_bias": True, "hidden_act": "gelu_new"}},
    "vision-act": {"vision_config": {"hidden_act": "gelu", "layer_norm_eps": 1e-6, "num_channels": 1}},
    "tie-top": {"tie_word_embeddings": True},
    "tie-text": {"text_config": {"tie_word_embeddings": True}},
    "tie-text-overrides-top-false": {
        "tie_word_embeddings": False,
        "text_config": {"tie_word_embeddings": True},
    },
    "tie-top-true-text-false": {"tie_word_embeddings": True, "text_config": {"tie_word_embeddings": False}},
    "image-token-id-alias": {"image_token_id": 7},
    "image-token-id-wins": {"image_token_index": 5, "image_token_id": 9},
    "special-tokens": {
        "pad_token_id": 32001,
        "text_config": {"pad_token_id": 0, "bos_token_id": None, "eos_token_id": [2, 32007]},
    },
    "unknown-keys": {"ignore_index": -100, "foo": {"bar": 1}, "text_config": {"pretraining_tp": 1, "xyz": 3}},
    # A valid convolution drops the last incomplete row and column of patches (SigLIP so400m: 384 px, 14 px).
    "image-not-multiple-of-patch": {"vision_config": {"image_size": 100, "patch_size": 14}},
    # llava-interleave: SigLIP + Qwen2
    "siglip-empty": {"vision_config": {"model_type": "siglip_vision_model"}},
    "siglip-partial": {
        "vision_config": {
            "model_type": "siglip_vision_model",
            "image_size": 384,
            "patch_size": 14,
            "hidden_size": 64,
            "num_attention_heads": 4,
        },
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    },
    "siglip-no-head": {"vision_config": {"model_type": "siglip_vision_model", "vision_use_head": False}},
    "qwen2-empty": {"text_config": {"model_type": "qwen2"}},
    "qwen2-kv-null": {"text_config": {"model_type": "qwen2", "num_attention_heads": 16, "num_key_value_heads": None}},
    "qwen2-gqa": {
        "text_config": {
            "model_type": "qwen2",
            "hidden_size": 896,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
            "eos_token_id": 151645,
            "bos_token_id": 151643,
        }
    },
    "qwen2-sliding-fields-off": {
        "text_config": {
            "model_type": "qwen2",
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": 4,
        }
    },
    "qwen2-sliding-beyond-the-layers": {
        "text_config": {
            "model_type": "qwen2",
            "num_hidden_layers": 4,
            "use_sliding_window": True,
            "max_window_layers": 4,
        }
    },
    "qwen2-layer-types-full": {
        "text_config": {"model_type": "qwen2", "num_hidden_layers": 2, "layer_types": ["full_attention"] * 2}
    },
    "interleave-shaped": {
        "vision_config": {"model_type": "siglip_vision_model", "vision_use_head": False, **TINY_VISION},
        "text_config": {"model_type": "qwen2", "num_key_value_heads": 2, **TINY_TEXT},
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "image_token_index": 151646,
    },
}

ROPE_FIELDS = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
VISION_FIELDS = [f.name for f in dataclasses.fields(type(config_from_dict({}).vision))]
TEXT_PLAIN_FIELDS = [
    f.name
    for f in dataclasses.fields(type(config_from_dict({}).text))
    if f.name not in ("rope_theta", "rope_scaling", "tie_word_embeddings", "eos_token_id", "qkv_bias", "head_dim")
]
# Qwen2Config has no attention_bias / mlp_bias fields: its modules hard-code them (checked in tests/model).
TEXT_FIELD_IF_ABSENT = {"attention_bias": False, "mlp_bias": False}


@pytest.fixture(scope="module")
def hf():
    """The Transformers pieces the comparisons need (imported once: the import takes seconds)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    return transformers, LlamaRotaryEmbedding


def reference_inv_freq(text) -> np.ndarray:
    """RoPE inverse frequencies from minillava's fields alone (modeling_rope_utils, in float32)."""
    d = text.head_dim
    inv_freq = 1.0 / (text.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
    scaling = text.rope_scaling or {"rope_type": "default"}
    if scaling["rope_type"] == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif scaling["rope_type"] == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        inv_freq = np.where(medium, smoothed, scaled)
    # "dynamic" equals "default" until the sequence outgrows max_position_embeddings.
    return inv_freq


def assert_same_as_transformers(ours: LlavaConfig, theirs, rotary_cls) -> None:
    """Every field of `ours` equals what Transformers resolved (and the RoPE tables agree)."""
    vision, text = theirs.vision_config, theirs.text_config
    for name in VISION_FIELDS:
        # vision_use_head: SigLIP's attention-pooling head (CLIPVisionConfig has no such field: no head)
        expected = getattr(vision, name, False) if name == "vision_use_head" else getattr(vision, name)
        assert getattr(ours.vision, name) == expected, f"vision.{name}"
    for name in TEXT_PLAIN_FIELDS:
        assert getattr(ours.text, name) == getattr(text, name, TEXT_FIELD_IF_ABSENT.get(name)), f"text.{name}"
    # Qwen2Attention gives q, k and v a bias and o_proj none, whatever the config says (it has no field for it).
    assert ours.text.qkv_bias == (text.model_type == "qwen2")
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert ours.text.head_dim == head_dim
    eos = text.eos_token_id
    assert ours.text.eos_token_id == (tuple(eos) if isinstance(eos, list) else eos)

    # Building the rotary embedding runs standardize_rope_params once more, as the model does.
    rotary = rotary_cls(text)
    params = text.rope_parameters
    assert ours.text.rope_theta == params["rope_theta"]
    assert isinstance(ours.text.rope_theta, float)
    rope_type = params["rope_type"]
    expected = None if rope_type == "default" else {"rope_type": rope_type}
    for key in ROPE_FIELDS.get(rope_type, ()):
        expected[key] = params[key]
    assert ours.text.rope_scaling == expected
    np.testing.assert_allclose(reference_inv_freq(ours.text), rotary.inv_freq.numpy(), rtol=2e-6)

    assert ours.image_token_index == theirs.image_token_index
    assert ours.projector_hidden_act == theirs.projector_hidden_act
    layer = theirs.vision_feature_layer
    assert ours.vision_feature_layer == (tuple(layer) if isinstance(layer, list) else layer)
    assert ours.vision_feature_select_strategy == theirs.vision_feature_select_strategy
    assert ours.multimodal_projector_bias == theirs.multimodal_projector_bias
    assert ours.tie_word_embeddings == ours.text.tie_word_embeddings == theirs.tie_word_embeddings
    assert ours.pad_token_id == getattr(theirs, "pad_token_id", None)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_transformers(name, hf):
    transformers, rotary_cls = hf
    d = CASES[name]
    theirs = transformers.LlavaConfig(**copy.deepcopy(d))  # Transformers edits nested dicts in place
    assert_same_as_transformers(config_from_dict(d), theirs, rotary_cls)


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_through_save_pretrained(name, hf, tmp_path):
    """A folder written by Transformers 5.24 (full sub-configs, `rope_parameters` spelling) loads the same."""
    transformers, rotary_cls = hf
    theirs = transformers.LlavaConfig(**copy.deepcopy(CASES[name]))
    theirs.save_pretrained(tmp_path)
    assert_same_as_transformers(load_config(tmp_path), theirs, rotary_cls)


@pytest.mark.parametrize("top", [None, False, True])
@pytest.mark.parametrize("text", [None, False, True])
def test_tied_lm_head_matches_the_model(top, text, hf):
    """The built LlavaForConditionalGeneration ties lm_head to embed_tokens iff we say so."""
    transformers, _ = hf
    d = {"vision_config": TINY_VISION, "text_config": dict(TINY_TEXT, vocab_size=64)}
    if top is not None:
        d["tie_word_embeddings"] = top
    if text is not None:
        d["text_config"]["tie_word_embeddings"] = text
    model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**copy.deepcopy(d)))
    tied = model.lm_head.weight is model.model.language_model.embed_tokens.weight
    ours = config_from_dict(d)
    assert ours.tie_word_embeddings == ours.text.tie_word_embeddings == tied == bool(top or text)


def test_llava_1_5_7b_sizes():
    cfg = load_config(LLAVA_7B)
    assert cfg == load_config(LLAVA_7B / "config.json")
    t, v = cfg.text, cfg.vision
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers) == (4096, 11008, 32)
    assert (t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (32, 32, 128)
    assert (t.vocab_size, t.rms_norm_eps, t.max_position_embeddings) == (32064, 1e-5, 4096)
    assert (t.rope_theta, t.rope_scaling, t.hidden_act) == (10000.0, None, "silu")
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (1, 2, None)
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads) == (
        1024,
        4096,
        24,
        16,
    )
    assert (v.image_size, v.patch_size, v.hidden_act, v.layer_norm_eps) == (336, 14, "quick_gelu", 1e-5)
    assert (v.head_dim, v.num_patches, v.num_positions) == (64, 576, 577)
    assert (cfg.image_token_index, cfg.num_image_tokens, cfg.vision_feature_layer) == (32000, 576, -2)
    assert (cfg.vision_layers_needed, cfg.projector_hidden_act, cfg.pad_token_id) == (23, "gelu", 32001)
    assert cfg.vision_feature_select_strategy == "default"
    assert cfg.multimodal_projector_bias and not cfg.tie_word_embeddings


INTERLEAVE_05B = DATA / "llava-interleave-qwen-0.5b-hf"
INTERLEAVE_7B = DATA / "llava-interleave-qwen-7b-hf"


def test_llava_interleave_0_5b_sizes():
    """The published llava-interleave-qwen-0.5b-hf config: SigLIP so400m cut to 26 layers reading 384 px in
    27 x 27 patches, and a Qwen1.5-0.5B-sized Qwen2 (plain multi-head attention, 16 query and 16 key/value
    heads: not Qwen2-0.5B's 14/2), tied embeddings, every token of the last vision layer."""
    cfg = load_config(INTERLEAVE_05B)
    t, v = cfg.text, cfg.vision
    assert (t.model_type, t.hidden_size, t.intermediate_size, t.num_hidden_layers) == ("qwen2", 1024, 2816, 24)
    assert (t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (16, 16, 64)
    assert (t.vocab_size, t.rms_norm_eps, t.max_position_embeddings) == (152000, 1e-6, 32768)
    assert (t.rope_theta, t.rope_scaling, t.hidden_act) == (1e6, None, "silu")
    assert (t.qkv_bias, t.attention_bias, t.mlp_bias) == (True, False, False)
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (151643, 151645, None)
    assert (v.model_type, v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads) == (
        "siglip_vision_model", 1152, 4304, 26, 16
    )  # fmt: skip
    assert (v.image_size, v.patch_size, v.hidden_act, v.layer_norm_eps) == (384, 14, "gelu_pytorch_tanh", 1e-6)
    assert (v.num_patches, v.num_positions, v.has_cls_token, v.vision_use_head) == (729, 729, False, False)
    assert (cfg.image_token_index, cfg.num_image_tokens, cfg.vision_feature_layer) == (151646, 729, -1)
    assert (cfg.vision_feature_select_strategy, cfg.vision_layers_needed) == ("full", 26)
    assert cfg.tie_word_embeddings and cfg.projector_hidden_act == "gelu" and cfg.multimodal_projector_bias


@pytest.mark.parametrize(
    ("folder", "count"),
    [(INTERLEAVE_05B, 864_031_264), (INTERLEAVE_7B, 8_141_100_576), (LLAVA_7B, 7_063_427_072)],
    ids=["interleave-0.5b", "interleave-7b", "llava-1.5-7b"],
)
def test_parameter_count_as_transformers_computes_it(hf, folder, count):
    """Every tensor of the model, from its config.json alone, counted as Transformers' num_parameters() counts
    (a tied lm_head once); the same figure Transformers gives for the model it builds from the file."""
    import torch

    transformers, _ = hf
    cfg = load_config(folder)
    shapes = expected_shapes(cfg)
    if cfg.tie_word_embeddings:
        del shapes["lm_head.weight"]
    assert sum(int(np.prod(shape)) for shape in shapes.values()) == count
    with torch.device("meta"):  # no memory for the weights
        theirs = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig.from_pretrained(folder))
    assert theirs.num_parameters() == count


def test_defaults_partial_vs_absent_vision():
    """An absent vision_config is ViT-L/14-336; a partial one is filled from CLIP ViT-B/32 defaults."""
    absent = config_from_dict({}).vision
    partial = config_from_dict({"vision_config": {"hidden_size": 96}}).vision
    assert (absent.hidden_size, absent.num_hidden_layers, absent.image_size, absent.patch_size) == (
        1024,
        24,
        336,
        14,
    )
    assert (partial.hidden_size, partial.num_hidden_layers, partial.image_size, partial.patch_size) == (
        96,
        12,
        224,
        32,
    )
    assert partial.intermediate_size == 3072 and partial.num_attention_heads == 12
    text = config_from_dict({}).text
    assert (text.max_position_embeddings, text.rms_norm_eps, text.vocab_size) == (2048, 1e-6, 32000)


@pytest.mark.parametrize(
    ("layer", "strategy", "needed", "tokens"),
    [(-2, "default", 23, 576), (-1, "full", 24, 577), (0, "default", 0, 576), (-25, "default", 0, 576),
     ([-2, -5, 3], "default", 23, 576), ([12, 24], "full", 24, 577)],
)  # fmt: skip
def test_vision_layers_needed(layer, strategy, needed, tokens):
    cfg = config_from_dict({"vision_feature_layer": layer, "vision_feature_select_strategy": strategy})
    assert (cfg.vision_layers_needed, cfg.num_image_tokens) == (needed, tokens)


@pytest.mark.parametrize(
    ("layer", "index"),
    [(-2, 23), (-1, 24), (0, 0), (-25, 0), (24, 24), ([-2, -5, 3], (23, 20, 3)), ([12, -1], (12, 24))],
)
def test_vision_feature_index(layer, index):
    """The hidden_states entry that Python's own indexing picks (24 layers: 25 hidden states)."""
    cfg = config_from_dict({"vision_feature_layer": layer})
    assert cfg.vision_feature_index == index
    states = list(range(cfg.vision.num_hidden_layers + 1))
    assert index == (tuple(states[i] for i in layer) if isinstance(layer, list) else states[layer])


def test_frozen_and_input_untouched():
    d = copy.deepcopy(CASES["rope-llama3-type-key-no-original"])
    before = copy.deepcopy(d)
    cfg = config_from_dict(d)
    assert d == before
    assert cfg.text.rope_scaling["original_max_position_embeddings"] == 4096
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.text.hidden_size = 1


# --------------------------------------------------------------------------------------------------
# Errors: each names the file and the field (and the offending value).
# --------------------------------------------------------------------------------------------------

SUPPORTED = "minillava supports model_type 'llava'"
BAD = {
    "model-type-llava-next": ({"model_type": "llava_next"}, ["model_type", "llava_next", "LLaVA-NeXT", SUPPORTED]),
    "model-type-onevision": (
        {"model_type": "llava_onevision"},
        ["model_type", "llava_onevision", "LLaVA-OneVision", SUPPORTED],
    ),
    "model-type-next-video": ({"model_type": "llava_next_video"}, ["llava_next_video", "Video", SUPPORTED]),
    "model-type-video-llava": ({"model_type": "video_llava"}, ["video_llava", "Video-LLaVA", SUPPORTED]),
    "model-type-mllama": ({"model_type": "mllama"}, ["mllama", "Llama 3.2 Vision", SUPPORTED]),
    "model-type-unknown": ({"model_type": "blip-2"}, ["model_type", "blip-2", SUPPORTED]),
    "text-model-type": ({"text_config": {"model_type": "mistral"}}, ["text_config.model_type", "mistral", "qwen2"]),
    "vision-model-type": (
        {"vision_config": {"model_type": "dinov2"}},
        ["vision_config.model_type", "dinov2", "siglip_vision_model"],
    ),
    "qwen2-sliding-window": (
        {
            "text_config": {
                "model_type": "qwen2",
                "num_hidden_layers": 4,
                "use_sliding_window": True,
                "max_window_layers": 2,
            }
        },
        ["text_config.use_sliding_window", "[2, 3]", "sliding-window"],
    ),
    "qwen2-layer-types-sliding": (
        {
            "text_config": {
                "model_type": "qwen2",
                "num_hidden_layers": 2,
                "layer_types": ["full_attention", "sliding_attention"],
            }
        },
        ["text_config.use_sliding_window", "[1]"],
    ),
    "vision-config-not-object": ({"vision_config": "clip"}, ["vision_config", "'clip'"]),
    "hidden-size-string": ({"text_config": {"hidden_size": "abc"}}, ["text_config.hidden_size", "'abc'"]),
    "hidden-size-float": ({"text_config": {"hidden_size": 4096.0}}, ["text_config.hidden_size", "4096.0"]),
    "layers-zero": ({"vision_config": {"num_hidden_layers": 0}}, ["vision_config.num_hidden_layers", "0"]),
    "layers-bool": ({"text_config": {"num_hidden_layers": True}}, ["text_config.num_hidden_layers", "True"]),
    "heads-not-dividing-hidden": (
        {"text_config": {"hidden_size": 100, "num_attention_heads": 32}},
        ["text_config.num_attention_heads", "32", "100"],
    ),
    "vision-heads-not-dividing": (
        {"vision_config": {"hidden_size": 100, "num_attention_heads": 16}},
        ["vision_config.num_attention_heads", "16", "100"],
    ),
    "kv-heads": ({"text_config": {"num_key_value_heads": 5}}, ["text_config.num_key_value_heads", "5", "32"]),
    "head-dim-odd": ({"text_config": {"head_dim": 33}}, ["text_config.head_dim", "33"]),
    "eps-string": ({"text_config": {"rms_norm_eps": "1e-5"}}, ["text_config.rms_norm_eps", "'1e-5'"]),
    "eps-negative": ({"vision_config": {"layer_norm_eps": -1.0}}, ["vision_config.layer_norm_eps", "-1.0"]),
    "patch-larger-than-image": (
        {"vision_config": {"image_size": 10, "patch_size": 14}},
        ["vision_config.patch_size", "14", "10"],
    ),
    "feature-layer-too-low": ({"vision_feature_layer": -26}, ["vision_feature_layer", "-26", "-25"]),
    "feature-layer-too-high": ({"vision_feature_layer": 25}, ["vision_feature_layer", "25", "24"]),
    "feature-layer-bad-list": ({"vision_feature_layer": [-2, "a"]}, ["vision_feature_layer", "'a'"]),
    "feature-layer-empty-list": ({"vision_feature_layer": []}, ["vision_feature_layer", "empty"]),
    "feature-layer-null": ({"vision_feature_layer": None}, ["vision_feature_layer", "None"]),
    "strategy": ({"vision_feature_select_strategy": "cls"}, ["vision_feature_select_strategy", "'cls'"]),
    "projector-act": ({"projector_hidden_act": "swish"}, ["projector_hidden_act", "'swish'", "quick_gelu"]),
    "text-act": ({"text_config": {"hidden_act": "gelu_fast"}}, ["text_config.hidden_act", "'gelu_fast'"]),
    "vision-act": ({"vision_config": {"hidden_act": 3}}, ["vision_config.hidden_act", "3"]),
    "bias-not-bool": ({"multimodal_projector_bias": "yes"}, ["multimodal_projector_bias", "'yes'"]),
    "tie-not-bool": ({"text_config": {"tie_word_embeddings": 1}}, ["text_config.tie_word_embeddings", "1"]),
    "image-token-string": ({"image_token_index": "32000"}, ["image_token_index", "'32000'"]),
    "eos-bad": ({"text_config": {"eos_token_id": [2, "x"]}}, ["text_config.eos_token_id", "'x'"]),
    "pad-list": ({"pad_token_id": [1, 2]}, ["pad_token_id", "[1, 2]"]),
    "rope-yarn": (
        {"text_config": {"rope_scaling": {"type": "yarn", "factor": 4.0}}},
        ["text_config.rope_scaling.type", "'yarn'", "llama3"],
    ),
    "rope-longrope-parameters": (
        {"text_config": {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}},
        ["text_config.rope_parameters.rope_type", "'longrope'"],
    ),
    "rope-linear-no-factor": (
        {"text_config": {"rope_scaling": {"rope_type": "linear"}}},
        ["text_config.rope_scaling.factor", "required"],
    ),
    "rope-llama3-missing-field": (
        {"text_config": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}}},
        ["text_config.rope_scaling.high_freq_factor", "required"],
    ),
    "rope-not-object": (
        {"text_config": {"rope_scaling": "linear"}},
        ["text_config.rope_scaling", "'linear'"],
    ),
    "rope-theta-string": ({"text_config": {"rope_theta": "1e4"}}, ["text_config.rope_theta", "'1e4'"]),
    "layers-two-to-the-70": (
        {"text_config": {"num_hidden_layers": 2**70}},
        ["text_config.num_hidden_layers", str(2**70), "between 1 and 1024"],
    ),
    "vocab-too-large": ({"text_config": {"vocab_size": 2**40}}, ["text_config.vocab_size", str(2**40)]),
    "image-size-too-large": ({"vision_config": {"image_size": 10**6}}, ["vision_config.image_size", "1000000"]),
    "context-too-long": (
        {"text_config": {"max_position_embeddings": 2**40}},
        ["text_config.max_position_embeddings", str(2**40)],
    ),
    "image-token-too-large": ({"image_token_index": 2**63}, ["image_token_index", str(2**63)]),
    "eos-too-large": ({"text_config": {"eos_token_id": 2**40}}, ["text_config.eos_token_id", str(2**40)]),
    "eps-nan": ({"text_config": {"rms_norm_eps": float("nan")}}, ["text_config.rms_norm_eps", "nan"]),
    "eps-infinity": ({"vision_config": {"layer_norm_eps": float("inf")}}, ["vision_config.layer_norm_eps", "inf"]),
    "rope-theta-infinity": ({"text_config": {"rope_theta": float("inf")}}, ["text_config.rope_theta", "inf"]),
    "rope-partial": (
        {"text_config": {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}}},
        ["text_config.rope_parameters.partial_rotary_factor", "0.5"],
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_values_name_file_and_field(name, tmp_path):
    d, fragments = BAD[name]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError) as err:
        load_config(tmp_path)
    message = str(err.value)
    for fragment in [str(tmp_path / "config.json"), *fragments]:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_config_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json") as err:
        load_config(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_config(tmp_path / "nope")


@pytest.mark.parametrize("text", ["{", "not json", "", '{"model_type": "llava",}'])
def test_invalid_json_names_the_file(text, tmp_path):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="not valid JSON") as err:
        load_config(tmp_path / "config.json")
    assert str(tmp_path / "config.json") in str(err.value)


def test_json_must_be_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_config(tmp_path)
