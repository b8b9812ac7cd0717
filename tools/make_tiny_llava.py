"""Build tiny random LLaVA checkpoints with Transformers, laid out exactly like the real ones.

The test suite compares minillava with Transformers on these: the folders are written by
``LlavaForConditionalGeneration.save_pretrained`` (config.json, model.safetensors or shards with
``model.safetensors.index.json``), then optionally re-keyed into the other layouts real checkpoints
use:

- ``fresh``:    what Transformers 5.x writes for a model built from scratch
                (``language_model.model.*``, ``language_model.lm_head.*``, ``vision_tower.embeddings.*``)
- ``hub``:      the published llava-hf layout (``vision_tower.vision_model.*`` and its unused
                ``embeddings.position_ids`` buffer)
- ``internal``: the in-memory names (``model.language_model.*``, ``model.vision_tower.*``,
                ``model.multi_modal_projector.*``, ``lm_head.*``)

Weights are drawn at a scale where every module changes its input visibly (Transformers' own init
is so small that a tiny model's logits are almost constant, which would hide bugs).

Usage:  python tools/make_tiny_llava.py OUT_DIR [--variant base] [--layout hub] [--dtype float16] [--shard]
Tests use ``checkpoint(variant, layout, dtype, shard)``, which caches folders under ``.fixtures/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".fixtures"

# Tiny sizes that still exercise every code path: a 28 px image cut into 7 px patches (16 patches),
# 3 CLIP layers, a Llama with grouped-query attention (4 query heads sharing 2 key/value heads).
BASE = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "image_size": 28,
        "patch_size": 7,
        "projection_dim": 16,
    },
    "text_config": {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
    },
    "image_token_index": 100,
    "pad_token_id": 101,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
}

# Each variant changes BASE in one way that real checkpoints vary.
VARIANTS = {
    "base": {},
    "layer_list": {"vision_feature_layer": [-3, -1]},
    "full": {"vision_feature_select_strategy": "full"},
    "mha": {"text_config": {"num_key_value_heads": 4}},
    "no_projector_bias": {"multimodal_projector_bias": False},
    "biases": {"text_config": {"attention_bias": True, "mlp_bias": True}},
    "rope_linear": {"text_config": {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}}},
    "rope_llama3": {
        "text_config": {
            "rope_parameters": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 50000.0,
            }
        }
    },
    "head_dim": {"text_config": {"head_dim": 16}},
    "tied": {"tie_word_embeddings": True, "text_config": {"tie_word_embeddings": True}},
    "layer_0": {"vision_feature_layer": 0},
    # With processor files (tools/make_tiny_tokenizer.py): a 382-token tokenizer whose <image> is 380 and
    # <pad> 381, as llava-hf's are 32000 and 32001; the vocabulary is padded to 384 as llava's to 32064.
    "chat": {"text_config": {"vocab_size": 384}, "image_token_index": 380, "pad_token_id": 381},
}

LAYOUTS = ("fresh", "hub", "internal")
DTYPES = ("float32", "float16", "bfloat16")


def variant_config(variant: str) -> dict:
    """The LlavaConfig kwargs of a variant: BASE with the variant's changes merged in."""
    cfg = json.loads(json.dumps(BASE))
    for key, value in VARIANTS[variant].items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def build_model(variant: str = "base", seed: int = 0):
    """A random LlavaForConditionalGeneration (float32, eval mode) for a variant."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig(**variant_config(variant))).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):  # LayerNorm / RMSNorm scales
                value = 1.0 + 0.2 * torch.randn(param.shape, generator=generator)
            elif name.endswith("bias"):
                value = 0.2 * torch.randn(param.shape, generator=generator)
            elif param.ndim >= 2 and "embed" not in name:
                fan_in = param[0].numel()
                value = torch.randn(param.shape, generator=generator) / fan_in**0.5
            else:  # token, class and position embeddings
                value = torch.randn(param.shape, generator=generator)
            param.copy_(value)
    return model


def _rekey(key: str, layout: str) -> str:
    """A key as save_pretrained writes it ('fresh') -> the same tensor's key in another layout."""
    if layout == "fresh":
        return key
    if layout == "hub":
        if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
            return "vision_tower.vision_model." + key[len("vision_tower.") :]
        return key
    if layout == "internal":
        if key.startswith("language_model.lm_head."):
            return key[len("language_model.") :]
        if key.startswith("language_model.model."):
            return "model.language_model." + key[len("language_model.model.") :]
        if key.startswith("vision_tower.vision_model."):
            return "model.vision_tower." + key[len("vision_tower.vision_model.") :]
        return "model." + key
    raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")


def save_checkpoint(model, out_dir, layout: str = "fresh", dtype: str = "float32", shard: bool = False) -> Path:
    """Save ``model`` with save_pretrained in ``dtype``, sharded or not, then re-key into ``layout``."""
    import torch
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    copy = type(model)(model.config).eval()
    copy.load_state_dict(model.state_dict())
    copy = copy.to(getattr(torch, dtype))
    # A tiny model is ~100 kB: 40 kB shards give several files and an index, as the 7B's 3 shards do.
    copy.save_pretrained(out_dir, max_shard_size="40KB" if shard else "10GB")

    files = sorted(out_dir.glob("*.safetensors"))
    if shard and len(files) < 2:
        raise RuntimeError(f"expected several shards in {out_dir}, got {files}")
    renames = {}
    for file in files:
        tensors = load_file(file)
        renamed = {_rekey(k, layout): v.contiguous() for k, v in tensors.items()}
        if layout == "hub" and "vision_tower.vision_model.embeddings.patch_embedding.weight" in renamed:
            # The published checkpoints carry CLIP's position_ids buffer; loaders must ignore it.
            n_positions = model.config.vision_config.image_size // model.config.vision_config.patch_size
            renamed["vision_tower.vision_model.embeddings.position_ids"] = torch.arange(n_positions**2 + 1).unsqueeze(0)
        renames.update({k: _rekey(k, layout) for k in tensors})
        save_file(renamed, file, metadata={"format": "pt"})
    index_path = out_dir / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        weight_map = {renames[k]: f for k, f in index["weight_map"].items()}
        if layout == "hub":
            patch_file = weight_map.get("vision_tower.vision_model.embeddings.patch_embedding.weight")
            if patch_file is not None:
                weight_map["vision_tower.vision_model.embeddings.position_ids"] = patch_file
        index["weight_map"] = dict(sorted(weight_map.items()))
        index_path.write_text(json.dumps(index, indent=2))
    return out_dir


def checkpoint(variant: str = "base", layout: str = "fresh", dtype: str = "float32", shard: bool = False) -> Path:
    """A cached checkpoint folder under .fixtures/ (rebuilt when this file or Transformers changes)."""
    import transformers

    sources = Path(__file__).read_bytes() + (Path(__file__).parent / "make_tiny_tokenizer.py").read_bytes()
    stamp = hashlib.sha256(sources + transformers.__version__.encode()).hexdigest()[:12]
    name = f"{variant}-{layout}-{dtype}{'-sharded' if shard else ''}"
    folder = CACHE / name
    stamp_file = folder / ".stamp"
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return folder
    save_checkpoint(build_model(variant), folder, layout=layout, dtype=dtype, shard=shard)
    if variant == "chat":
        import make_tiny_tokenizer

        make_tiny_tokenizer.write_processor_files(folder, style="llama")
    stamp_file.write_text(stamp)
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--variant", default="base", choices=sorted(VARIANTS))
    parser.add_argument("--layout", default="fresh", choices=LAYOUTS)
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--shard", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = build_model(args.variant, seed=args.seed)
    folder = save_checkpoint(model, args.out_dir, layout=args.layout, dtype=args.dtype, shard=args.shard)
    print(f"wrote {folder}: {sorted(p.name for p in folder.iterdir())}")


if __name__ == "__main__":
    main()
