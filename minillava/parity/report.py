"""The report of a comparison: the config diff, a table in data-flow order with the culprit (or the first failure)
marked and a hint where to look, the same as JSON for a porting project's CI, and a plot of every module's
end-to-end and isolated difference."""

from __future__ import annotations

import importlib
import math
import textwrap

import numpy as np

from ..model.trace import LAYER_NAME
from .compare import INPUT_NAMES, ParityError, Report, Row

REPORT_FORMAT = "minillava-parity-report/1"
WIDTH = 120  # columns of a terminal the report fits

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
INPUT_ROWS = (*INPUT_NAMES, "pixel_values")  # what both sides were given: a difference there is no module's


def fmt(x) -> str:
    """A difference in the table: 2 significant digits, "0" when exact, "-" when not measured."""
    if x is None:
        return "-"
    return "0" if x == 0 else f"{x:.1e}"


def _cosine(x) -> str:
    return "-" if x is None else "1" if x == 1 else f"{x:.6f}"


def _db(x) -> str:
    return "-" if x is None else f"{x:.1f}" if math.isfinite(x) else str(x)  # "-inf": equal


def _tol(x) -> str:
    return "exact" if x == 0 else f"{x:.2g}"


def result(row: Row) -> str:
    """The result column: ok, FAIL (out of tolerance, in isolation too when measured), drift (out of tolerance
    end to end only: the row inherits its input's error) or missing."""
    if row.status == "missing":
        return "missing"
    if row.isolated_failed:
        return "FAIL"
    return "drift" if row.drift else row.status


def hint_for(name: str) -> str | None:
    if LAYER_NAME.match(name) and LAYER_NAME.match(name)[3] is None:
        return "the residual adds of the layer (or a part of it that one side does not trace)"
    return HINTS.get(name) or HINTS.get(name.rsplit(".", 1)[-1].rstrip("12"))


def _config_lines(report: Report) -> list[str]:
    differences = report.config_differences
    if not differences:
        return ["config: every resolved field the same on both sides"] if report.config_checked else []
    width = max(len(field) for field, _, _ in differences)
    lines = [f"config: {len(differences)} resolved field(s) differ (reference | candidate):"]
    lines += [f"  {field:<{width}}  {a} | {b}" for field, a, b in differences]
    return lines


def _isolated_tolerances(report: Report) -> list | None:
    """[modules, lm_head] of the isolated differences (None where none was recomputed), as the rows hold them."""
    tolerances = {r.name == "lm_head": r.isolated.tol for r in report.rows if r.isolated is not None}
    return [tolerances.get(False), tolerances.get(True)] if tolerances else None


def _tolerance_line(report: Report) -> str:
    end_to_end = f"end to end {_tol(report.tolerances[0])}, lm_head {_tol(report.tolerances[1])}"
    isolated = _isolated_tolerances(report)
    if isolated:
        end_to_end += "; isolated " + ", lm_head ".join("-" if t is None else _tol(t) for t in isolated)
    overrides = ", ".join(f"{pattern}={value:g}" for pattern, value in report.overrides)
    return f"tolerance (rel diff): {end_to_end}" + (f" (--module-tol {overrides})" if overrides else "")


def verdict(report: Report) -> list[str]:
    """The findings, most upstream first: config, inputs, then the culprit (or the drift, or the first failure)
    with a hint where to look; or PASS."""
    failures = report.failures()
    compared = sum(r.status != "missing" for r in report.rows)
    if report.passed:
        recomputed = sum(r.isolated is not None and r.isolated.status == "ok" for r in report.rows)
        alone = f"; {recomputed} modules within tolerance in isolation" if recomputed else ""
        return [f"PASS: all {compared} compared entries within tolerance{alone}"]
    lines = []
    if report.config_differences:
        fields = ", ".join(field for field, _, _ in report.config_differences[:5])
        more = f" and {len(report.config_differences) - 5} more" if len(report.config_differences) > 5 else ""
        lines.append(f"FAIL: the two sides resolved the config differently: {fields}{more} (at the top)")
    inputs = [r for r in failures if r.name in INPUT_ROWS]
    if inputs:
        what = "; ".join(f"{r.name}: {HINTS[r.name]}" for r in inputs)
        lines.append(f"FAIL: the inputs differ ({what})")
    culprit = report.culprit
    modules = [r for r in failures if r.name not in INPUT_ROWS]
    look = None  # the row whose hint says where to look
    if culprit is not None:
        iso = culprit.isolated
        what = f"isolated rel diff {fmt(iso.rel)} > tol {_tol(iso.tol)}" if iso.rel is not None else iso.message
        after = [r for r in modules if report.rows.index(r) > report.rows.index(culprit)]
        lines.append(
            f"FAIL: culprit {culprit.name}: fed the same input, it gives another output ({what}); "
            f"{len(after)} failing entries after it may be its echo"
        )
        look = culprit
    elif modules and all(r.drift for r in modules):
        lines.append(
            f"FAIL: drift only: {len(modules)} entries exceed the end-to-end tolerance from {modules[0].name} on, "
            "but every module is within tolerance in isolation (error carried downstream, no module wrong by itself)"
        )
    elif modules:
        look = modules[0]
        what = f"rel diff {fmt(look.rel)} > tol {_tol(look.tol)}" if look.rel is not None else look.message
        lines.append(
            f"FAIL: {len(failures)} of {len(report.rows)} entries fail; the first in data-flow order is "
            f"{look.name} ({what})"
        )
    hint = hint_for(look.name) if look is not None else None
    if hint:
        lines.append(f"look at: {hint}")
    return lines


def wrap(line: str, indent: str = "      ") -> list[str]:
    """A line of prose cut to the terminal's 120 columns (table rows are not cut: they fit)."""
    return textwrap.wrap(line, WIDTH, subsequent_indent=indent, break_on_hyphens=False) or [line]


def _row_notes(report: Report) -> list[str]:
    """What the rows cannot say in their columns: missing entries (grouped), shapes that differ, modules
    minillava could not recompute."""
    notes = []
    for side in ("candidate", "reference"):
        missing = [r.name for r in report.rows if r.status == "missing" and r.message == f"not in the {side}"]
        if missing:
            shown = ", ".join(missing[:4]) + (f", ... ({len(missing) - 4} more)" if len(missing) > 4 else "")
            notes.append(f"{len(missing)} entries not in the {side}: {shown}")
    for r in report.rows:
        if r.message and r.status != "missing":
            notes.append(f"{r.name}: {r.message}")
        if r.isolated is not None and r.isolated.message:
            notes.append(f"{r.name} in isolation: {r.isolated.message}")
    return notes


def format_report(report: Report, header=(), with_verdict: bool = True) -> str:
    """The report for a terminal (120 columns): the header lines, the config diff, the tolerances, a table in
    data-flow order (inputs first) with the culprit marked (the first failure, without isolated differences),
    notes, the verdict (``with_verdict``: False when there was nothing to compare with)."""
    culprit, first = report.culprit, report.first_failure
    with_isolated = any(r.isolated is not None for r in report.rows)
    width = max([len(r.name) for r in report.rows] + [6])
    lines = [wrapped for line in header for wrapped in wrap(line)] + _config_lines(report)
    if report.isolated_of:
        lines += wrap(f"isolated: each module recomputed by minillava from {report.isolated_of}")
    lines += wrap(_tolerance_line(report))
    columns = f"{'max abs':>7}  {'rel diff':>8}  {'cosine':>8}  {'NMSE dB':>7}  "
    lines.append(f"{'module':<{width}}  {columns}" + (f"{'isolated':>8}  " if with_isolated else "") + "result")
    for r in report.rows:
        line = f"{r.name:<{width}}  {fmt(r.max_abs):>7}  {fmt(r.rel):>8}  {_cosine(r.cosine):>8}  {_db(r.nmse_db):>7}  "
        if with_isolated:
            iso = r.isolated
            line += f"{'-' if iso is None else 'n/a' if iso.status == 'n/a' else fmt(iso.rel):>8}  "
        line += result(r)
        if r is culprit:
            line += "  <== culprit"
        elif r is first and not with_isolated:
            line += "  <== first failure"
        lines.append(line)
    for note in _row_notes(report) + report.notes:
        lines += wrap(f"note: {note}")
    for line in verdict(report) if with_verdict else []:
        lines += wrap(line)
    return "\n".join(lines)


def json_ready(value):
    """``value`` with every number as JSON has it: floats that are not finite as None (the NMSE of two equal arrays
    is -inf dB; a NaN), NumPy scalars as Python numbers, tuples as lists (strict JSON, for any CI to read)."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _measures(x) -> dict:
    names = ("max_abs", "rel", "cosine", "nmse_db", "sqnr_db", "tol")
    return {name: getattr(x, name) for name in names}


def report_json(report: Report, header=(), exit_status: int | None = None) -> dict:
    """The whole report as a JSON-ready dict (``json_ready``), every row with every measure (None where not finite
    or not measured), the config diff and the verdict: what `--json` writes."""
    rows = []
    for r in report.rows:
        row = {"name": r.name, "shape": r.shape, "result": result(r), "status": r.status, "message": r.message}
        row.update(_measures(r))
        if r.isolated is not None:
            iso = r.isolated
            row["isolated"] = {"inputs": list(iso.inputs), "status": iso.status, "message": iso.message}
            row["isolated"].update(_measures(iso))
        else:
            row["isolated"] = None
        rows.append(row)
    culprit, first = report.culprit, report.first_failure
    return json_ready(
        {
            "format": REPORT_FORMAT,
            "kind": "modules",
            "header": list(header),
            "passed": report.passed,
            "exit_status": exit_status,
            "culprit": culprit.name if culprit else None,
            "first_failure": first.name if first else None,
            "verdict": verdict(report),
            "config_differences": [
                {"field": f, "reference": a, "candidate": b} for f, a, b in report.config_differences
            ],
            "tolerances": {
                "end_to_end": list(report.tolerances),
                "isolated": _isolated_tolerances(report),
                "overrides": [list(o) for o in report.overrides],
            },
            "isolated_of": report.isolated_of or None,
            "rows": rows,
            "notes": list(report.notes),
        }
    )


def plot_report(report: Report, path=None):
    """End-to-end and isolated relative difference of every compared entry on one axis, in data-flow order (log
    scale): whole layers joined by a line, the tolerances as step lines, the culprit and first failure marked.
    Needs matplotlib.

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

    def clip(value):
        return np.nan if value is None else max(value, floor) if np.isfinite(value) else 1e3

    rel = np.array([clip(r.rel) for r in rows])
    fig = figure.Figure(figsize=(max(8, len(rows) * 0.12) + 2.5, 4.5), layout="constrained")  # + the legend
    ax = fig.add_subplot()
    ax.semilogy(x, rel, ".", color="0.6", label="end to end, every module")
    blocks = [i for i, r in enumerate(rows) if LAYER_NAME.match(r.name) and LAYER_NAME.match(r.name)[3] is None]
    for tower, label in (("vision_tower", "CLIP layer outputs"), ("language_model", "Llama layer outputs")):
        layers = [i for i in blocks if rows[i].name.startswith(tower)]
        if layers:
            ax.semilogy(x[layers], rel[layers], "o-", label=f"{label}, end to end")
    ax.step(x, [r.tol if r.tol else floor for r in rows], where="mid", color="k", lw=0.8, label="tolerance")
    recomputed = [i for i, r in enumerate(rows) if r.isolated is not None and r.isolated.rel is not None]
    if recomputed:
        iso = np.array([clip(rows[i].isolated.rel) for i in recomputed])
        ax.semilogy(x[recomputed], iso, "x", color="tab:green", label="isolated (the module alone)")
        iso_tol = [rows[i].isolated.tol for i in recomputed]
        ax.step(x[recomputed], iso_tol, where="mid", color="tab:green", lw=0.8, ls=":", label="isolated tolerance")
    first, culprit = report.first_failure, report.culprit
    if first is not None and first in rows and first is not culprit:  # red without a culprit, else orange
        color = "r" if culprit is None else "tab:orange"
        ax.axvline(rows.index(first), color=color, ls="--", label=f"first failure: {first.name}")
    if culprit is not None and culprit in rows:
        ax.axvline(rows.index(culprit), color="r", ls="--", label=f"culprit: {culprit.name}")
    ticks = [i for i, r in enumerate(rows) if i in blocks or not LAYER_NAME.match(r.name)]
    ax.set_xticks(ticks, [rows[i].name.replace("vision_tower.encoder.", "v.").replace("language_model.", "lm.")
                          for i in ticks], rotation=90, fontsize=7)  # fmt: skip
    ax.set_ylabel("max |diff| / max |reference|")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes, over no point
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
