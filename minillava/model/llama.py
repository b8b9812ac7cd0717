"""The Llama language model (Touvron et al. 2023; Transformers' LlamaModel and LlamaForCausalLM).

    inputs_embeds -> N x decoder layer -> RMSNorm -> lm_head -> logits

    decoder layer:  x = x + self_attn(RMSNorm(x))      causal attention, rotary positions, KV cache
                    x = x + mlp(RMSNorm(x))            SwiGLU: down(silu(gate(x)) * up(x))

``attention`` is the attention function every layer calls: ``scaled_dot_product_attention`` (the plain one,
the default; on the CPU the model calls it through ``by_query_blocks``, which leaves out the keys a causal mask
hides from a whole block of queries), ``tiled_attention`` (attention.py: the same numbers, by blocks) or the fused
one (fused.py), as LlavaModel chooses. ``kernels`` is the set of elementwise chains the layers use (RMSNorm, the
MLP's gating, the rotation): ``PLAIN`` (the default) or ``FUSED`` (fused.py: the same numbers in fewer GPU kernels).

Shape letters: B = batch, T = new positions in this call, Tk = all key positions (cached + new),
D = hidden size, F = MLP size, H = query heads, KV = key/value heads, hd = head_dim, V = vocab.
"""

from __future__ import annotations

from .attention import attention_backward, causal_mask, merge_heads, scaled_dot_product_attention, split_heads
from .backend import xp_of
from .fused import PLAIN
from .layers import activation, activation_backward, linear, linear_param_grads, rms_norm, rms_norm_backward
from .rope import apply_rotary, apply_rotary_backward, rotary_cos_sin
from .trace import record


def embed_tokens(weight, input_ids):
    """Look up each token's row of the embedding matrix.  weight: [V, D], input_ids: [B, T] -> [B, T, D]"""
    return weight[input_ids]


def self_attention(
    params, x, cos, sin, mask, cfg, cache=None, layer=0, attention=scaled_dot_product_attention, kernels=PLAIN
):
    """LlamaAttention with rotary embeddings, grouped-query heads and an optional KV cache.

    x: [B, T, D], cos/sin: [B, T, hd], mask: [B, 1, T, Tk]  ->  [B, T, D]
    """
    q = split_heads(linear(x, **params["q_proj"]), cfg.num_attention_heads)  # [B, H, T, hd]
    k = split_heads(linear(x, **params["k_proj"]), cfg.num_key_value_heads)  # [B, KV, T, hd]
    v = split_heads(linear(x, **params["v_proj"]), cfg.num_key_value_heads)  # [B, KV, T, hd]
    q = kernels.apply_rotary(q, cos, sin)  # [B, H, T, hd]
    k = kernels.apply_rotary(k, cos, sin)  # [B, KV, T, hd]  (cached keys are stored already rotated)
    if cache is not None:
        k, v = cache.update(layer, k, v)  # [B, KV, Tk, hd]
    out = merge_heads(attention(q, k, v, mask))  # [B, T, H*hd]
    return linear(out, **params["o_proj"])  # [B, T, D]


def mlp(params, x, hidden_act="silu", kernels=PLAIN):
    """LlamaMLP, the SwiGLU feed-forward (Shazeer 2020): down(act(gate(x)) * up(x)).  [B, T, D] -> [B, T, D]"""
    gate = linear(x, **params["gate_proj"])  # [B, T, F]
    up = linear(x, **params["up_proj"])  # [B, T, F]
    h = kernels.gated_activation(gate, up, hidden_act)  # [B, T, F]  act(gate(x)) * up(x)
    return linear(h, **params["down_proj"])  # [B, T, D]


def decoder_layer(
    params, x, cos, sin, mask, cfg, cache=None, layer=0, trace=None, attention=scaled_dot_product_attention,
    kernels=PLAIN,
):  # fmt: skip
    """LlamaDecoderLayer: pre-RMSNorm attention and MLP, each added to the residual stream.  [B, T, D] -> same"""
    name = f"language_model.layers.{layer}"
    h = kernels.rms_norm(x, params["input_layernorm"]["weight"], cfg.rms_norm_eps)  # [B, T, D]
    record(trace, f"{name}.input_layernorm", h)
    h = self_attention(params["self_attn"], h, cos, sin, mask, cfg, cache, layer, attention, kernels)  # [B, T, D]
    record(trace, f"{name}.self_attn", h)
    x = x + h  # [B, T, D]
    h = kernels.rms_norm(x, params["post_attention_layernorm"]["weight"], cfg.rms_norm_eps)  # [B, T, D]
    record(trace, f"{name}.post_attention_layernorm", h)
    h = mlp(params["mlp"], h, cfg.hidden_act, kernels)  # [B, T, D]
    record(trace, f"{name}.mlp", h)
    return x + h  # [B, T, D]


def language_model(
    params, inputs_embeds, attention_mask, position_ids, inv_freq, cfg, cache=None, trace=None,
    attention=scaled_dot_product_attention, kernels=PLAIN,
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
        x = decoder_layer(layer_params, x, cos, sin, mask, cfg, cache, i, trace, attention, kernels)  # [B, T, D]
        record(trace, f"language_model.layers.{i}", x)
    if cache is not None:
        cache.advance(inputs_embeds.shape[1])
    x = kernels.rms_norm(x, params["norm"]["weight"], cfg.rms_norm_eps)  # [B, T, D]
    record(trace, "language_model.norm", x)
    return x


def lm_head(weight, hidden_states):
    """Scores over the vocabulary: hidden_states [B, T, D] @ weight^T ([V, D])  ->  logits [B, T, V]"""
    return linear(hidden_states, weight)


# ---------------------------------------------------------------------------------------------
# Backward: the gradients of a whole sequence's loss (training; no KV cache)
# ---------------------------------------------------------------------------------------------
# Each backward takes the gradient of its forward's output (dy) and the forward's own inputs, recomputes what
# it needs from them, and returns the gradient of its input and a dict of its parameters' gradients named as the
# parameters are (None with weight_grads=False: a frozen module, through which only the gradient flows, as the
# language model in LLaVA's stage 1). Recomputing a layer's insides instead of keeping them is gradient
# checkpointing (Chen et al. 2016), which LLaVA's training scripts switch on too: only the residual stream is kept
# between the passes, each layer's input and its value after the attention branch.


def self_attention_backward(dy, params, x, cos, sin, mask, cfg, weight_grads=True):
    """The backward of ``self_attention`` (eager attention, no cache): through o_proj, the attention, the
    rotations and the q/k/v projections, whose three gradients of x add up (x feeds all three).

    dy, x: [B, T, D], cos/sin: [B, T, hd], mask: [B, 1, T, T]  ->  dx [B, T, D], grads {q_proj: {weight[, bias]}, ...}
    """
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    q = apply_rotary(split_heads(linear(x, **params["q_proj"]), H), cos, sin)  # [B, H, T, hd]  (recomputed)
    k = apply_rotary(split_heads(linear(x, **params["k_proj"]), KV), cos, sin)  # [B, KV, T, hd]
    v = split_heads(linear(x, **params["v_proj"]), KV)  # [B, KV, T, hd]
    out = merge_heads(scaled_dot_product_attention(q, k, v, mask))  # [B, T, H*hd]
    grads = {}
    d_out, grads["o_proj"] = linear_param_grads(dy, out, params["o_proj"], weight_grads)  # [B, T, H*hd]
    dq, dk, dv = attention_backward(split_heads(d_out, H), q, k, v, mask)  # [B, H|KV, T, hd]
    dq = apply_rotary_backward(dq, cos, sin)  # [B, H, T, hd]  the gradient before the rotation
    dk = apply_rotary_backward(dk, cos, sin)  # [B, KV, T, hd]
    dx = 0
    for name, d in (("q_proj", dq), ("k_proj", dk), ("v_proj", dv)):
        d_x, grads[name] = linear_param_grads(merge_heads(d), x, params[name], weight_grads)  # [B, T, D]
        dx = dx + d_x
    return dx, grads if weight_grads else None


def mlp_backward(dy, params, x, hidden_act="silu", weight_grads=True):
    """The backward of the SwiGLU ``mlp``: y = down(a ⊙ u), a = act(gate(x)), u = up(x), so
    d(a ⊙ u) = down's input gradient, da = that ⊙ u, du = that ⊙ a; x's gradient sums gate's and up's.

    dy, x: [B, T, D]  ->  dx [B, T, D], grads {gate_proj: {weight}, up_proj: {weight}, down_proj: {weight}}
    """
    g = linear(x, **params["gate_proj"])  # [B, T, F]  (recomputed)
    u = linear(x, **params["up_proj"])  # [B, T, F]
    a = activation(hidden_act)(g)  # [B, T, F]
    grads = {}
    d_au, grads["down_proj"] = linear_param_grads(dy, a * u, params["down_proj"], weight_grads)  # [B, T, F]
    dg = activation_backward(hidden_act)(d_au * u, g)  # [B, T, F]
    dx_gate, grads["gate_proj"] = linear_param_grads(dg, x, params["gate_proj"], weight_grads)  # [B, T, D]
    dx_up, grads["up_proj"] = linear_param_grads(d_au * a, x, params["up_proj"], weight_grads)  # [B, T, D]
    return dx_gate + dx_up, grads if weight_grads else None


def decoder_layer_backward(dy, params, x, x1, cos, sin, mask, cfg, weight_grads=True):
    """The backward of ``decoder_layer``. With x1 = x + attn(norm1(x)) and y = x1 + mlp(norm2(x1)), the residual
    connections pass dy straight through and each branch adds its own share: dx1 = dy + (mlp∘norm2)'(x1)ᵀ dy,
    dx = dx1 + (attn∘norm1)'(x)ᵀ dx1.

    dy, x, x1: [B, T, D] (x: the layer's input, x1: the residual stream after its attention branch)
    ->  dx [B, T, D], grads named as the layer's params (None with weight_grads=False)
    """
    eps, act = cfg.rms_norm_eps, cfg.hidden_act
    norm1, norm2 = params["input_layernorm"]["weight"], params["post_attention_layernorm"]["weight"]
    h2 = rms_norm(x1, norm2, eps)  # [B, T, D]  (recomputed)
    dh2, mlp_grads = mlp_backward(dy, params["mlp"], h2, act, weight_grads)  # [B, T, D]
    d_x1, d_norm2 = rms_norm_backward(dh2, x1, norm2, eps)  # [B, T, D], [D]
    dx1 = dy + d_x1  # [B, T, D]  the residual path and the MLP branch
    h1 = rms_norm(x, norm1, eps)  # [B, T, D]  (recomputed)
    dh1, attn_grads = self_attention_backward(dx1, params["self_attn"], h1, cos, sin, mask, cfg, weight_grads)
    d_x, d_norm1 = rms_norm_backward(dh1, x, norm1, eps)  # [B, T, D], [D]
    if not weight_grads:
        return dx1 + d_x, None
    grads = {"input_layernorm": {"weight": d_norm1}, "self_attn": attn_grads,
             "post_attention_layernorm": {"weight": d_norm2}, "mlp": mlp_grads}  # fmt: skip
    return dx1 + d_x, grads  # [B, T, D]


def language_model_with_inputs(params, inputs_embeds, attention_mask, position_ids, inv_freq, cfg):
    """``language_model`` for training: the same forward (no cache), which also returns what its backward
    needs: the residual stream at each layer's input and after its attention branch (the layer's trace gives
    that branch's output), and cos, sin, mask.

    -> final hidden states [B, T, D], saved: (per layer (x, x1), each [B, T, D]; the last layer's output; cos, sin,
    mask)
    """
    cos, sin = rotary_cos_sin(position_ids, inv_freq)  # [B, T, hd] each
    mask = causal_mask(attention_mask, inputs_embeds.shape[1], 0)  # [B, 1, T, T]
    x, residuals = inputs_embeds, []  # x: [B, T, D]
    for i, layer_params in enumerate(params["layers"]):
        parts = {}
        y = decoder_layer(layer_params, x, cos, sin, mask, cfg, layer=i, trace=parts)  # [B, T, D]
        residuals.append((x, x + parts[f"language_model.layers.{i}.self_attn"]))  # x1 = x + attn(norm1(x))
        x = y
    hidden = rms_norm(x, params["norm"]["weight"], cfg.rms_norm_eps)  # [B, T, D]
    return hidden, (residuals, x, cos, sin, mask)


def language_model_backward(dhidden, params, saved, cfg, weight_grads=True):
    """The backward of ``language_model_with_inputs``: the final norm, then the layers from last to first.

    dhidden: [B, T, D] the gradient of the final hidden states; saved: what the forward returned beside them
    -> d inputs_embeds [B, T, D], grads {layers: [...], norm: {weight}} (None with weight_grads=False)
    """
    residuals, last, cos, sin, mask = saved
    dx, d_norm = rms_norm_backward(dhidden, last, params["norm"]["weight"], cfg.rms_norm_eps)  # [B, T, D]
    layer_grads = [None] * len(params["layers"])
    for i in reversed(range(len(params["layers"]))):
        x, x1 = residuals[i]
        dx, layer_grads[i] = decoder_layer_backward(dx, params["layers"][i], x, x1, cos, sin, mask, cfg, weight_grads)
    return dx, ({"layers": layer_grads, "norm": {"weight": d_norm}} if weight_grads else None)


def embed_tokens_backward(dy, weight, input_ids):
    """The backward of the lookup ``weight[input_ids]``: each row of the matrix receives the sum of the
    gradients of the positions that hold its token (``add.at`` adds repeated tokens' gradients together).

    dy: [B, T, D], weight: [V, D], input_ids: [B, T]  ->  dweight [V, D] (zero for tokens not in input_ids)
    """
    xp = xp_of(dy)
    dweight = xp.zeros(weight.shape, dtype=dy.dtype)  # [V, D]
    xp.add.at(dweight, input_ids.reshape(-1), dy.reshape(-1, dy.shape[-1]))
    return dweight
