"""Recording named intermediate activations, and the list of their names.

Model functions take an optional ``trace``: ``None`` (the default: nothing is recorded and nothing
is copied), a dict (each activation is stored under its name), or a callable ``trace(name, value)``.
Names follow the Transformers module paths of the submodule whose output the value equals
(``vision_tower.encoder.layers.3``, ``language_model.layers.10.mlp``), so parity checks against
forward hooks are mechanical. ``activation_names`` lists every name a forward records, in data-flow
order: it is the one list the parity tool, its hooks and its .npz format use.
"""

from __future__ import annotations

import re

VISION_LAYER_PARTS = ("layer_norm1", "self_attn", "layer_norm2", "mlp")  # CLIPEncoderLayer's submodules
TEXT_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")  # LlamaDecoderLayer's
STAGES = (
    "input_ids", "attention_mask", "pixel_values", "vision_tower.embeddings", "vision_tower.pre_layrnorm",
    "vision_tower.encoder.layers", "vision_features", "multi_modal_projector", "language_model.embed_tokens",
    "inputs_embeds", "language_model.layers", "language_model.norm", "lm_head",
)  # fmt: skip
"""The stages of the data flow, in order (a layer stage stands for all its layers)."""

LAYER_NAME = re.compile(r"(vision_tower\.encoder\.layers|language_model\.layers)\.(\d+)(?:\.(\w+))?$")
"""A layer's name: (stage, layer index, part or None for the layer's output)."""


def record(trace, name: str, value) -> None:
    """Give ``value`` to ``trace`` under ``name`` (a no-op when trace is None)."""
    if trace is None:
        return
    if callable(trace):
        trace(name, value)
    else:
        trace[name] = value


def activation_names(config, with_images: bool) -> list[str]:
    """Every name a forward of a model with this LlavaConfig records, in data-flow order (the vision tower's
    entries only ``with_images``; its layers up to the last one LLaVA reads)."""
    names = []
    if with_images:
        names += ["pixel_values", "vision_tower.embeddings"]
        if config.vision.has_cls_token:  # CLIP's LayerNorm before the layers (SigLIP has none)
            names.append("vision_tower.pre_layrnorm")
        for i in range(config.vision_layers_needed):
            layer = f"vision_tower.encoder.layers.{i}"
            names += [f"{layer}.{part}" for part in VISION_LAYER_PARTS] + [layer]
        names += ["vision_features", "multi_modal_projector"]
    names += ["language_model.embed_tokens", "inputs_embeds"]
    for i in range(config.text.num_hidden_layers):
        layer = f"language_model.layers.{i}"
        names += [f"{layer}.{part}" for part in TEXT_LAYER_PARTS] + [layer]
    return names + ["language_model.norm", "lm_head"]


def order_key(name: str):
    """Sort key putting trace names in data-flow order (unknown names last, alphabetically)."""
    m = LAYER_NAME.match(name)
    if m:
        parts = VISION_LAYER_PARTS if m[1].startswith("vision") else TEXT_LAYER_PARTS
        part = len(parts) if m[3] is None else parts.index(m[3]) if m[3] in parts else len(parts) + 1
        return (STAGES.index(m[1]), int(m[2]), part, name)
    if name in STAGES:
        return (STAGES.index(name), 0, 0, name)
    return (len(STAGES), 0, 0, name)
