"""Isolated differences: each module recomputed by minillava from one side's own input to it.

An entry's end-to-end difference mixes two things: what the module itself gets wrong, and the error of its
input, which every module upstream has added to (float16 drift grows layer by layer, so the first row over a
tolerance is often innocent). To tell them apart, minillava recomputes each module from the input that side
fed it, the entries the side traced before it, and compares the side's output with that:

    isolated difference of m = side's m  vs  minillava's m (side's inputs of m)

A module that is right gives, fed the same input, the same output up to one module's rounding; a module that
is wrong differs however clean its input. So the first module out of tolerance in isolation is the culprit,
and a row out of tolerance end to end but not in isolation only inherits the drift.

Which side: the one minillava did not compute itself. ``minillava parity compare`` recomputes the candidate's
(your port's) modules with minillava standing for the reference; ``minillava parity`` (minillava against
Transformers) feeds minillava's modules Transformers' inputs and compares with Transformers' outputs (minillava
recomputing from its own inputs would only repeat itself).

``RECIPES`` is the one table: each entry, the entries it is recomputed from and the function that recomputes it,
with the checkpoint's weights (``model.params``) in the model's dtype and on its device. Every function is
called through the model module whose code the forward runs (``llava.select_features`` is what LlavaModel
calls, ``model.kernels.rms_norm`` what a decoder layer calls: the plain one, or the fused one with
fused_kernels=True), so that the recompute runs exactly what minillava's forward runs. Positions are 0 .. T - 1,
as in a plain forward (Transformers' too); padding positions of the inputs are set to 0 first: every module masks
or ignores them, and a NaN there would spread through attention's 0 x NaN.

Shape letters: N = images, L = vision tokens (CLS + patches for CLIP), Li = image tokens per image, Dv = vision
width (Dv' with several selected layers), B = batch, T = positions, D = text width, hd = head_dim, V = vocab;
``*`` either tower's leading axis (N or B).
"""

from __future__ import annotations

import numpy as np

from ..model import backend, clip, llama, llava, siglip
from ..model.trace import LAYER_NAME
from .compare import Isolated, is_sequence, measure, real_positions, shape_text, tolerance_for

VISION_TOWERS = {"clip_vision_model": clip, "siglip_vision_model": siglip}  # the module of each vision tower

# -- the recomputes: f(model, i, *inputs) -> output (i: the layer index, None outside the layers) ------------------


def vision_embeddings(model, i, pixel_values):
    tower = VISION_TOWERS[model.config.vision.model_type]
    return tower.embeddings(model.params["vision_tower"]["embeddings"], pixel_values)  # [N, L, Dv]


def pre_layrnorm(model, i, x):
    params, eps = model.params["vision_tower"]["pre_layrnorm"], model.config.vision.layer_norm_eps
    return clip.layer_norm(x, **params, eps=eps)  # [N, L, Dv]


def _vision_layer(model, i):
    return model.params["vision_tower"]["encoder"]["layers"][i]


def layer_norm1(model, i, x):
    params, eps = _vision_layer(model, i)["layer_norm1"], model.config.vision.layer_norm_eps
    return clip.layer_norm(x, **params, eps=eps)  # [N, L, Dv]


def vision_self_attn(model, i, h):
    heads = model.config.vision.num_attention_heads
    return clip.self_attention(_vision_layer(model, i)["self_attn"], h, heads, model.attention)  # [N, L, Dv]


def layer_norm2(model, i, x, attn):
    x = x + attn  # [N, L, Dv]  the residual stream after the attention branch, as CLIPEncoderLayer adds it
    params, eps = _vision_layer(model, i)["layer_norm2"], model.config.vision.layer_norm_eps
    return clip.layer_norm(x, **params, eps=eps)  # [N, L, Dv]


def vision_mlp(model, i, h):
    act = clip.activation(model.config.vision.hidden_act)
    return clip.mlp(_vision_layer(model, i)["mlp"], h, act)  # [N, L, Dv]


def residual_adds(model, i, x, attn, mlp):
    """A layer's output from its input and its two branches: what is left of a layer once its parts are checked."""
    x = x + attn  # [*, L, D]
    return x + mlp  # [*, L, D]


def vision_layer(model, i, x):
    return clip.encoder_layer(_vision_layer(model, i), x, model.config.vision, attention=model.attention)  # [N, L, Dv]


def vision_features(model, i, *hidden_states):
    """The selected hidden states, passed as a list of their own (so index k of that list is the k-th selected)."""
    cfg = model.config
    selected = tuple(range(len(hidden_states))) if isinstance(cfg.vision_feature_index, tuple) else 0
    return llava.select_features(list(hidden_states), selected, cfg.vision_feature_select_strategy)  # [N, Li, Dv']


def projector(model, i, features):
    params, act = model.params["multi_modal_projector"], model.config.projector_hidden_act
    return llava.multi_modal_projector(params, features, act)  # [N, Li, D]


def embed_tokens(model, i, input_ids):
    weight = model.params["language_model"]["embed_tokens"]["weight"]  # [V, D]
    return llava.embed_tokens(weight, input_ids).astype(model.dtype, copy=False)  # [B, T, D]


def merge(model, i, embeds, image_features, input_ids):
    return llava.merge_image_features(embeds, input_ids, image_features, model.config.image_token_index)  # [B, T, D]


def text_only(model, i, embeds, input_ids):
    """A prompt without images: the embeddings go in unchanged (and so must hold no image token)."""
    n_image_tokens = int((input_ids == model.config.image_token_index).sum())
    if n_image_tokens:
        raise ValueError(f"input_ids hold {n_image_tokens} image tokens, but the trace has no multi_modal_projector")
    return embeds  # [B, T, D]


def _text_layer(model, i):
    return model.params["language_model"]["layers"][i]


def _positions_and_mask(model, attention_mask, T):
    """cos, sin [B, T, hd] of positions 0 .. T - 1 (a plain forward's) and the causal mask [B, 1, T, T]."""
    xp = backend.xp_of(attention_mask)
    position_ids = xp.broadcast_to(xp.arange(T), attention_mask.shape)  # [B, T]
    cos, sin = llama.rotary_cos_sin(position_ids, model.inv_freq)  # [B, T, hd] each
    return cos, sin, llama.causal_mask(attention_mask, T, 0)  # ..., [B, 1, T, T]


def input_layernorm(model, i, x):
    weight, eps = _text_layer(model, i)["input_layernorm"]["weight"], model.config.text.rms_norm_eps
    return model.kernels.rms_norm(x, weight, eps)  # [B, T, D]


def text_self_attn(model, i, h, attention_mask):
    cos, sin, mask = _positions_and_mask(model, attention_mask, h.shape[1])
    params, cfg = _text_layer(model, i)["self_attn"], model.config.text
    return llama.self_attention(params, h, cos, sin, mask, cfg, attention=model.attention, kernels=model.kernels)


def post_attention_layernorm(model, i, x, attn):
    x = x + attn  # [B, T, D]  the residual stream after the attention branch
    weight, eps = _text_layer(model, i)["post_attention_layernorm"]["weight"], model.config.text.rms_norm_eps
    return model.kernels.rms_norm(x, weight, eps)  # [B, T, D]


def text_mlp(model, i, h):
    return llama.mlp(_text_layer(model, i)["mlp"], h, model.config.text.hidden_act, model.kernels)  # [B, T, D]


def text_layer(model, i, x, attention_mask):
    cos, sin, mask = _positions_and_mask(model, attention_mask, x.shape[1])
    return llama.decoder_layer(_text_layer(model, i), x, cos, sin, mask, model.config.text, layer=i,
                               attention=model.attention, kernels=model.kernels)  # [B, T, D]  # fmt: skip


def final_norm(model, i, x):
    weight, eps = model.params["language_model"]["norm"]["weight"], model.config.text.rms_norm_eps
    return model.kernels.rms_norm(x, weight, eps)  # [B, T, D]


def lm_head(model, i, x):
    return llava.lm_head(model.params["lm_head"]["weight"], x)  # [B, T, V]


# -- the table -------------------------------------------------------------------------------------------------------

# entry: its recipes, tried in order; the first whose inputs the trace holds is used. "*" in an entry is a layer
# index. In the inputs, "<in>" is that layer's input (the previous layer's output; before layer 0, pre_layrnorm
# for CLIP, the embeddings for SigLIP, inputs_embeds for the language model), ".part" a part of the same layer,
# "<selected>" the vision hidden state(s) LLaVA selects, "<last>" the last language model layer's output.
RECIPES = {
    "vision_tower.embeddings": [(("pixel_values",), vision_embeddings)],
    "vision_tower.pre_layrnorm": [(("vision_tower.embeddings",), pre_layrnorm)],
    "vision_tower.encoder.layers.*.layer_norm1": [(("<in>",), layer_norm1)],
    "vision_tower.encoder.layers.*.self_attn": [((".layer_norm1",), vision_self_attn)],
    "vision_tower.encoder.layers.*.layer_norm2": [(("<in>", ".self_attn"), layer_norm2)],
    "vision_tower.encoder.layers.*.mlp": [((".layer_norm2",), vision_mlp)],
    "vision_tower.encoder.layers.*": [
        (("<in>", ".self_attn", ".mlp"), residual_adds),
        (("<in>",), vision_layer),
    ],
    "vision_features": [(("<selected>",), vision_features)],
    "multi_modal_projector": [(("vision_features",), projector)],
    "language_model.embed_tokens": [(("input_ids",), embed_tokens)],
    "inputs_embeds": [
        (("language_model.embed_tokens", "multi_modal_projector", "input_ids"), merge),
        (("language_model.embed_tokens", "input_ids"), text_only),
    ],
    "language_model.layers.*.input_layernorm": [(("<in>",), input_layernorm)],
    "language_model.layers.*.self_attn": [((".input_layernorm", "attention_mask"), text_self_attn)],
    "language_model.layers.*.post_attention_layernorm": [(("<in>", ".self_attn"), post_attention_layernorm)],
    "language_model.layers.*.mlp": [((".post_attention_layernorm",), text_mlp)],
    "language_model.layers.*": [
        (("<in>", ".self_attn", ".mlp"), residual_adds),
        (("<in>", "attention_mask"), text_layer),
    ],
    "language_model.norm": [(("<last>",), final_norm)],
    "lm_head": [(("language_model.norm",), lm_head)],
}  # fmt: skip


def vision_state_name(index: int, config) -> str:
    """The entry of vision hidden_states[index]: what feeds layer 0 for index 0, else layer index - 1's output."""
    if index > 0:
        return f"vision_tower.encoder.layers.{index - 1}"
    return "vision_tower.pre_layrnorm" if config.vision.has_cls_token else "vision_tower.embeddings"


def resolve_inputs(name: str, inputs: tuple[str, ...], config) -> tuple[list[str], int | None]:
    """A recipe's input placeholders as the entry names of ``name``'s -> (names, layer index or None)."""
    m = LAYER_NAME.match(name)
    stage, i = (m[1], int(m[2])) if m else (None, None)
    names = []
    for entry in inputs:
        if entry == "<in>":
            first = "inputs_embeds" if stage == "language_model.layers" else vision_state_name(0, config)
            names.append(f"{stage}.{i - 1}" if i > 0 else first)
        elif entry.startswith("."):
            names.append(f"{stage}.{i}{entry}")
        elif entry == "<selected>":
            index = config.vision_feature_index
            names += [vision_state_name(k, config) for k in (index if isinstance(index, tuple) else (index,))]
        elif entry == "<last>":
            names.append(f"language_model.layers.{config.text.num_hidden_layers - 1}")
        else:
            names.append(entry)
    return names, i


def recipes_of(name: str) -> list:
    """The recipes of an entry: its own, or its layer pattern's (the index replaced by "*")."""
    m = LAYER_NAME.match(name)
    if m is None:
        return RECIPES.get(name, [])
    part = f".{m[3]}" if m[3] else ""  # a layer's part, or nothing for the layer's output
    return RECIPES.get(f"{m[1]}.*{part}", [])


def recompute_inputs(model, trace: dict, names: list[str]) -> list:
    """The trace's entries ``names`` as the model's arrays: floats in its dtype, ints as they are, on its device;
    the padding positions of sequence entries set to 0."""
    mask = trace.get("attention_mask")
    mask = None if mask is None else np.asarray(mask).astype(bool)  # [B, T]
    arrays = []
    for name in names:
        value = np.asarray(trace[name])
        if value.dtype.kind == "f":
            if is_sequence(name) and mask is not None and value.shape[:2] == mask.shape:
                value = np.where(mask[..., None], value, 0)  # [B, T, ...]  padding: masked, maybe NaN
            value = model.xp.asarray(value, dtype=model.dtype)
        else:
            value = model.xp.asarray(value)
        arrays.append(value)
    return arrays


def isolated_differences(model, trace: dict, tol: float, logits_tol: float, overrides=()) -> dict:
    """Every entry of ``trace`` that has a recipe whose inputs ``trace`` holds, recomputed by minillava's ``model``
    from them and compared with the trace's own value -> {name: Isolated}.

    Sequence entries are compared at the trace's real positions (its attention_mask). An input minillava cannot
    compute with (a shape its weights do not fit, an upstream entry of another shape) gives status "n/a" and the
    reason, not an exception.
    """
    mask = trace.get("attention_mask")
    mask = None if mask is None else np.asarray(mask).astype(bool)  # [B, T]
    out = {}
    for name, value in trace.items():
        if isinstance(value, str) or np.asarray(value).dtype.kind != "f":
            continue  # the inputs and the strings of a .npz
        for inputs, recompute in recipes_of(name):
            names, i = resolve_inputs(name, inputs, model.config)
            if all(n in trace for n in names):
                out[name] = _isolated(model, trace, name, names, i, recompute, mask, tol, logits_tol, overrides)
                break
    return out


def _isolated(model, trace, name, names, i, recompute, mask, tol, logits_tol, overrides) -> Isolated:
    row = Isolated(tuple(names), tol=tolerance_for(name, tol, logits_tol, overrides))
    try:
        recomputed = backend.to_numpy(recompute(model, i, *recompute_inputs(model, trace, names)))
    except Exception as err:  # a bad input shape from upstream: say so on the row, keep going
        row.status, row.message = "n/a", f"minillava could not recompute it: {type(err).__name__}: {err}"
        return row
    value = np.asarray(trace[name])
    if value.shape != recomputed.shape:
        row.status = "FAIL"
        row.message = f"shape mismatch: traced {shape_text(value)}, recomputed {shape_text(recomputed)}"
        return row
    recomputed, value = real_positions(name, recomputed, mask), real_positions(name, value, mask)
    row.max_abs, row.rel, row.cosine, row.nmse_db = measure(recomputed, value)
    if not (row.rel <= row.tol):  # NaN fails too
        row.status = "FAIL"
    return row
