"""Checkpoint files for the weight-loading tests, written by hand from a tiny LlavaForConditionalGeneration: every
key layout (Transformers' save_pretrained, the hub's llava-hf names, the in-memory state_dict names), single-file or
sharded, and raw safetensors files with any header."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=28,
    patch_size=14,
)
TEXT = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LAYOUTS = ("save_pretrained", "hub", "memory")


def build_model(seed=0, **config_kwargs):
    """A tiny LlavaForConditionalGeneration with random weights (biases and norms randomised too)."""
    text = dict(TEXT, **config_kwargs.pop("text", {}))
    config = transformers.LlavaConfig(vision_config=VISION, text_config=text, image_token_index=99, **config_kwargs)
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # ones/zeros from init would hide mix-ups between norms and biases
            p.normal_()
    return model


def canonical_from_memory(key):
    """In-memory state_dict key -> canonical key, written out independently of minillava."""
    return key[len("model.") :] if key.startswith("model.") else key


def hub_key(key):
    """In-memory state_dict key -> the name it has in a llava-hf hub folder."""
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    for old, new in (
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.language_model.", "language_model.model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if key.startswith(old):
            return new + key[len(old) :]
    raise AssertionError(key)


def write_checkpoint(folder, tensors, config, num_shards=1):
    """Write tensors as model.safetensors, or as shards + model.safetensors.index.json, plus config.json."""
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    if num_shards == 1:
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    weight_map = {}
    for i in range(num_shards):
        shard = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[i::num_shards]}
        save_file(part, os.path.join(folder, shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def save_layout(model, folder, layout, sharded):
    """Save `model` in one key layout, single-file or sharded."""
    if layout == "save_pretrained":
        model.save_pretrained(folder, max_shard_size="20KB" if sharded else "5GB")
        return
    state = model.state_dict()
    if layout == "hub":
        tensors = {hub_key(k): v for k, v in state.items()}
        positions = model.config.vision_config.image_size // model.config.vision_config.patch_size
        tensors["vision_tower.vision_model.embeddings.position_ids"] = torch.arange(positions**2 + 1)[None]
    else:
        tensors = dict(state)
    write_checkpoint(folder, tensors, model.config, num_shards=3 if sharded else 1)


def raw_safetensors(path, tensors, metadata=None):
    """Write a safetensors file by hand: tensors = {name: (dtype name, shape, raw bytes)}."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


F32_ONES = ("F32", (4,), np.ones(4, np.float32).tobytes())
KEY = "multi_modal_projector.linear_1.bias"
