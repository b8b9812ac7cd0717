"""Traces in a .npz file, so that a port in any language can be compared with minillava.

One NumPy ``.npz`` file (a zip of ``NAME.npy`` files, NPY format 1.0, no pickled objects), so a port
in any language can write one (cnpy in C++, ndarray-npy or npyz in Rust, ...). Every entry is
optional; ``compare`` lists absent ones as "missing". Letters: B batch rows, T positions, N images,
C = 3 channels, S image side, Np patches, Dv vision width, L image tokens per image, D text width,
V vocabulary.

=========================================================  =======  ==========================================
name                                                       dtype    shape
=========================================================  =======  ==========================================
``format``                                                 string   "minillava-parity/1"
``config``                                                 string   the checkpoint's config.json (JSON text)
``meta``                                                   string   JSON {"producer", "dtype", "device"}
``input_ids``                                              int64    [B, T]  each <image> expanded to L tokens
``attention_mask``                                         int64    [B, T]  1 real token, 0 padding
``pixel_values``                                           float32  [N, C, S, S]
``vision_tower.embeddings``                                float32  [N, 1 + Np, Dv]  CLS + patches + positions
``vision_tower.pre_layrnorm``                              float32  [N, 1 + Np, Dv]
``vision_tower.encoder.layers.{i}.layer_norm1``            float32  [N, 1 + Np, Dv]  LN1 output
``vision_tower.encoder.layers.{i}.self_attn``              float32  [N, 1 + Np, Dv]  before the residual add
``vision_tower.encoder.layers.{i}.layer_norm2``            float32  [N, 1 + Np, Dv]
``vision_tower.encoder.layers.{i}.mlp``                    float32  [N, 1 + Np, Dv]  before the residual add
``vision_tower.encoder.layers.{i}``                        float32  [N, 1 + Np, Dv]  the layer's output
``vision_features``                                        float32  [N, L, Dv * n_selected_layers]
``multi_modal_projector``                                  float32  [N, L, D]
``language_model.embed_tokens``                            float32  [B, T, D]
``inputs_embeds``                                          float32  [B, T, D]  image features merged in
``language_model.layers.{i}.input_layernorm``              float32  [B, T, D]
``language_model.layers.{i}.self_attn``                    float32  [B, T, D]  before the residual add
``language_model.layers.{i}.post_attention_layernorm``     float32  [B, T, D]
``language_model.layers.{i}.mlp``                          float32  [B, T, D]  before the residual add
``language_model.layers.{i}``                              float32  [B, T, D]  the layer's output
``language_model.norm``                                    float32  [B, T, D]
``lm_head``                                                float32  [B, T, V]  the logits
=========================================================  =======  ==========================================

Vision layers run from 0 to the last one LLaVA uses (``vision_feature_layer``, -2 for llava-1.5):
later layers are not computed. Strings are 0-d unicode arrays (``np.array(text)``) or 1-d uint8
arrays of UTF-8 bytes. Each name is the output of the Transformers submodule of the same path in
``LlavaForConditionalGeneration.model`` (``lm_head`` at the top); ``vision_features`` is the input
of ``multi_modal_projector`` and ``inputs_embeds`` that of ``language_model``. Other float arrays
under other names are compared too, when both files have them.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np

from ..loading.config import config_from_dict
from .compare import INPUT_NAMES, ParityError

FORMAT = "minillava-parity/1"
STRING_NAMES = ("format", "config", "meta")


def save_trace(path, trace: dict, config_json: str, meta: dict) -> None:
    """Write a trace in the format of this module's docstring."""
    arrays = {"format": np.array(FORMAT), "config": np.array(config_json), "meta": np.array(json.dumps(meta))}
    for name, value in trace.items():
        value = np.asarray(value)
        arrays[name] = value.astype(np.int64) if name in INPUT_NAMES else value.astype(np.float32)
    with open(path, "wb") as f:  # np.savez would append ".npz" to a name without it
        np.savez(f, **arrays)


def _string(value) -> str:
    value = np.asarray(value)
    if value.dtype.kind == "U" and value.ndim == 0:
        return str(value)
    if value.dtype == np.uint8 and value.ndim == 1:
        return value.tobytes().decode("utf-8")
    raise ValueError(f"expected a 0-d unicode or 1-d uint8 (UTF-8) array, got {value.dtype} {list(value.shape)}")


def load_trace(path) -> tuple[dict, dict]:
    """Read a trace file -> (arrays {name: array}, strings {"format"/"config"/"meta": text})."""
    try:
        with np.load(path, allow_pickle=False) as f:
            entries = {name: f[name] for name in f.files}
    except FileNotFoundError:
        raise ParityError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ParityError(f"{path}: not a readable .npz trace ({type(err).__name__}: {err})") from None
    strings = {}
    for name in STRING_NAMES:
        if name in entries:
            try:
                strings[name] = _string(entries.pop(name))
            except (ValueError, UnicodeDecodeError) as err:
                raise ParityError(f"{path}: entry {name!r}: {err}") from None
    bad = [n for n, a in entries.items() if a.dtype.kind not in "iufb"]
    if bad:
        raise ParityError(f"{path}: entries {bad} are not numeric arrays")
    return entries, strings


def _flatten(d, prefix="") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(a: str | None, b: str | None) -> list[str]:
    """What differs between two config.json texts, compared as minillava reads them (so two spellings
    of the same model agree; the file dtype and versions are ignored). [] when equal or unknown."""
    if a is None or b is None:
        return []
    try:
        da, db = json.loads(a), json.loads(b)
    except json.JSONDecodeError as err:
        return [f"a config entry is not valid JSON ({err})"]
    try:
        da, db = dataclasses.asdict(config_from_dict(da)), dataclasses.asdict(config_from_dict(db))
    except (ValueError, TypeError, KeyError):  # one minillava cannot read: compare the raw JSON
        for d in (da, db):
            for key in ("dtype", "torch_dtype", "transformers_version", "_name_or_path", "architectures"):
                d.pop(key, None)
    fa, fb = _flatten(da), _flatten(db)
    return [f"{k}: {fa.get(k, '(absent)')} vs {fb.get(k, '(absent)')}" for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k)]  # fmt: skip
