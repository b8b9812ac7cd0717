"""config.json -> the model's configuration (``minillava.model.config``), every omitted field filled.

A llava-hf config.json is sparse. The published llava-1.5-7b-hf file gives only three fields of its
language model (`vocab_size`, `max_position_embeddings`, `rms_norm_eps`) and relies on Transformers
to fill in the rest. This module fills every omitted field with the value Transformers 5.24 gives it,
so that minillava builds exactly the model `LlavaForConditionalGeneration.from_pretrained` builds.

Where the defaults come from (paths inside the `transformers` package):

- `models/llava/configuration_llava.py`, `LlavaConfig`: the top-level fields, and
  `sub_configs_defaults`, which builds a CLIP ViT-L/14-336 vision tower *only when `vision_config` is
  absent*. A `vision_config` dict, even a partial or empty one, is passed to `CLIPVisionConfig(**d)`
  and so gets CLIP ViT-B/32 class defaults for the missing fields (`create_subconfig` in
  `configuration_utils.py`). `text_config` has no overrides: absent or partial, it gets `LlamaConfig`
  class defaults.
- `models/clip/configuration_clip.py`, `CLIPVisionConfig`: the vision class defaults.
- `models/llama/configuration_llama.py`, `LlamaConfig`: the text class defaults, and the rules
  `num_key_value_heads = None -> num_attention_heads`, `head_dim = None -> hidden_size // heads`.
- `modeling_rope_utils.py`, `RotaryEmbeddingConfigMixin`: how the old `rope_theta` / `rope_scaling`
  keys and the 5.x `rope_parameters` dict become one set of RoPE parameters.

Transformers validates less than we do in a few places (it accepts `num_key_value_heads` that do not
divide `num_attention_heads`, out-of-range `vision_feature_layer`, patches larger than the image, and
unknown activations until the model is built). Those fail later, inside the
model, with an unhelpful message; here they fail at load time with the field and the value named.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Any

from ..model.clip import FEATURE_SELECT_STRATEGIES
from ..model.config import LANGUAGE_MODELS, VISION_TOWERS, LlavaConfig, TextConfig, VisionConfig
from ..model.layers import ACTIVATIONS
from ..model.rope import ROPE_TYPES
from .files import is_json_int, read_json

# CLIPVisionConfig's class defaults (openai/clip-vit-base-patch32): used for the fields a
# `vision_config` dict leaves out.
CLIP_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# LlavaConfig.sub_configs_defaults["vision_config"].init_kwargs on top of the CLIP defaults
# (CLIP ViT-L/14 at 336 px): used only when `vision_config` is absent (or null).
LLAVA_VISION_DEFAULTS: dict[str, Any] = {
    **CLIP_VISION_DEFAULTS,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
}

# SiglipVisionConfig's class defaults (google/siglip-base-patch16-224): for the fields a SigLIP
# `vision_config` leaves out (llava-interleave's is SigLIP so400m-patch14-384, its sizes given in the file).
SIGLIP_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": True,
}

# LlamaConfig's class defaults (Llama-2-7b sizes). Note max_position_embeddings 2048 and rms_norm_eps
# 1e-6: llava-1.5's config.json overrides both (4096, 1e-5). `None` for num_key_value_heads and
# head_dim means "derive it" (LlamaConfig.__post_init__).
LLAMA_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "head_dim": None,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "pad_token_id": None,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# Qwen2Config's class defaults (models/qwen2/configuration_qwen2.py): for the fields a qwen2 `text_config`
# leaves out. Sliding-window attention is off unless `use_sliding_window` is true (it is false in the llava
# checkpoints; minillava refuses a config that switches it on for some layer).
QWEN2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": None,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "max_window_layers": 28,
}

# Other model types a LLaVA-like folder may have, which minillava does not implement: named in the error.
OTHER_FAMILIES = {
    "llava_next": "LLaVA-NeXT (LlavaNextForConditionalGeneration: images cut into any-resolution tiles)",
    "llava_next_video": "LLaVA-NeXT-Video (LlavaNextVideoForConditionalGeneration)",
    "llava_onevision": "LLaVA-OneVision (LlavaOnevisionForConditionalGeneration: any-resolution tiles, video)",
    "video_llava": "Video-LLaVA (VideoLlavaForConditionalGeneration)",
    "vipllava": "VipLLaVA (VipLlavaForConditionalGeneration)",
    "mllama": "Llama 3.2 Vision (MllamaForConditionalGeneration: cross-attention to the image)",
}
SUPPORTED = (
    "minillava supports model_type 'llava' (LlavaForConditionalGeneration): a CLIP or SigLIP vision tower "
    "with a Llama or Qwen2 language model, as llava-1.5 and llava-interleave"
)

# RotaryEmbeddingConfigMixin.default_theta: the RoPE base when neither `rope_theta` nor a
# `rope_theta` inside `rope_parameters` / `rope_scaling` is given.
DEFAULT_ROPE_THETA = 10000.0

# LlavaConfig's class defaults for its own fields.
LLAVA_DEFAULTS: dict[str, Any] = {
    "image_token_index": 32000,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "multimodal_projector_bias": True,
    "tie_word_embeddings": False,
    "pad_token_id": None,
}


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> LlavaConfig:
    """Read a checkpoint's config.json; `path` is the checkpoint folder or the file itself."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        raise FileNotFoundError(f"no config.json in the folder {path}")
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder (give a checkpoint folder or its config.json)")
    return config_from_dict(read_json(file, required=True), source=str(file))


def load_generation_config(folder: str | Path) -> dict:
    """The special-token ids of a checkpoint's generation_config.json that generation reads (``eos_token_id``,
    ``pad_token_id``, ``bos_token_id``), each checked as config.json's are; {} when the file is absent. The
    other settings there (sampling defaults) are not read: minillava's generate takes them as arguments."""
    file = Path(folder) / "generation_config.json"
    data = read_json(file)
    section = _Section(data, "", str(file))
    ids = {"eos_token_id": _token_id(section, "eos_token_id", None, allow_list=True)}
    ids.update({key: _token_id(section, key, None) for key in ("pad_token_id", "bos_token_id")})
    return {key: value for key, value in ids.items() if key in data}


def config_from_dict(d: dict, source: str = "config") -> LlavaConfig:
    """Build the config from a parsed config.json (the dict is not modified).

    `source` names the origin in error messages (load_config passes the file's path).
    """
    if not isinstance(d, dict):
        raise ValueError(f"{source}: the config must be a JSON object, got {type(d).__name__}")
    top = _Section(d, "", source)

    model_type = d.get("model_type", "llava")
    if model_type != "llava":
        known = isinstance(model_type, str) and model_type in OTHER_FAMILIES  # (a JSON list or object is no name)
        family = f" ({OTHER_FAMILIES[model_type]})" if known else ""
        raise top.error("model_type", f"is {_shown(model_type)}{family}; {SUPPORTED}")

    vision = _vision_config(top.subsection("vision_config", VISION_TOWERS))
    text_section = top.subsection("text_config", LANGUAGE_MODELS)
    text_defaults = QWEN2_DEFAULTS if text_section.model_type == "qwen2" else LLAMA_DEFAULTS
    tie = _bool(top, "tie_word_embeddings", LLAVA_DEFAULTS["tie_word_embeddings"])
    # LlavaConfig.__post_init__: a true text_config.tie_word_embeddings turns the top-level one on.
    tie = tie or _bool(text_section, "tie_word_embeddings", text_defaults["tie_word_embeddings"])
    text = _text_config(text_section, tie_word_embeddings=tie)

    # `image_token_id` is an alias (LlavaConfig.attribute_map); Transformers sets it after the
    # dataclass fields, so it wins when both keys are present.
    token_key = "image_token_id" if d.get("image_token_id") is not None else "image_token_index"
    strategy = _str(top, "vision_feature_select_strategy", LLAVA_DEFAULTS["vision_feature_select_strategy"])
    if strategy not in FEATURE_SELECT_STRATEGIES:
        raise top.error(
            "vision_feature_select_strategy",
            f"must be one of {FEATURE_SELECT_STRATEGIES}, got {_shown(strategy)}",
        )
    return LlavaConfig(
        vision=vision,
        text=text,
        image_token_index=_int(top, token_key, LLAVA_DEFAULTS["image_token_index"], minimum=0),
        projector_hidden_act=_activation(top, "projector_hidden_act", LLAVA_DEFAULTS["projector_hidden_act"]),
        vision_feature_layer=_feature_layer(top, vision.num_hidden_layers),
        vision_feature_select_strategy=strategy,
        multimodal_projector_bias=_bool(top, "multimodal_projector_bias", LLAVA_DEFAULTS["multimodal_projector_bias"]),
        tie_word_embeddings=tie,
        pad_token_id=_token_id(top, "pad_token_id", LLAVA_DEFAULTS["pad_token_id"]),
    )


def _vision_config(sec: _Section) -> VisionConfig:
    """CLIPVisionConfig (ViT-L/14-336 when `vision_config` is absent, else CLIP class defaults) or
    SiglipVisionConfig (its class defaults), as `vision_config.model_type` says."""
    siglip = sec.model_type == "siglip_vision_model"
    defaults = SIGLIP_VISION_DEFAULTS if siglip else LLAVA_VISION_DEFAULTS if sec.absent else CLIP_VISION_DEFAULTS
    hidden = _int(sec, "hidden_size", defaults["hidden_size"])
    heads = _int(sec, "num_attention_heads", defaults["num_attention_heads"])
    if hidden % heads:
        raise sec.error("num_attention_heads", f"({heads}) must divide hidden_size ({hidden})")
    image_size = _int(sec, "image_size", defaults["image_size"])
    patch_size = _int(sec, "patch_size", defaults["patch_size"])
    if patch_size > image_size:
        raise sec.error("patch_size", f"({patch_size}) is larger than image_size ({image_size}): no patch fits")
    # An image_size that is no multiple of patch_size is valid: the "valid" convolution drops the pixels of the
    # last, incomplete row and column of patches (SigLIP so400m: 384 px in 27 patches of 14 px, 6 px unused).
    return VisionConfig(
        hidden_size=hidden,
        intermediate_size=_int(sec, "intermediate_size", defaults["intermediate_size"]),
        num_hidden_layers=_int(sec, "num_hidden_layers", defaults["num_hidden_layers"]),
        num_attention_heads=heads,
        num_channels=_int(sec, "num_channels", defaults["num_channels"]),
        image_size=image_size,
        patch_size=patch_size,
        hidden_act=_activation(sec, "hidden_act", defaults["hidden_act"]),
        layer_norm_eps=_float(sec, "layer_norm_eps", defaults["layer_norm_eps"]),
        model_type=sec.model_type,
        vision_use_head=_bool(sec, "vision_use_head", defaults["vision_use_head"]) if siglip else False,
    )


def _text_config(sec: _Section, tie_word_embeddings: bool) -> TextConfig:
    """LlamaConfig or Qwen2Config (as `text_config.model_type` says) with their class defaults, kv heads and
    head_dim derived as their __post_init__ and the attention modules do."""
    qwen2 = sec.model_type == "qwen2"
    defaults = QWEN2_DEFAULTS if qwen2 else LLAMA_DEFAULTS
    hidden = _int(sec, "hidden_size", defaults["hidden_size"])
    heads = _int(sec, "num_attention_heads", defaults["num_attention_heads"])
    # LlamaConfig.validate_architecture checks this even when head_dim is given explicitly.
    if hidden % heads:
        raise sec.error("num_attention_heads", f"({heads}) must divide hidden_size ({hidden})")
    # An explicit null means "as many as the query heads"; an absent field takes the class default (None for
    # Llama, which means the same; 32 for Qwen2).
    kv_default = heads if "num_key_value_heads" in sec.data else defaults["num_key_value_heads"] or heads
    kv_heads = _int(sec, "num_key_value_heads", kv_default)
    if heads % kv_heads:
        raise sec.error(
            "num_key_value_heads",
            f"({kv_heads}) must divide num_attention_heads ({heads}) for grouped-query attention",
        )
    head_dim = _int(sec, "head_dim", hidden // heads)
    if head_dim % 2:
        raise sec.error("head_dim", f"({head_dim}) must be even: RoPE rotates pairs of channels")
    layers = _int(sec, "num_hidden_layers", defaults["num_hidden_layers"])
    if qwen2:
        _check_no_sliding_window(sec, layers)
    max_positions = _int(sec, "max_position_embeddings", defaults["max_position_embeddings"])
    rope_theta, rope_scaling = _rope(sec, max_positions)
    return TextConfig(
        vocab_size=_int(sec, "vocab_size", defaults["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=_int(sec, "intermediate_size", defaults["intermediate_size"]),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_act=_activation(sec, "hidden_act", defaults["hidden_act"]),
        max_position_embeddings=max_positions,
        rms_norm_eps=_float(sec, "rms_norm_eps", defaults["rms_norm_eps"]),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        # Qwen2Attention: q, k and v projections with biases, o_proj without (its config has no such fields).
        attention_bias=False if qwen2 else _bool(sec, "attention_bias", defaults["attention_bias"]),
        mlp_bias=False if qwen2 else _bool(sec, "mlp_bias", defaults["mlp_bias"]),
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=_token_id(sec, "pad_token_id", defaults["pad_token_id"]),
        bos_token_id=_token_id(sec, "bos_token_id", defaults["bos_token_id"]),
        eos_token_id=_token_id(sec, "eos_token_id", defaults["eos_token_id"], allow_list=True),
        model_type=sec.model_type,
        qkv_bias=qwen2,
    )


def _check_no_sliding_window(sec: _Section, num_layers: int) -> None:
    """Qwen2Config.__post_init__: with `use_sliding_window`, layers from `max_window_layers` on attend only to
    the last `sliding_window` positions (unless `layer_types` says otherwise). minillava implements full
    attention only, which is what the llava checkpoints use: any sliding layer is refused here."""
    layer_types = sec.data.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or not all(
            t in ("full_attention", "sliding_attention") for t in layer_types
        ):
            raise sec.error(
                "layer_types", f"must be a list of 'full_attention' / 'sliding_attention', got {_shown(layer_types)}"
            )
        sliding = [i for i, t in enumerate(layer_types) if t == "sliding_attention"]
    else:
        on = _bool(sec, "use_sliding_window", QWEN2_DEFAULTS["use_sliding_window"])
        window = sec.data.get("sliding_window", QWEN2_DEFAULTS["sliding_window"])
        first = _int(sec, "max_window_layers", QWEN2_DEFAULTS["max_window_layers"], minimum=0)
        sliding = list(range(first, num_layers)) if on and window is not None else []
    if sliding:
        raise sec.error(
            "use_sliding_window",
            f"makes layers {sliding} sliding-window attention, which minillava does not implement (the llava "
            "checkpoints use full attention in every layer)",
        )


def _rope(sec: _Section, max_positions: int) -> tuple[float, dict | None]:
    """Resolve RoPE as `RotaryEmbeddingConfigMixin.convert_rope_params_to_dict` and
    `standardize_rope_params` do, returning (rope_theta, rope_scaling).

    - The parameters dict is `rope_scaling` (old name) if it is a non-empty dict, else
      `rope_parameters` (5.x name, what save_pretrained writes), else empty.
    - `rope_theta` inside that dict wins over a top-level `rope_theta`; the default is 10000.
    - The variant is `rope_type`, else the old key `type`, else "default".
    - llama3's `original_max_position_embeddings` defaults to `max_position_embeddings`; a top-level
      `original_max_position_embeddings` in text_config overrides the dict's value (standardize_rope_params
      runs again when the rotary embedding is built, and then prefers the attribute).
    """
    scaling = sec.data.get("rope_scaling")
    key = "rope_scaling" if scaling else "rope_parameters"
    params = sec.data.get(key)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise sec.error(key, f"must be a JSON object, got {_shown(params)}")
    rope = _Section(params, f"{sec.name}{key}.", sec.source)

    theta = _float(rope, "rope_theta", None) if "rope_theta" in params else None
    if theta is None:
        theta = _float(sec, "rope_theta", DEFAULT_ROPE_THETA)

    type_key = "rope_type" if "rope_type" in params else "type"
    rope_type = params.get(type_key, "default")
    if rope_type not in ROPE_TYPES:
        raise rope.error(type_key, f"is {_shown(rope_type)}; minillava supports the RoPE types {ROPE_TYPES}")
    if rope_type == "default":
        return theta, None  # LlamaRotaryEmbedding's default path ignores every other key

    # Transformers' linear/dynamic/llama3 rotate only partial_rotary_factor * head_dim channels; the
    # factor may sit in the RoPE dict or at the top of text_config.
    partial_sec = rope if "partial_rotary_factor" in params else sec
    partial = _float(partial_sec, "partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise partial_sec.error("partial_rotary_factor", f"is {partial}; only 1.0 (the whole head) is supported")

    scaling_fields: dict[str, Any] = {"rope_type": rope_type, "factor": _float(rope, "factor", None)}
    if rope_type == "llama3":
        scaling_fields["low_freq_factor"] = _float(rope, "low_freq_factor", None)
        scaling_fields["high_freq_factor"] = _float(rope, "high_freq_factor", None)
        original = _int(rope, "original_max_position_embeddings", max_positions)
        if sec.data.get("original_max_position_embeddings") is not None:
            original = _int(sec, "original_max_position_embeddings", None)
        scaling_fields["original_max_position_embeddings"] = original
    return theta, scaling_fields


def _feature_layer(sec: _Section, num_layers: int) -> int | tuple[int, ...]:
    """`vision_feature_layer`: an int or a list (returned as a tuple) of CLIP hidden_states indices.

    CLIP returns num_layers + 1 hidden states, so valid indices are -(num_layers + 1) .. num_layers.
    """
    key = "vision_feature_layer"
    value = sec.data.get(key, LLAVA_DEFAULTS[key])
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise sec.error(key, "is an empty list; give at least one layer index")
    for entry in entries:
        if not is_json_int(entry) or not -(num_layers + 1) <= entry <= num_layers:
            raise sec.error(
                key,
                f"must be an int or a list of ints between {-(num_layers + 1)} and {num_layers} "
                f"(the vision tower has {num_layers} layers), got {_shown(value)}",
            )
    return tuple(entries) if isinstance(value, list) else value


# The largest value an integer size field may take. A config is a small file that decides how much work and
# memory the loader asks for (`num_hidden_layers: 2**70` would loop until memory runs out), so every size is
# bounded before anything is built from it. The bounds sit far above every released model (Llama 3.1 405B:
# 126 layers, hidden 16384, MLP 53248, 128 heads; Gemma 3: vocab 262144; contexts of 10M positions; images of
# 1024 px), so a real checkpoint never meets them and a corrupt or hostile number is named at once.
SIZE_LIMITS: dict[str, int] = {
    "hidden_size": 2**16,
    "intermediate_size": 2**18,
    "num_hidden_layers": 2**10,
    "num_attention_heads": 2**10,
    "num_key_value_heads": 2**10,
    "head_dim": 2**12,
    "num_channels": 2**6,
    "image_size": 2**13,
    "patch_size": 2**13,
    "vocab_size": 2**22,
    "max_position_embeddings": 2**24,
    "original_max_position_embeddings": 2**24,
    "max_window_layers": 2**10,
}
TOKEN_ID_LIMIT = 2**31  # token ids index the embedding table (tokenizers uses 32-bit ids)


# ---------------------------------------------------------------------------------------------------
# Typed field readers: each returns the value or the default, or raises a ValueError naming the field.
# ---------------------------------------------------------------------------------------------------


class _Section:
    """One JSON object of the config, with its dotted name for error messages ("text_config.")."""

    def __init__(self, data: dict, name: str, source: str, absent: bool = False, model_type: str | None = None):
        self.data = data
        self.name = name
        self.source = source
        self.absent = absent  # True when the object was missing from the file (or null)
        self.model_type = model_type  # a sub-config's model_type (vision_config, text_config)

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.source}: `{self.name}{key}` {problem}")

    def subsection(self, key: str, model_types: tuple[str, ...]) -> _Section:
        """The sub-config `key`, which must be absent/null (the first of `model_types`) or an object whose
        `model_type` is one of `model_types` (absent: the first)."""
        value = self.data.get(key)
        if value is None:
            return _Section({}, f"{key}.", self.source, absent=True, model_type=model_types[0])
        if not isinstance(value, dict):
            raise self.error(key, f"must be a JSON object, got {_shown(value)}")
        found = value.get("model_type", model_types[0])
        sub = _Section(value, f"{self.name}{key}.", self.source, model_type=found)
        if found not in model_types:
            raise sub.error("model_type", f"is {_shown(found)}; minillava's LLaVA knows {model_types}")
        return sub


def _shown(value: Any) -> str:
    """A value for an error message, shortened (reprlib): a field holding a megabyte of JSON is named, not printed."""
    return reprlib.repr(value)


def _int(sec: _Section, key: str, default: int | None, minimum: int = 1) -> int:
    value = sec.data.get(key)
    if value is None:
        if default is None:
            raise sec.error(key, "is required")
        return default
    maximum = SIZE_LIMITS.get(key, TOKEN_ID_LIMIT - 1)
    if not is_json_int(value) or not minimum <= value <= maximum:
        raise sec.error(key, f"must be an int between {minimum} and {maximum}, got {_shown(value)}")
    return value


def _float(sec: _Section, key: str, default: float | None) -> float:
    """A positive finite number; JSON ints are accepted (`"rope_theta": 10000`). Python's json module reads
    `NaN` and `Infinity`, which no field can mean: refused with the rest."""
    value = sec.data.get(key)
    if value is None:
        if default is None:
            raise sec.error(key, "is required")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise sec.error(key, f"must be a positive finite number, got {_shown(value)}")
    return float(value)


def _bool(sec: _Section, key: str, default: bool) -> bool:
    value = sec.data.get(key, default)
    if not isinstance(value, bool):
        raise sec.error(key, f"must be true or false, got {_shown(value)}")
    return value


def _str(sec: _Section, key: str, default: str) -> str:
    value = sec.data.get(key, default)
    if not isinstance(value, str):
        raise sec.error(key, f"must be a string, got {_shown(value)}")
    return value


def _activation(sec: _Section, key: str, default: str) -> str:
    value = _str(sec, key, default)
    if value not in ACTIVATIONS:
        raise sec.error(key, f"is {_shown(value)}; supported activations are {tuple(ACTIVATIONS)}")
    return value


def _token_id(sec: _Section, key: str, default: int | None, allow_list: bool = False) -> int | tuple[int, ...] | None:
    """A special-token id: an int (negative ids such as -1 occur on the hub), null, or a list for eos."""
    value = sec.data.get(key, default)

    def token_id(v):
        return is_json_int(v) and -TOKEN_ID_LIMIT <= v < TOKEN_ID_LIMIT

    if value is None or token_id(value):
        return value
    if allow_list and isinstance(value, list) and value and all(token_id(v) for v in value):
        return tuple(value)
    kinds = "an int, a list of ints or null" if allow_list else "an int or null"
    raise sec.error(key, f"must be {kinds}, got {_shown(value)}")
