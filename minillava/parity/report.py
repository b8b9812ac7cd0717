"""The report of a comparison: a table in data-flow order with the first failure marked and a hint where
to look, and a plot of every module's relative difference."""

from __future__ import annotations

import importlib

import numpy as np

from ..model.trace import LAYER_NAME
from .compare import INPUT_NAMES, ParityError, Report

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
        if LAYER_NAME.match(first.name) and LAYER_NAME.match(first.name)[3] is None:
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
        raise ParityError("--plot needs matplotlib: `pip install matplotlib`") from None
    rows = [r for r in report.rows if r.rel is not None and r.name not in INPUT_NAMES]
    if not rows:
        raise ParityError("--plot: nothing was compared, so there is nothing to plot")
    x = np.arange(len(rows))
    floor = 1e-12  # a zero difference has no logarithm: drawn at the floor
    rel = np.array([max(r.rel, floor) if np.isfinite(r.rel) else 1e3 for r in rows])
    fig = figure.Figure(figsize=(max(8, len(rows) * 0.12), 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.semilogy(x, rel, ".", color="0.6", label="every module")
    blocks = [i for i, r in enumerate(rows) if LAYER_NAME.match(r.name) and LAYER_NAME.match(r.name)[3] is None]
    for tower, label in (("vision_tower", "CLIP layer outputs"), ("language_model", "Llama layer outputs")):
        layers = [i for i in blocks if rows[i].name.startswith(tower)]
        if layers:
            ax.semilogy(x[layers], rel[layers], "o-", label=label)
    ax.step(x, [r.tol if r.tol else floor for r in rows], where="mid", color="k", lw=0.8, label="tolerance")
    first = report.first_failure
    if first is not None and first in rows:
        ax.axvline(rows.index(first), color="r", ls="--", label=f"first failure: {first.name}")
    ticks = [i for i, r in enumerate(rows) if i in blocks or not LAYER_NAME.match(r.name)]
    ax.set_xticks(ticks, [rows[i].name.replace("vision_tower.encoder.", "v.").replace("language_model.", "lm.")
                          for i in ticks], rotation=90, fontsize=7)  # fmt: skip
    ax.set_ylabel("max |diff| / max |reference|")
    ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
