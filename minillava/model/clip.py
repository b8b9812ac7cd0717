"""The CLIP ViT vision tower (Radford et al. 2021; Transformers' CLIPVisionModel).

    pixel_values -> patch embedding -> [CLS] + patches, + positions -> pre-LayerNorm
                 -> encoder layers (pre-LN attention and MLP, residual) -> selected hidden state(s)

LLaVA takes the hidden state of an inner layer (``vision_feature_layer``, -2 for llava-1.5), so the
layers after it are never computed, and CLIP's ``post_layernorm`` is never used. SigLIP (siglip.py),
llava-interleave's tower, is this encoder with other embeddings.

Shape letters: N = images, C = channels (3), S = image side in pixels, P = patch side,
G = S // P patches per side, Np = G * G patches, Dv = vision hidden size, Fv = MLP size,
Hv = attention heads.
"""

from __future__ import annotations

from .attention import merge_heads, scaled_dot_product_attention, split_heads
from .backend import xp_of
from .layers import activation, layer_norm, linear
from .trace import record

FEATURE_SELECT_STRATEGIES = ("default", "full")
"""`vision_feature_select_strategy`: "default" drops the first token (CLIP's CLS) from the selected features,
"full" keeps every token."""


def patch_embed(pixel_values, weight, bias=None):
    """The stride-P, P×P convolution of CLIP (no bias) and SigLIP (a bias), written as a reshape and one matmul.

    A convolution whose stride equals its kernel sees each patch exactly once, so it is a linear
    map applied to every flattened patch. Patches are ordered row by row (left to right, top to
    bottom), as the convolution's output is flattened in Transformers.

    pixel_values: [N, C, S, S], weight: [Dv, C, P, P], bias: [Dv] or None (CLIP has none)  ->  [N, Np, Dv]
    """
    N, C, S_h, S_w = pixel_values.shape
    Dv, _, P, _ = weight.shape
    Gh, Gw = S_h // P, S_w // P
    # A "valid" convolution: pixels past the last whole patch are not seen (none when P divides S).
    pixel_values = pixel_values[:, :, : Gh * P, : Gw * P]  # [N, C, Gh*P, Gw*P]
    patches = pixel_values.reshape(N, C, Gh, P, Gw, P)  # [N, C, Gh, P, Gw, P]
    patches = patches.transpose(0, 2, 4, 1, 3, 5)  # [N, Gh, Gw, C, P, P]
    patches = patches.reshape(N, Gh * Gw, C * P * P)  # [N, Np, C*P*P]
    return linear(patches, weight.reshape(Dv, C * P * P), bias)  # [N, Np, Dv]


def embeddings(params, pixel_values):
    """CLIPVisionEmbeddings: patch embeddings, a learned [CLS] token in front, learned positions added.

    pixel_values: [N, C, S, S]  ->  [N, 1 + Np, Dv]
    """
    xp = xp_of(pixel_values)
    patches = patch_embed(pixel_values, params["patch_embedding"]["weight"])  # [N, Np, Dv]
    N, _, Dv = patches.shape
    cls = params["class_embedding"].astype(patches.dtype, copy=False)  # [Dv]
    cls = xp.broadcast_to(cls, (N, 1, Dv))  # [N, 1, Dv]
    x = xp.concatenate([cls, patches], axis=1)  # [N, 1 + Np, Dv]
    return x + params["position_embedding"]["weight"].astype(x.dtype, copy=False)  # + [1 + Np, Dv]


def self_attention(params, x, n_heads, attention=scaled_dot_product_attention):
    """CLIPAttention: bidirectional multi-head attention, biases on every projection.

    x: [N, L, Dv]  ->  [N, L, Dv]   (L = 1 + Np)
    """
    q = split_heads(linear(x, **params["q_proj"]), n_heads)  # [N, Hv, L, hd]
    k = split_heads(linear(x, **params["k_proj"]), n_heads)  # [N, Hv, L, hd]
    v = split_heads(linear(x, **params["v_proj"]), n_heads)  # [N, Hv, L, hd]
    out = merge_heads(attention(q, k, v))  # [N, L, Dv]  (no mask: every patch sees every patch)
    return linear(out, **params["out_proj"])  # [N, L, Dv]


def mlp(params, x, act):
    """CLIPMLP: fc1, activation (quick_gelu for CLIP), fc2.  x: [N, L, Dv] -> [N, L, Dv]"""
    return linear(act(linear(x, **params["fc1"])), **params["fc2"])  # [N, L, Fv] -> [N, L, Dv]


def encoder_layer(
    params, x, cfg, trace=None, name="vision_tower.encoder.layers.0", attention=scaled_dot_product_attention
):
    """CLIPEncoderLayer, pre-LayerNorm: x + attn(LN1(x)), then x + mlp(LN2(x)).  [N, L, Dv] -> [N, L, Dv]"""
    eps = cfg.layer_norm_eps
    h = layer_norm(x, **params["layer_norm1"], eps=eps)  # [N, L, Dv]
    record(trace, f"{name}.layer_norm1", h)
    h = self_attention(params["self_attn"], h, cfg.num_attention_heads, attention)  # [N, L, Dv]
    record(trace, f"{name}.self_attn", h)
    x = x + h  # [N, L, Dv]
    h = layer_norm(x, **params["layer_norm2"], eps=eps)  # [N, L, Dv]
    record(trace, f"{name}.layer_norm2", h)
    h = mlp(params["mlp"], h, activation(cfg.hidden_act))  # [N, L, Dv]
    record(trace, f"{name}.mlp", h)
    return x + h  # [N, L, Dv]


def vision_tower(params, pixel_values, cfg, n_layers, trace=None, attention=scaled_dot_product_attention):
    """Run CLIP up to encoder layer ``n_layers`` and return every hidden state on the way (``attention``: the
    plain or the tiled attention function, attention.py).

    Returns the list ``hidden_states`` of Transformers' ``output_hidden_states``:
    hidden_states[0] is the embedding after pre-LayerNorm, hidden_states[i] the output of encoder
    layer i - 1; it has ``n_layers + 1`` entries, each [N, 1 + Np, Dv].
    """
    x = embeddings(params["embeddings"], pixel_values)  # [N, 1 + Np, Dv]
    record(trace, "vision_tower.embeddings", x)
    x = layer_norm(x, **params["pre_layrnorm"], eps=cfg.layer_norm_eps)  # [N, 1 + Np, Dv]
    record(trace, "vision_tower.pre_layrnorm", x)
    hidden_states = [x]
    for i in range(n_layers):
        name = f"vision_tower.encoder.layers.{i}"
        x = encoder_layer(params["encoder"]["layers"][i], x, cfg, trace, name, attention)  # [N, 1 + Np, Dv]
        record(trace, name, x)
        hidden_states.append(x)
    return hidden_states


def select_features(hidden_states, feature_layer, strategy):
    """LLaVA's choice of vision features: one or several hidden states, with or without [CLS].

    feature_layer: an index into hidden_states (negative counts from the full tower's end, so the
    caller passes it already resolved to a non-negative index) or a tuple of them, whose states
    are concatenated on the feature axis. strategy "default" drops [CLS], "full" keeps it.

    -> [N, Np, Dv * n_selected] ("default") or [N, 1 + Np, Dv * n_selected] ("full")
    """
    xp = xp_of(hidden_states[0])
    layers = feature_layer if isinstance(feature_layer, tuple) else (feature_layer,)
    selected = [hidden_states[i] for i in layers]  # each [N, 1 + Np, Dv]
    if strategy == "default":
        selected = [h[:, 1:] for h in selected]  # each [N, Np, Dv]
    return selected[0] if len(selected) == 1 else xp.concatenate(selected, axis=-1)
