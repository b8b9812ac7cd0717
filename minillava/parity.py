"""Parity report: run two implementations side by side and find the first module that goes wrong.

    minillava parity --model PATH --image cat.jpg --prompt "What is shown?"      # minillava vs Transformers
    minillava parity dump --model PATH --image cat.jpg --prompt "..." --out ours.npz
    minillava parity compare reference.npz candidate.npz                         # e.g. minillava vs your port

Both sides record the output of every module (``model.forward(..., trace=...)`` here, forward hooks
on ``LlavaForConditionalGeneration`` there) for the same inputs. The report lists them in data-flow
order with their shape, the largest absolute difference, the relative difference (largest absolute
difference / largest magnitude of the reference) and pass/fail against a per-module tolerance, and
points at the first module that fails: the modules after it fail too, because they are fed its error.
Sequence outputs ([B, T, ...]) are compared at real positions only (attention_mask 1): what a model
computes for a padding position is arbitrary.

Exit status: 0 every entry within tolerance, 1 one is not (or is missing, or has another shape),
2 nothing could be compared (bad arguments, unreadable files, Transformers not installed).

Transformers and torch are optional: they are imported inside the function that needs them.

The .npz trace format (version 1)
---------------------------------
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

import argparse
import dataclasses
import fnmatch
import importlib
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from . import backend
from .cli import CliError, open_image, resolve_model

FORMAT = "minillava-parity/1"
INPUT_NAMES = ("input_ids", "attention_mask")  # compared exactly
STRING_NAMES = ("format", "config", "meta")
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Default relative tolerances (modules, lm_head) by the lower precision of the two sides.
# float32: what tests/test_model.py requires (measured: <= 2.4e-6 on the three models below).
# float16 / bfloat16 (minillava float32 on the CPU vs Transformers in fp16/bf16, or minillava float16
# on a GPU): the largest drift measured over all modules, on the tiny chat checkpoint and on random
# models of 12 CLIP + 24 Llama layers and 23 CLIP + 32 Llama layers, was 2.3e-3, 3.8e-3, 3.9e-3 in
# fp16 and 1.9e-2, 3.3e-2, 3.8e-2 in bf16 (growing slowly with depth; lm_head below the modules).
# The defaults leave a 4-5x margin over that and stay 3x under the smallest gross bug the tests
# plant (0.44: rotate_half on interleaved pairs). Subtle bugs (a LayerNorm eps, 1.7e-3) are only
# visible in float32.
TOLERANCES = {"float32": (1e-5, 1e-4), "float16": (2e-2, 2e-2), "bfloat16": (1.5e-1, 1.5e-1)}
EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2

# Where to look first when a module is the first to fail (the usual suspects when porting LLaVA).
HINTS = {
    "pixel_values": "image preprocessing (resize, crop, rescale, mean/std) or the input dtype",
    "vision_tower.embeddings": "patch embedding (conv weight layout, patch order), the CLS token or positions",
    "layer_norm": "LayerNorm eps, biased variance, or the norm's weight/bias",
    "pre_layrnorm": "LayerNorm eps, biased variance, or the norm's weight/bias",
    "self_attn": "attention: head split/merge order, scaling, masks, rotary embeddings (rotate_half vs "
    "interleaved pairs), grouped-query head sharing",
    "mlp": "the activation (quick_gelu, exact vs tanh GELU, SiLU) or gate/up order",
    "vision_features": "feature selection: vision_feature_layer, dropping CLS ('default') or not ('full')",
    "multi_modal_projector": "projector activation or biases",
    "language_model.embed_tokens": "token ids or the embedding matrix",
    "inputs_embeds": "merging image features into the image-token positions (offsets, order of images)",
    "input_layernorm": "RMSNorm eps, the float32 upcast, cast-back before the weight",
    "post_attention_layernorm": "RMSNorm eps, the float32 upcast, cast-back before the weight",
    "language_model.norm": "the final RMSNorm",
    "lm_head": "lm_head weight (tied embeddings?)",
    "input_ids": "the two sides were run on different prompts, images or padding",
    "attention_mask": "the two sides were run on different prompts, images or padding",
}


# ---------------------------------------------------------------------------------------------
# Names and their data-flow order
# ---------------------------------------------------------------------------------------------

_PARTS = {
    "layer_norm1": 0, "self_attn": 1, "layer_norm2": 2, "mlp": 3,
    "input_layernorm": 0, "post_attention_layernorm": 2, "": 4,
}  # fmt: skip
_STAGES = [
    "input_ids", "attention_mask", "pixel_values", "vision_tower.embeddings", "vision_tower.pre_layrnorm",
    "vision_tower.encoder.layers", "vision_features", "multi_modal_projector", "language_model.embed_tokens",
    "inputs_embeds", "language_model.layers", "language_model.norm", "lm_head",
]  # fmt: skip
_LAYER = re.compile(r"(vision_tower\.encoder\.layers|language_model\.layers)\.(\d+)(?:\.(\w+))?$")


def order_key(name: str):
    """Sort key putting trace names in data-flow order (unknown names last, alphabetically)."""
    m = _LAYER.match(name)
    if m:
        return (_STAGES.index(m[1]), int(m[2]), _PARTS.get(m[3] or "", 5), name)
    if name in _STAGES:
        return (_STAGES.index(name), 0, 0, name)
    return (len(_STAGES), 0, 0, name)


def is_sequence(name: str) -> bool:
    """Entries shaped [B, T, ...], compared at real (non-padding) positions only."""
    return name.startswith("language_model.") or name in ("inputs_embeds", "lm_head")


def module_names(config, with_images: bool) -> list[str]:
    """Every traced name for a LlavaConfig, in data-flow order."""
    names = []
    if with_images:
        names += ["pixel_values", "vision_tower.embeddings", "vision_tower.pre_layrnorm"]
        for i in range(config.vision_layers_needed):
            layer = f"vision_tower.encoder.layers.{i}"
            names += [f"{layer}.{p}" for p in ("layer_norm1", "self_attn", "layer_norm2", "mlp")] + [layer]
        names += ["vision_features", "multi_modal_projector"]
    names += ["language_model.embed_tokens", "inputs_embeds"]
    for i in range(config.text.num_hidden_layers):
        layer = f"language_model.layers.{i}"
        parts = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
        names += [f"{layer}.{p}" for p in parts] + [layer]
    return names + ["language_model.norm", "lm_head"]


# ---------------------------------------------------------------------------------------------
# Running the two sides
# ---------------------------------------------------------------------------------------------


def minillava_trace(model, inputs) -> tuple[dict, str | None]:
    """Run minillava with tracing; -> ({name: float32 NumPy array, plus the int inputs}, error or None).

    An exception inside the forward (e.g. a shape error from a bug) ends the run; the entries
    recorded before it are kept and the error is returned as text.
    """
    trace, error = {}, None
    try:
        model.forward(
            inputs["input_ids"],
            pixel_values=inputs.get("pixel_values"),
            attention_mask=inputs.get("attention_mask"),
            trace=trace,
        )
    except Exception as err:  # a broken forward still gives its partial trace
        error = f"minillava stopped with {type(err).__name__}: {err}"
    out = {name: np.asarray(inputs[name]) for name in INPUT_NAMES if name in inputs}
    out.update({name: backend.to_numpy(value).astype(np.float32) for name, value in trace.items()})
    return out, error


def import_transformers():
    """(torch, transformers), or a CliError saying how to install them."""
    try:
        return importlib.import_module("torch"), importlib.import_module("transformers")
    except ImportError as err:
        raise CliError(
            f"Transformers/torch not installed ({err}): `pip install torch transformers` to compare with them"
        ) from None


def load_transformers(folder, dtype: str = "fp32"):
    """LlavaForConditionalGeneration from a checkpoint folder in fp32/fp16/bf16, eval mode, on the CPU."""
    torch, transformers = import_transformers()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar between the report lines
    try:
        hf = transformers.LlavaForConditionalGeneration.from_pretrained(
            folder, dtype=getattr(torch, DTYPE_NAMES[dtype])
        )
    except Exception as err:
        raise CliError(f"Transformers could not load {folder}: {type(err).__name__}: {err}") from None
    return hf.eval()


def transformers_trace(hf, config, inputs) -> tuple[dict, str | None]:
    """Run a Transformers LlavaForConditionalGeneration with forward hooks; same return as minillava_trace.

    config: minillava's LlavaConfig of the checkpoint (which vision layers LLaVA uses).
    """
    torch = importlib.import_module("torch")
    dtype = next(hf.parameters()).dtype
    with_images = inputs.get("pixel_values") is not None
    modules = dict(hf.named_modules())
    captured, handles = {}, []

    def keep(name, value):
        if name not in captured and torch.is_tensor(value):  # the first call (each runs once)
            captured[name] = value.detach().to(torch.float32).cpu().numpy().copy()

    def output_hook(name):
        return lambda module, args, output: keep(name, output[0] if isinstance(output, tuple) else output)

    for name in module_names(config, with_images):
        path = "lm_head" if name == "lm_head" else f"model.{name}"
        if path in modules:
            handles.append(modules[path].register_forward_hook(output_hook(name)))
    if with_images and "model.multi_modal_projector" in modules:  # the features HF selected from CLIP's hidden_states
        pre = lambda module, args: keep("vision_features", args[0])  # noqa: E731
        handles.append(modules["model.multi_modal_projector"].register_forward_pre_hook(pre))
    if "model.language_model" in modules:
        pre = lambda module, args, kwargs: keep("inputs_embeds", kwargs.get("inputs_embeds"))  # noqa: E731
        handles.append(modules["model.language_model"].register_forward_pre_hook(pre, with_kwargs=True))

    pixel_values = torch.from_numpy(np.asarray(inputs["pixel_values"])).to(dtype) if with_images else None
    error = None
    try:
        with torch.no_grad():
            hf(
                input_ids=torch.from_numpy(np.asarray(inputs["input_ids"])),
                attention_mask=torch.from_numpy(np.asarray(inputs["attention_mask"])),
                pixel_values=pixel_values,
                # Transformers 5.24 asks CLIP for `output_hidden_states=vision_feature_layer`, which
                # is falsy for layer 0 (then it crashes); asking for all changes no number.
                output_hidden_states=True,
            )
    except Exception as err:
        error = f"Transformers stopped with {type(err).__name__}: {err}"
    finally:
        for handle in handles:
            handle.remove()
    out = {name: np.asarray(inputs[name]) for name in INPUT_NAMES}
    if with_images:
        out["pixel_values"] = pixel_values.to(torch.float32).numpy()  # as Transformers got them (its dtype)
    out.update(captured)
    return out, error


# ---------------------------------------------------------------------------------------------
# Comparing two traces
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    name: str
    shape: str
    max_abs: float | None = None
    rel: float | None = None
    tol: float | None = None
    status: str = "ok"  # "ok", "FAIL" or "missing"
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status != "ok"


@dataclasses.dataclass
class Report:
    rows: list[Row]
    notes: list[str] = dataclasses.field(default_factory=list)
    allow_missing: bool = False
    config_mismatch: bool = False

    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL" or (r.status == "missing" and not self.allow_missing)]

    @property
    def first_failure(self) -> Row | None:
        failures = self.failures()
        return failures[0] if failures else None

    @property
    def passed(self) -> bool:
        return not self.failures() and not self.config_mismatch


def tolerance_for(name: str, tol: float, logits_tol: float, overrides=()) -> float:
    """The relative tolerance of an entry: 0 (exact) for the int inputs, ``logits_tol`` for lm_head,
    else ``tol``; ``overrides`` is a list of (glob pattern, tolerance), the last match winning."""
    chosen = 0.0 if name in INPUT_NAMES else logits_tol if name == "lm_head" else tol
    for pattern, value in overrides:
        if fnmatch.fnmatchcase(name, pattern):
            chosen = value
    return chosen


def _shape(a) -> str:
    return str(list(a.shape))


def compare_traces(
    reference: dict,
    candidate: dict,
    tol: float = TOLERANCES["float32"][0],
    logits_tol: float = TOLERANCES["float32"][1],
    overrides=(),
    allow_missing: bool = False,
) -> Report:
    """Compare two traces ({name: array}) entry by entry, in data-flow order.

    Sequence entries are compared at the positions where the reference's attention_mask is 1.
    """
    mask = reference.get("attention_mask")
    mask = None if mask is None else np.asarray(mask).astype(bool)  # [B, T]
    names = sorted(set(reference) | set(candidate), key=order_key)
    rows = []
    for name in names:
        if name in STRING_NAMES:
            continue
        ref, cand = reference.get(name), candidate.get(name)
        if ref is None or cand is None:
            present = ref if ref is not None else cand
            lacking = "candidate" if cand is None else "reference"
            rows.append(Row(name, _shape(present), status="missing", message=f"not in the {lacking}"))
            continue
        ref, cand = np.asarray(ref), np.asarray(cand)
        row = Row(name, _shape(ref), tol=tolerance_for(name, tol, logits_tol, overrides))
        rows.append(row)
        if ref.shape != cand.shape:
            row.status, row.message = "FAIL", f"shape mismatch: candidate {_shape(cand)}, reference {_shape(ref)}"
            continue
        if is_sequence(name) and mask is not None and ref.shape[:2] == mask.shape:
            ref, cand = ref[mask], cand[mask]  # [real positions, ...]
        ref, cand = ref.astype(np.float64), cand.astype(np.float64)
        diff = np.abs(cand - ref)
        row.max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        row.rel = row.max_abs / scale if scale > 0 else (0.0 if row.max_abs == 0 else float("inf"))
        if not (row.rel <= row.tol):  # NaN fails too
            row.status = "FAIL"
    report = Report(rows, allow_missing=allow_missing)
    if mask is not None and not mask.all():
        report.notes.append(
            f"[B, T, ...] entries compared at the {int(mask.sum())} real positions of {mask.size} (padding left out)"
        )
    return report


def _fmt(x) -> str:
    if x is None:
        return "-"
    return "0" if x == 0 else f"{x:.2e}"


def format_report(report: Report, header=()) -> str:
    """The table in data-flow order, the first failure marked, notes and a one-line verdict."""
    first = report.first_failure
    width = max([len(r.name) for r in report.rows] + [6])
    shape_w = max([len(r.shape) for r in report.rows] + [5])
    lines = list(header)
    columns = f"{'max abs diff':>12}  {'rel diff':>9}  {'tol':>7}  result"
    lines.append(f"{'module':<{width}}  {'shape':<{shape_w}}  {columns}")
    for r in report.rows:
        tol = "-" if r.tol is None else "exact" if r.tol == 0 else f"{r.tol:.2g}"
        line = f"{r.name:<{width}}  {r.shape:<{shape_w}}  {_fmt(r.max_abs):>12}  {_fmt(r.rel):>9}  {tol:>7}  {r.status}"
        if r.message:
            line += f"  ({r.message})"
        if r is first:
            line += "   <== first failure"
        lines.append(line)
    lines += [f"note: {note}" for note in report.notes]
    compared = sum(r.status != "missing" for r in report.rows)
    if report.passed:
        lines.append(f"PASS: all {compared} compared entries within tolerance")
    elif first is None:
        lines.append("FAIL: the two sides were made from different configs (see the notes)")
    else:
        what = f"rel diff {_fmt(first.rel)} > tol {first.tol:.2g}" if first.rel is not None else first.message
        lines.append(
            f"FAIL: {len(report.failures())} of {len(report.rows)} entries fail; the first in data-flow order is "
            f"{first.name} ({what})"
        )
        hint = HINTS.get(first.name) or HINTS.get(first.name.rsplit(".", 1)[-1].rstrip("12"))
        if _LAYER.match(first.name) and _LAYER.match(first.name)[3] is None:
            hint = "the residual adds of the layer (or a part of it that one side does not trace)"
        if hint:
            lines.append(f"look at: {hint}")
    return "\n".join(lines)


def plot_report(report: Report, path=None):
    """Relative difference of every compared entry in data-flow order (log scale), whole layers joined
    by a line, the tolerance as a step line, the first failure marked. Needs matplotlib.

    Returns the matplotlib Figure (shown inline in a notebook); also written as a PNG to ``path`` (a file
    name or a binary file object) when given."""
    try:
        figure = importlib.import_module("matplotlib.figure")
    except ImportError:
        raise CliError("--plot needs matplotlib: `pip install matplotlib`") from None
    rows = [r for r in report.rows if r.rel is not None and r.name not in INPUT_NAMES]
    if not rows:
        raise CliError("--plot: nothing was compared, so there is nothing to plot")
    x = np.arange(len(rows))
    floor = 1e-12  # a zero difference has no logarithm: drawn at the floor
    rel = np.array([max(r.rel, floor) if np.isfinite(r.rel) else 1e3 for r in rows])
    fig = figure.Figure(figsize=(max(8, len(rows) * 0.12), 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.semilogy(x, rel, ".", color="0.6", label="every module")
    blocks = [i for i, r in enumerate(rows) if _LAYER.match(r.name) and _LAYER.match(r.name)[3] is None]
    for tower, label in (("vision_tower", "CLIP layer outputs"), ("language_model", "Llama layer outputs")):
        layers = [i for i in blocks if rows[i].name.startswith(tower)]
        if layers:
            ax.semilogy(x[layers], rel[layers], "o-", label=label)
    ax.step(x, [r.tol if r.tol else floor for r in rows], where="mid", color="k", lw=0.8, label="tolerance")
    first = report.first_failure
    if first is not None and first in rows:
        ax.axvline(rows.index(first), color="r", ls="--", label=f"first failure: {first.name}")
    ticks = [i for i, r in enumerate(rows) if i in blocks or not _LAYER.match(r.name)]
    ax.set_xticks(ticks, [rows[i].name.replace("vision_tower.encoder.", "v.").replace("language_model.", "lm.")
                          for i in ticks], rotation=90, fontsize=7)  # fmt: skip
    ax.set_ylabel("max |diff| / max |reference|")
    ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


# ---------------------------------------------------------------------------------------------
# .npz traces
# ---------------------------------------------------------------------------------------------


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
        raise CliError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CliError(f"{path}: not a readable .npz trace ({type(err).__name__}: {err})") from None
    strings = {}
    for name in STRING_NAMES:
        if name in entries:
            try:
                strings[name] = _string(entries.pop(name))
            except (ValueError, UnicodeDecodeError) as err:
                raise CliError(f"{path}: entry {name!r}: {err}") from None
    bad = [n for n, a in entries.items() if a.dtype.kind not in "iufb"]
    if bad:
        raise CliError(f"{path}: entries {bad} are not numeric arrays")
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
    from .config import config_from_dict

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


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_input_args(parser):
    parser.add_argument("--model", required=True, help="llava-hf checkpoint folder (or hub id)")
    parser.add_argument("--image", action="append", default=[], help="a picture; repeat for several")
    parser.add_argument(
        "--prompt",
        action="append",
        help="the question; repeat for a padded batch (the images are shared out in order, equally)",
    )
    parser.add_argument("--raw-prompt", action="store_true", help="use --prompt as is (write <image> yourself)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where minillava runs")
    parser.add_argument("--dtype", choices=list(DTYPE_NAMES), default="fp32", help="Transformers' dtype")


def _add_tolerance_args(parser):
    parser.add_argument("--tol", type=float, help="relative tolerance of every module but lm_head")
    parser.add_argument("--logits-tol", type=float, help="relative tolerance of lm_head")
    parser.add_argument(
        "--module-tol",
        action="append",
        default=[],
        metavar="GLOB=TOL",
        help="tolerance for the matching names, e.g. 'language_model.layers.*=1e-4' (repeatable, last wins)",
    )
    parser.add_argument("--allow-missing", action="store_true", help="entries only one side has do not fail")
    parser.add_argument("--plot", metavar="PNG", help="plot the relative difference of every module (matplotlib)")


def build_parsers():
    run = _Parser(
        prog="minillava parity",
        description="Compare minillava with Transformers module by module and name the first that differs. "
        "Also: `minillava parity dump ...` (save a trace) and `minillava parity compare A.npz B.npz`.",
    )
    _add_input_args(run)
    _add_tolerance_args(run)
    dump = _Parser(prog="minillava parity dump", description="Save every traced activation and the inputs to .npz.")
    _add_input_args(dump)
    dump.add_argument("--out", required=True, help="the .npz file to write")
    dump.add_argument("--source", choices=["minillava", "transformers"], default="minillava", help="who runs")
    compare = _Parser(
        prog="minillava parity compare",
        description="Compare two trace files (the first is the reference); see minillava/parity.py for the format.",
    )
    compare.add_argument("reference")
    compare.add_argument("candidate")
    _add_tolerance_args(compare)
    return run, dump, compare


def _tolerances(args, precision: str):
    tol, logits_tol = TOLERANCES[precision]
    overrides = []
    for spec in args.module_tol:
        pattern, _, value = spec.rpartition("=")
        try:
            overrides.append((pattern, float(value)))
        except ValueError:
            raise CliError(f"--module-tol {spec!r}: expected GLOB=TOL, e.g. 'lm_head=1e-3'") from None
        if not pattern:
            raise CliError(f"--module-tol {spec!r}: expected GLOB=TOL, e.g. 'lm_head=1e-3'")
    tol = args.tol if args.tol is not None else tol
    logits_tol = args.logits_tol if args.logits_tol is not None else logits_tol
    return dict(tol=tol, logits_tol=logits_tol, overrides=overrides, allow_missing=args.allow_missing)


def _lowest_precision(*dtypes) -> str:
    for name in ("bfloat16", "float16"):
        if name in dtypes:
            return name
    return "float32"


def build_inputs(processor, images, prompts, raw: bool) -> dict:
    """Processor outputs for the prompts; without --raw-prompt each prompt goes through the chat
    template with one image entry per image it gets (all of them for one prompt)."""
    prompts = prompts or ["What is shown in the image?"]
    if raw:
        texts = list(prompts)
    else:
        if len(images) % len(prompts):
            raise CliError(f"{len(images)} images cannot be shared out equally among {len(prompts)} prompts")
        per_prompt = len(images) // len(prompts)
        texts = []
        for prompt in prompts:
            content = [{"type": "image"}] * per_prompt + [{"type": "text", "text": prompt}]
            try:
                texts.append(processor.apply_chat_template([{"role": "user", "content": content}], True))
            except ValueError as err:
                raise CliError(f"{err} (or use --raw-prompt)") from None
    try:
        return processor(images=images or None, text=texts, padding=True)
    except ValueError as err:
        raise CliError(str(err)) from None


def _load(args):
    """(folder, minillava model, inputs) for the run and dump commands."""
    import minillava

    folder = resolve_model(args.model)
    images = [open_image(path) for path in args.image]
    dtype = "float16" if args.device == "cuda" else "float32"
    try:
        processor = minillava.load_processor(folder)
        model = minillava.load_model(folder, device=args.device, dtype=dtype)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        raise CliError(f"--model {folder}: {err}") from None
    return folder, model, build_inputs(processor, images, args.prompt, args.raw_prompt)


def _finish(report: Report, header, args) -> int:
    print(format_report(report, header))
    if args.plot:
        plot_report(report, args.plot)
        print(f"plot written to {args.plot}")
    return EXIT_OK if report.passed else EXIT_DIFFERENT


def run_command(args) -> int:
    folder, model, inputs = _load(args)
    ours, our_error = minillava_trace(model, inputs)
    hf_dtype = DTYPE_NAMES[args.dtype]
    ours_label = f"minillava ({model.dtype.name}, {args.device})"
    try:
        hf = load_transformers(folder, args.dtype)
    except CliError as err:  # still show what minillava computes
        print(f"minillava parity: {err}", file=sys.stderr)
        report = compare_traces({n: ours[n] for n in INPUT_NAMES}, ours)
        report.notes.append("no reference: only minillava's shapes are shown; `minillava parity dump` saves them")
        print(format_report(report, [f"candidate: {ours_label}; reference: none"]))
        return EXIT_ERROR
    theirs, their_error = transformers_trace(hf, model.config, inputs)
    transformers = importlib.import_module("transformers")
    report = compare_traces(theirs, ours, **_tolerances(args, _lowest_precision(hf_dtype, model.dtype.name)))
    header = [f"reference: Transformers {transformers.__version__} ({hf_dtype}, cpu); candidate: {ours_label}"]
    if model.dtype.name != hf_dtype:
        report.notes.append(
            f"minillava computes in {model.dtype.name}, Transformers in {hf_dtype}: the differences include "
            f"{_lowest_precision(hf_dtype, model.dtype.name)} rounding drift, which grows layer by layer; "
            "they are not a bug as long as they stay within the (looser) tolerance"
        )
    report.notes += [e for e in (their_error, our_error) if e]
    return _finish(report, header, args)


def dump_command(args) -> int:
    folder, model, inputs = _load(args)
    if args.source == "transformers":
        trace, error = transformers_trace(load_transformers(folder, args.dtype), model.config, inputs)
        meta = {"producer": "transformers " + importlib.import_module("transformers").__version__,
                "dtype": DTYPE_NAMES[args.dtype], "device": "cpu"}  # fmt: skip
    else:
        trace, error = minillava_trace(model, inputs)
        meta = {"producer": "minillava", "dtype": model.dtype.name, "device": args.device}
    if error:
        print(f"minillava parity: {error}; saving the entries recorded before it", file=sys.stderr)
    save_trace(args.out, trace, (Path(folder) / "config.json").read_text(), meta)
    n_act = len(trace) - len(INPUT_NAMES)
    print(f"wrote {args.out}: {n_act} activations, input_ids {list(inputs['input_ids'].shape)}")
    return EXIT_ERROR if error else EXIT_OK


def compare_command(args) -> int:
    (ref, ref_strings), (cand, cand_strings) = load_trace(args.reference), load_trace(args.candidate)
    metas = []
    for strings in (ref_strings, cand_strings):
        try:
            metas.append(json.loads(strings.get("meta", "{}")))
        except json.JSONDecodeError:
            metas.append({})
    precision = _lowest_precision(*(str(m.get("dtype", "float32")) for m in metas if isinstance(m, dict)))
    report = compare_traces(ref, cand, **_tolerances(args, precision))
    differences = config_differences(ref_strings.get("config"), cand_strings.get("config"))
    if differences:
        report.config_mismatch = True
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        report.notes.append(f"the dumps come from different configs: {shown}")
    for path, strings in ((args.reference, ref_strings), (args.candidate, cand_strings)):
        if strings.get("format", FORMAT) != FORMAT:
            report.notes.append(f"{path}: format {strings['format']!r}, expected {FORMAT!r}")
        if "config" not in strings:
            report.notes.append(f"{path}: no config entry, so the configs could not be checked")
    describe = lambda path, m: f"{path} ({', '.join(str(v) for v in m.values()) or 'no meta'})"  # noqa: E731
    header = [f"reference: {describe(args.reference, metas[0])}; candidate: {describe(args.candidate, metas[1])}"]
    return _finish(report, header, args)


def main(argv=None) -> int:
    """``minillava parity [dump|compare] ...``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    run, dump, compare = build_parsers()
    try:
        if argv[:1] == ["dump"]:
            return dump_command(dump.parse_args(argv[1:]))
        if argv[:1] == ["compare"]:
            return compare_command(compare.parse_args(argv[1:]))
        return run_command(run.parse_args(argv))
    except CliError as err:
        print(f"minillava parity: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nminillava parity: interrupted", file=sys.stderr)
        return 130
