"""What the model is: its configuration as three small frozen dataclasses.

``LlavaConfig`` holds the vision tower's sizes (``VisionConfig``: CLIP for llava-1.5, SigLIP for
llava-interleave), the language model's (``TextConfig``: Llama for llava-1.5, Qwen2 for llava-interleave)
and LLaVA's own fields: which image token, which projector activation, which vision layer(s) and tokens
become image features. The model reads these fields; where they come from (a
checkpoint's config.json, with every omitted field filled as Transformers fills it) is
``minillava.loading.config``.

The fields keep Transformers' names where they are short already (``hidden_size``, ``patch_size``, ...); the
three that minillava shortens answer to Transformers' names too, as read-only aliases of the one field
(``config.vision_config`` is ``config.vision``, ``config.text_config`` is ``config.text``,
``config.image_token_id`` is ``config.image_token_index``), so code written for Transformers reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

VISION_TOWERS = ("clip_vision_model", "siglip_vision_model")  # vision_config.model_type: CLIP or SigLIP
LANGUAGE_MODELS = ("llama", "qwen2")  # text_config.model_type: Llama (Vicuna) or Qwen2 (Qwen1.5, Qwen2)


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower (Transformers' `CLIPVisionConfig` or `SiglipVisionConfig`).

    `model_type` is "clip_vision_model" (a CLS token in front of the patches, a pre-LayerNorm) or
    "siglip_vision_model" (patches only, a patch embedding with bias, no pre-LayerNorm). `vision_use_head`:
    a SigLIP checkpoint carries the attention-pooling head's weights (LLaVA never runs it).
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    hidden_act: str
    layer_norm_eps: float
    model_type: str = "clip_vision_model"
    vision_use_head: bool = False

    @property
    def has_cls_token(self) -> bool:
        """CLIP puts a learned CLS token in front of the patches; SigLIP has none."""
        return self.model_type == "clip_vision_model"

    @property
    def head_dim(self) -> int:
        """Width of one attention head (CLIP has no separate head_dim field)."""
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        """Patches per image: a (image_size // patch_size)² grid, 576 for 336 px and 14 px patches."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        """Tokens the tower outputs, each with its position embedding: one per patch, plus CLS (CLIP)."""
        return self.num_patches + (1 if self.has_cls_token else 0)


@dataclass(frozen=True)
class TextConfig:
    """The language model (Transformers' `LlamaConfig` or `Qwen2Config`), with the derived fields resolved.

    Qwen2's decoder layer is Llama's with biases on the q, k and v projections (`qkv_bias`; o_proj has
    none), so `model_type` "qwen2" changes only fields: `attention_bias` (Llama's: every projection of the
    attention has a bias) is False and `qkv_bias` True.

    `rope_scaling` is None for plain RoPE, else a dict with `rope_type` and exactly the fields that
    variant needs: {"rope_type": "linear" | "dynamic", "factor"} or {"rope_type": "llama3", "factor",
    "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}. The base is always
    `rope_theta`.

    `tie_word_embeddings` is the effective value for the LLaVA model (see `LlavaConfig`), which may
    differ from the `text_config.tie_word_embeddings` Transformers stores.

    `eos_token_id` is an int, a tuple of ints (a list in the JSON), or None.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_act: str
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    attention_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    pad_token_id: int | None
    bos_token_id: int | None
    eos_token_id: int | tuple[int, ...] | None
    model_type: str = "llama"
    qkv_bias: bool = False


@dataclass(frozen=True)
class LlavaConfig:
    """LLaVA: a vision tower (CLIP or SigLIP), a two-layer projector and a language model (Llama or Qwen2).

    `vision_feature_layer` is an index into the vision tower's `hidden_states` (see `vision_layers_needed`),
    or a tuple of them whose features are concatenated.

    `tie_word_embeddings` decides whether `lm_head.weight` is `embed_tokens.weight`. In Transformers 5.24
    `LlavaForConditionalGeneration` ties when its own config's `tie_word_embeddings` is true
    (`PreTrainedModel.get_expanded_tied_weights_keys`), and `LlavaConfig.__post_init__` sets that to true
    whenever `text_config.tie_word_embeddings` is true. So the effective value is
    `top-level OR text_config`; a top-level `false` cannot switch off a `true` in text_config. Both
    `tie_word_embeddings` fields here hold that effective value.
    """

    vision: VisionConfig
    text: TextConfig
    image_token_index: int
    projector_hidden_act: str
    vision_feature_layer: int | tuple[int, ...]
    vision_feature_select_strategy: str
    multimodal_projector_bias: bool
    tie_word_embeddings: bool
    pad_token_id: int | None

    # Transformers' names for three fields, so that `model.config.vision_config.patch_size` and the like work as
    # they do on `LlavaForConditionalGeneration`. Properties, not fields: the value lives in one place.

    @property
    def vision_config(self) -> VisionConfig:
        """Transformers' name for `vision` (LlavaConfig.vision_config)."""
        return self.vision

    @property
    def text_config(self) -> TextConfig:
        """Transformers' name for `text` (LlavaConfig.text_config)."""
        return self.text

    @property
    def image_token_id(self) -> int:
        """Transformers' name for `image_token_index` (LlavaConfig has both, one the alias of the other)."""
        return self.image_token_index

    @property
    def num_image_tokens(self) -> int:
        """Feature vectors per image: every token of the tower ("full") or all but the first ("default", which
        drops CLIP's CLS). 576 for llava-1.5 (CLIP, default), 729 for llava-interleave (SigLIP, full)."""
        drop_first = 1 if self.vision_feature_select_strategy == "default" else 0
        return self.vision.num_positions - drop_first

    @property
    def vision_layers_needed(self) -> int:
        """How many vision encoder layers must run to produce the selected hidden state(s).

        `hidden_states[0]` is the embeddings (after CLIP's `pre_layrnorm`), `hidden_states[i]` the output of
        encoder layer i - 1, so index i needs i layers; a negative index counts from
        num_hidden_layers + 1 (-2 with 24 layers is hidden_states[23]: 23 layers).
        """
        index = self.vision_feature_index
        return max(index) if isinstance(index, tuple) else index

    @property
    def vision_feature_index(self) -> int | tuple[int, ...]:
        """`vision_feature_layer` as non-negative indices into `hidden_states` (an int, or a tuple for a list).

        `hidden_states` holds num_hidden_layers + 1 entries, so -2 with CLIP ViT-L's 24 layers is 23.
        """
        num_states = self.vision.num_hidden_layers + 1
        layers = self.vision_feature_layer
        if isinstance(layers, tuple):
            return tuple(index % num_states for index in layers)
        return layers % num_states
