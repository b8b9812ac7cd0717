"""The Llama language model (Touvron et al. 2023; Transformers' LlamaModel and LlamaForCausalLM).

    inputs_embeds -> N x decoder layer -> RMSNorm -> lm_head -> logits

    decoder layer:  x = x + self_attn(RMSNorm(x))      causal attention, rotary positions, KV cache
                    x = x + mlp(RMSNorm(x))            SwiGLU: down(silu(gate(x)) * up(x))

``attention`` is the attention function every layer calls: ``scaled_dot_product_attention`` (the plain one,
the default) or ``tiled_attention`` (attention.py: the same numbers, by blocks), as LlavaModel chooses.

Shape letters: B = batch, T = new positions in this call, Tk = all key positions (cached + new),
D = hidden size, F = MLP size, H = query heads, KV = key/value heads, hd = head_dim, V = vocab.
"""

from __future__ import annotations

from .attention import causal_mask, merge_heads, scaled_dot_product_attention, split_heads
from .layers import activation, linear, rms_norm
from .rope import apply_rotary, rotary_cos_sin
from .trace import record


def embed_tokens(weight, input_ids):
    """Look up each token's row of the embedding matrix.  weight: [V, D], input_ids: [B, T] -> [B, T, D]"""
    return weight[input_ids]


def self_attention(params, x, cos, sin, mask, cfg, cache=None, layer=0, attention=scaled_dot_product_attention):
    """LlamaAttention with rotary embeddings, grouped-query heads and an optional KV cache.

    x: [B, T, D], cos/sin: [B, T, hd], mask: [B, 1, T, Tk]  ->  [B, T, D]
    """
    q = split_heads(linear(x, **params["q_proj"]), cfg.num_attention_heads)  # [B, H, T, hd]
    k = split_heads(linear(x, **params["k_proj"]), cfg.num_key_value_heads)  # [B, KV, T, hd]
    v = split_heads(linear(x, **params["v_proj"]), cfg.num_key_value_heads)  # [B, KV, T, hd]
    q = apply_rotary(q, cos, sin)  # [B, H, T, hd]
    k = apply_rotary(k, cos, sin)  # [B, KV, T, hd]  (cached keys are stored already rotated)
    if cache is not None:
        k, v = cache.update(layer, k, v)  # [B, KV, Tk, hd]
    out = merge_heads(attention(q, k, v, mask))  # [B, T, H*hd]
    return linear(out, **params["o_proj"])  # [B, T, D]


def mlp(params, x, hidden_act="silu"):
    """LlamaMLP, the SwiGLU feed-forward (Shazeer 2020): down(act(gate(x)) * up(x)).  [B, T, D] -> [B, T, D]"""
    gate = activation(hidden_act)(linear(x, **params["gate_proj"]))  # [B, T, F]
    up = linear(x, **params["up_proj"])  # [B, T, F]
    gate *= up  # [B, T, F]  act(gate(x)) * up(x), in place: both are this function's own arrays
    return linear(gate, **params["down_proj"])  # [B, T, D]


def decoder_layer(
    params, x, cos, sin, mask, cfg, cache=None, layer=0, trace=None, attention=scaled_dot_product_attention
):
    """LlamaDecoderLayer: pre-RMSNorm attention and MLP, each added to the residual stream.  [B, T, D] -> same"""
    name = f"language_model.layers.{layer}"
    h = rms_norm(x, params["input_layernorm"]["weight"], cfg.rms_norm_eps)  # [B, T, D]
    record(trace, f"{name}.input_layernorm", h)
    h = self_attention(params["self_attn"], h, cos, sin, mask, cfg, cache, layer, attention)  # [B, T, D]
    record(trace, f"{name}.self_attn", h)
    x = x + h  # [B, T, D]
    h = rms_norm(x, params["post_attention_layernorm"]["weight"], cfg.rms_norm_eps)  # [B, T, D]
    record(trace, f"{name}.post_attention_layernorm", h)
    h = mlp(params["mlp"], h, cfg.hidden_act)  # [B, T, D]
    record(trace, f"{name}.mlp", h)
    return x + h  # [B, T, D]


def language_model(
    params, inputs_embeds, attention_mask, position_ids, inv_freq, cfg, cache=None, trace=None,
    attention=scaled_dot_product_attention,
):  # fmt: skip
    """LlamaModel: all decoder layers and the final norm.

    inputs_embeds: [B, T, D]; attention_mask: [B, Tk] (1 = real token, 0 = padding; Tk counts
    cached positions too); position_ids: [B, T]; inv_freq: [hd/2] from rope.inverse_frequencies.
    Returns the final hidden states [B, T, D]. With a cache, the new K/V are written into it and
    its length moves on by T.
    """
    start = 0 if cache is None else cache.length
    cos, sin = rotary_cos_sin(position_ids, inv_freq)  # [B, T, hd] each
    mask = causal_mask(attention_mask, inputs_embeds.shape[1], start)  # [B, 1, T, Tk]
    x = inputs_embeds  # [B, T, D]
    for i, layer_params in enumerate(params["layers"]):
        x = decoder_layer(layer_params, x, cos, sin, mask, cfg, cache, i, trace, attention)  # [B, T, D]
        record(trace, f"language_model.layers.{i}", x)
    if cache is not None:
        cache.advance(inputs_embeds.shape[1])
    x = rms_norm(x, params["norm"]["weight"], cfg.rms_norm_eps)  # [B, T, D]
    record(trace, "language_model.norm", x)
    return x


def lm_head(weight, hidden_states):
    """Scores over the vocabulary: hidden_states [B, T, D] @ weight^T ([V, D])  ->  logits [B, T, V]"""
    return linear(hidden_states, weight)
