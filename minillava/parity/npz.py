"""Traces in a .npz file, so that a port in any language can be compared with minillava.

One NumPy ``.npz`` file (a zip of ``NAME.npy`` files, NPY format 1.0, no pickled objects), so a port
in any language can write one (cnpy in C++, ndarray-npy or npyz in Rust, ...). Every entry is
optional; ``compare`` lists absent ones as "missing" (a file with neither ``format`` nor any name below
is not a trace, and is refused). Letters: B batch rows, T positions, N images,
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

``config``: write the configuration *as your port resolved it*, every field it uses written out
(``rms_norm_eps``, ``rope_theta`` and ``rope_scaling``, ``vocab_size``, ``image_size``, the feature
layer and strategy, ``image_token_index``, ...), in config.json's layout: the report starts with every
field that resolves differently on the two sides (a wrong RMSNorm eps or vocab size is a classic cause
of gibberish), before any row. ``input_ids``, ``attention_mask`` and ``pixel_values`` come next, so
that two runs on different inputs are named as such before any module.

Isolated differences (``minillava parity compare ref.npz yours.npz --model FOLDER``): minillava recomputes
each of your modules from the input *you* fed it, with FOLDER's weights, and compares with your output,
so a row says whether that module, fed the same input, gives the same output (the culprit) or only
carries the error of the modules before it (drift). For that, save each module's inputs as well:
minillava.parity.isolated's ``RECIPES`` is the table, and in short, every entry above is the input of the
next one:

- a layer part from the one before it: ``layer_norm1`` -> ``self_attn``, ``layer_norm2`` -> ``mlp``
  (``input_layernorm`` -> ``self_attn``, ``post_attention_layernorm`` -> ``mlp`` in the language model);
- a layer's norms from the layer's input (plus ``self_attn`` for the second norm: the residual sum);
- a layer's output from its input, ``self_attn`` and ``mlp`` (the residual adds), or, if you save no
  parts, the whole layer from its input;
- a layer's input: the previous layer's output; before layer 0, ``vision_tower.pre_layrnorm`` (CLIP),
  ``vision_tower.embeddings`` (SigLIP) or ``inputs_embeds``;
- ``vision_tower.embeddings`` from ``pixel_values``, ``pre_layrnorm`` from the embeddings,
  ``vision_features`` from the selected layer outputs, ``multi_modal_projector`` from
  ``vision_features``, ``language_model.embed_tokens`` from ``input_ids``, ``inputs_embeds`` from
  ``embed_tokens``, ``multi_modal_projector`` and ``input_ids``, ``language_model.norm`` from the last
  layer's output, ``lm_head`` from ``language_model.norm``;
- attention also reads ``attention_mask``; positions are 0 .. T - 1, as in a plain forward.

Save every entry of the table and every module has its isolated difference; save only the layer
outputs and each whole layer has one. Padding positions may hold anything (even NaN): they are set to
0 before a recompute and left out of every comparison.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..loading.config import config_from_dict
from ..model.config import LlavaConfig
from ..model.trace import STAGES, order_key
from .compare import INPUT_NAMES, ParityError

FORMAT = "minillava-parity/1"
STRING_NAMES = ("format", "config", "meta")
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK"  # the first bytes of a .npy file and of a zip archive (a .npz)


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


def _read_npz(path: Path, label: str) -> dict:
    """Every member of a .npz file as an array, or one ParityError naming the file and what is wrong with it."""
    where = f"{label} {path}" if label else str(path)
    if path.is_dir():
        raise ParityError(f"{where}: is a folder, not a .npz trace file")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise ParityError(f"{where}: no such file") from None
    except OSError as err:
        raise ParityError(f"{where}: cannot be read ({type(err).__name__}: {err})") from None
    if magic.startswith(NPY_MAGIC):  # np.load would return that one array
        raise ParityError(f"{where}: a .npy file holds one array; a trace is a .npz of named arrays (np.savez)")
    if not magic.startswith(ZIP_MAGIC):
        raise ParityError(
            f"{where}: not a .npz trace (a .npz is a zip archive of .npy files; see minillava/parity/npz.py)"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            entries = {name: f[name] for name in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ParityError(f"{where}: not a readable .npz trace ({type(err).__name__}: {err})") from None
    other = [name for name, value in entries.items() if not isinstance(value, np.ndarray)]
    if other:  # np.load gives the bytes of a member that is not a .npy file
        raise ParityError(f"{where}: members {other} are not .npy arrays")
    return entries


def load_trace(path, label: str = "") -> tuple[dict, dict]:
    """Read a trace file -> (arrays {name: array}, strings {"format"/"config"/"meta": text}).

    Checks what the comparison relies on, once: the strings decode (config and meta as JSON objects), the
    other entries are numeric, input_ids and attention_mask are integer [B, T] arrays of one shape, the mask
    0s and 1s. ``label`` ("reference", "candidate") starts every error message, with the path.
    """
    path = Path(path)
    where = f"{label} {path}" if label else str(path)
    entries = _read_npz(path, label)
    strings = {}
    for name in STRING_NAMES:
        if name in entries:
            try:
                strings[name] = _string(entries.pop(name))
            except (ValueError, UnicodeDecodeError) as err:
                raise ParityError(f"{where}: entry {name!r}: {err}") from None
    for name in ("config", "meta"):
        if name in strings:
            try:
                parsed = json.loads(strings[name])
            except json.JSONDecodeError as err:
                raise ParityError(f"{where}: entry {name!r} is not valid JSON ({err})") from None
            if not isinstance(parsed, dict):
                raise ParityError(f"{where}: entry {name!r} must be a JSON object, got {type(parsed).__name__}")
    bad = [n for n, a in entries.items() if a.dtype.kind not in "iufb"]
    if bad:
        raise ParityError(f"{where}: entries {bad} are not numeric arrays")
    _check_inputs(entries, where)
    documented = [name for name in entries if order_key(name)[0] < len(STAGES)]  # names of the table above
    if "format" not in strings and not documented:  # e.g. some other program's arrays
        raise ParityError(f"{where}: not a minillava parity trace (no 'format' entry, none of the names of its format)")
    return entries, strings


def _check_inputs(entries: dict, where: str) -> None:
    """input_ids and attention_mask: integer [B, T] arrays of one shape, the mask 0s and 1s (it decides which
    positions are compared and what attention may see)."""
    for name in INPUT_NAMES:
        if name in entries:
            value = entries[name]
            if value.ndim != 2 or value.dtype.kind not in "iub":
                raise ParityError(
                    f"{where}: {name} must be an integer [B, T] array, got {value.dtype} {list(value.shape)}"
                )
    if all(name in entries for name in INPUT_NAMES):
        ids, mask = entries["input_ids"], entries["attention_mask"]
        if ids.shape != mask.shape:
            raise ParityError(
                f"{where}: attention_mask {list(mask.shape)} and input_ids {list(ids.shape)} differ in shape"
            )
    mask = entries.get("attention_mask")
    if mask is not None and not np.isin(mask, (0, 1)).all():
        raise ParityError(f"{where}: attention_mask must hold only 0 (padding) and 1 (a token)")


def _flatten(d, prefix="") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolved_fields(config) -> dict:
    """A config as the flat {field: value} minillava resolves from it (every omitted field filled as Transformers
    fills it, so two spellings of one model agree). ``config``: a LlavaConfig, config.json's dict or its text.
    One minillava cannot read: its raw JSON fields, less the file dtype, versions and names."""
    if isinstance(config, str):
        config = json.loads(config)
    if isinstance(config, dict):
        try:
            config = config_from_dict(config)
        except (ValueError, TypeError, KeyError):
            ignored = ("dtype", "torch_dtype", "transformers_version", "_name_or_path", "architectures")
            return _flatten({k: v for k, v in config.items() if k not in ignored})
    if not isinstance(config, LlavaConfig):
        raise TypeError(f"expected a LlavaConfig, a config.json dict or its text, got {type(config).__name__}")
    return _flatten(dataclasses.asdict(config))


def config_differences(a, b) -> list[tuple[str, object, object]]:
    """Every resolved field that differs between two configs (LlavaConfig, config.json's dict or text; None:
    unknown) -> [(field, a's value, b's value)] with "(absent)" for a field one side lacks; [] when equal or
    unknown. Fields read the same from both (``text.rms_norm_eps``, ``vision.image_size``, ...)."""
    if a is None or b is None:
        return []
    fa, fb = resolved_fields(a), resolved_fields(b)
    return [(k, fa.get(k, "(absent)"), fb.get(k, "(absent)")) for k in sorted(set(fa) | set(fb))
            if fa.get(k, "(absent)") != fb.get(k, "(absent)")]  # fmt: skip
