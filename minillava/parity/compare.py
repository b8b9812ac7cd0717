"""Comparing two traces ({name: array}) entry by entry, in data-flow order, each against a tolerance.

A row per entry, with the measures porters use (``measure``): the largest absolute difference, the relative
difference (that divided by the largest magnitude of the reference), the cosine similarity and the NMSE in dB
(SQNR = -NMSE), and ok / FAIL / missing against the entry's tolerance. Sequence entries ([B, T, ...]) are
compared at real positions only (attention_mask 1): what a model computes for a padding position is arbitrary.

That is the *end-to-end* difference: an entry carries the error of every module before it, so the first row
out of tolerance is where to look, but not always the culprit (float16 drift grows layer by layer). A row may
also carry its *isolated* difference (``Isolated``, computed by isolated.py): the module alone, fed the same
input on both sides. The first row whose isolated difference is out of tolerance is the report's *culprit*;
a row out of tolerance end to end but not in isolation only inherits its error (drift).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math

import numpy as np

from ..model.trace import order_key

INPUT_NAMES = ("input_ids", "attention_mask")  # compared exactly
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Default relative tolerances (modules, lm_head) by the lower precision of the two sides.
# float32: what tests/model/helpers.py requires (measured: <= 2.4e-6 on the three models below).
# float16 / bfloat16 (minillava float32 on the CPU vs Transformers in fp16/bf16, or minillava float16
# on a GPU): the largest drift measured over all modules, on the tiny chat checkpoint and on random
# models of 12 CLIP + 24 Llama layers and 23 CLIP + 32 Llama layers, was 2.3e-3, 3.8e-3, 3.9e-3 in
# fp16 and 1.9e-2, 3.3e-2, 3.8e-2 in bf16 (growing slowly with depth; lm_head below the modules).
# The defaults leave a 4-5x margin over that and stay 3x under the smallest gross bug the tests
# plant (0.44: rotate_half on interleaved pairs). Subtle bugs (a LayerNorm eps, 1.7e-3) are only
# visible in float32. (Measured again with a batch of two prompts and two pictures: up to 1.6e-2 in fp16
# and 5.8e-2 in bf16 on the trained demo, 7.8e-3 and 6.3e-2 at 23 + 32 layers: deep or trained models
# come close to these end-to-end bounds, which is what the isolated differences below are for.)
TOLERANCES = {"float32": (1e-5, 1e-4), "float16": (2e-2, 2e-2), "bfloat16": (1.5e-1, 1.5e-1)}
# Isolated tolerances (modules, lm_head): one module's rounding, not the whole depth's. float32: the
# end-to-end ones (two float32 implementations of one module differ by a few roundings, ~1e-7).
# float16 / bfloat16: the largest isolated difference measured over every module (Transformers in fp16/bf16
# recomputed by minillava float32; minillava float16 fed Transformers' float32 inputs; a float16 minillava
# trace recomputed in float32), on the tiny chat and llava-interleave checkpoints, the demo, random models of
# 12 CLIP + 24 Llama and 23 CLIP + 32 Llama layers and one of 4-10x their widths, with a batch of two prompts and
# two pictures: modules 2.5e-3 in fp16 and 2.0e-2 in bf16 (both the demo's attention, whose trained weights
# make the sharpest softmax), lm_head 5.5e-4 and 3.9e-3, no larger at 32 layers than at 2. The defaults leave a
# 4-4.5x margin over that: a module whose error alone exceeds them is not rounding.
ISOLATED_TOLERANCES = {"float32": (1e-5, 1e-4), "float16": (1e-2, 2.5e-3), "bfloat16": (8e-2, 1.6e-2)}


class ParityError(Exception):
    """A problem the parity tool reports in one line (an unreadable file, Transformers not installed, ...)."""


def is_sequence(name: str) -> bool:
    """Entries shaped [B, T, ...], compared at real (non-padding) positions only."""
    return name.startswith("language_model.") or name in ("inputs_embeds", "lm_head")


@dataclasses.dataclass
class Isolated:
    """A module alone: one side's output of it against minillava's recompute of it from that side's own input
    (``inputs``: the entries it was recomputed from). rel is relative to the recomputed output."""

    inputs: tuple[str, ...]
    max_abs: float | None = None
    rel: float | None = None
    cosine: float | None = None
    nmse_db: float | None = None
    tol: float | None = None
    status: str = "ok"  # "ok", "FAIL", or "n/a" (minillava could not recompute it: the message says why)
    message: str = ""

    @property
    def sqnr_db(self) -> float | None:
        return None if self.nmse_db is None else -self.nmse_db


@dataclasses.dataclass
class Row:
    name: str
    shape: str
    max_abs: float | None = None
    rel: float | None = None
    tol: float | None = None
    status: str = "ok"  # "ok", "FAIL" or "missing"
    message: str = ""
    cosine: float | None = None
    nmse_db: float | None = None
    isolated: Isolated | None = None  # None: not recomputed (an input, or its inputs are not in the trace)

    @property
    def failed(self) -> bool:
        """Out of tolerance end to end (or missing, or another shape)."""
        return self.status != "ok"

    @property
    def isolated_failed(self) -> bool:
        """Out of tolerance in isolation: the module itself computes something else."""
        return self.isolated is not None and self.isolated.status == "FAIL"

    @property
    def drift(self) -> bool:
        """Out of tolerance end to end, within it in isolation: the row only inherits its input's error."""
        return self.status == "FAIL" and self.isolated is not None and self.isolated.status == "ok"

    @property
    def sqnr_db(self) -> float | None:
        return None if self.nmse_db is None else -self.nmse_db


@dataclasses.dataclass
class Report:
    rows: list[Row]
    notes: list[str] = dataclasses.field(default_factory=list)
    allow_missing: bool = False
    # (field, reference's value, candidate's value) for every resolved config field that differs
    config_differences: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    config_checked: bool = False  # both sides' configs were known and compared
    isolated_of: str = ""  # whose inputs the isolated differences recompute, in words ("" when none were)
    tolerances: tuple[float, float] = TOLERANCES["float32"]  # end to end: (modules, lm_head)
    overrides: list = dataclasses.field(default_factory=list)  # [(glob pattern, tolerance)], the last match winning

    def failures(self) -> list[Row]:
        """Rows out of tolerance end to end or in isolation, and missing rows (unless allowed), in order."""
        return [
            r
            for r in self.rows
            if r.status == "FAIL" or r.isolated_failed or (r.status == "missing" and not self.allow_missing)
        ]

    @property
    def first_failure(self) -> Row | None:
        failures = self.failures()
        return failures[0] if failures else None

    @property
    def culprit(self) -> Row | None:
        """The first module whose isolated difference is out of tolerance: fed the same input, it gives another
        output. Every failure after it may be its echo."""
        return next((r for r in self.rows if r.isolated_failed), None)

    @property
    def config_mismatch(self) -> bool:
        return bool(self.config_differences)

    @property
    def passed(self) -> bool:
        return not self.failures() and not self.config_differences


def tolerance_for(name: str, tol: float, logits_tol: float, overrides=()) -> float:
    """The relative tolerance of an entry: 0 (exact) for the int inputs, ``logits_tol`` for lm_head,
    else ``tol``; ``overrides`` is a list of (glob pattern, tolerance), the last match winning."""
    chosen = 0.0 if name in INPUT_NAMES else logits_tol if name == "lm_head" else tol
    for pattern, value in overrides:
        if fnmatch.fnmatchcase(name, pattern):
            chosen = value
    return chosen


def shape_text(a) -> str:
    return str(list(a.shape))


def real_positions(name: str, value, mask):
    """A sequence entry [B, T, ...] at its real positions [n_real, ...] (mask [B, T] boolean); others as they are."""
    if is_sequence(name) and mask is not None and value.shape[:2] == mask.shape:
        return value[mask]  # [real positions, ...]
    return value


def measure(reference, candidate) -> tuple[float, float, float, float]:
    """(max abs diff, rel diff, cosine similarity, NMSE in dB) of two arrays of one shape, in float64.

    rel = max |c - r| / max |r|; cosine = <c, r> / (|c| |r|) over the flattened arrays;
    NMSE dB = 10 log10(sum (c - r)^2 / sum r^2), -inf when equal (SQNR, the signal over the error, is -NMSE).
    A NaN on either side makes every measure NaN (and so the row fail).
    """
    r = np.asarray(reference, dtype=np.float64).ravel()  # [n]
    c = np.asarray(candidate, dtype=np.float64).ravel()  # [n]
    if not (np.isfinite(r).all() and np.isfinite(c).all()):
        return math.nan, math.nan, math.nan, math.nan
    diff = c - r  # [n]
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    error, signal = float(diff @ diff), float(r @ r)
    norms = math.sqrt(float(c @ c) * signal)
    if max_abs == 0:
        cosine = 1.0  # equal (two zero arrays included)
    else:
        cosine = float(c @ r) / norms if norms > 0 else 0.0  # a zero array is orthogonal to everything else
    if error == 0:
        nmse_db = -math.inf
    else:
        nmse_db = 10 * math.log10(error / signal) if signal > 0 else math.inf
    return max_abs, rel, cosine, nmse_db


def compare_traces(
    reference: dict,
    candidate: dict,
    tol: float = TOLERANCES["float32"][0],
    logits_tol: float = TOLERANCES["float32"][1],
    overrides=(),
    allow_missing: bool = False,
    isolated: dict | None = None,
) -> Report:
    """Compare two traces ({name: array}) entry by entry, in data-flow order.

    Sequence entries are compared at the positions where the reference's attention_mask is 1.
    ``isolated``: {name: Isolated} from ``isolated.isolated_differences``, put on the rows of those names.
    """
    mask = reference.get("attention_mask")
    mask = None if mask is None else np.asarray(mask).astype(bool)  # [B, T]
    names = sorted(set(reference) | set(candidate), key=order_key)
    rows = []
    for name in names:
        ref, cand = reference.get(name), candidate.get(name)
        if any(isinstance(a, str) or (a is not None and np.asarray(a).dtype.kind not in "iufb") for a in (ref, cand)):
            continue  # the strings of a .npz trace (format, config, meta) are not activations
        if ref is None or cand is None:
            present = ref if ref is not None else cand
            lacking = "candidate" if cand is None else "reference"
            rows.append(Row(name, shape_text(present), status="missing", message=f"not in the {lacking}"))
            continue
        ref, cand = np.asarray(ref), np.asarray(cand)
        row = Row(name, shape_text(ref), tol=tolerance_for(name, tol, logits_tol, overrides))
        rows.append(row)
        if ref.shape != cand.shape:
            row.status, row.message = "FAIL", f"shape mismatch: candidate {shape_text(cand)}, reference {row.shape}"
            continue
        ref, cand = real_positions(name, ref, mask), real_positions(name, cand, mask)
        row.max_abs, row.rel, row.cosine, row.nmse_db = measure(ref, cand)
        if not (row.rel <= row.tol):  # NaN fails too
            row.status = "FAIL"
    for row in rows:
        if isolated and row.name in isolated and row.status != "missing":
            row.isolated = isolated[row.name]
    report = Report(rows, allow_missing=allow_missing, tolerances=(tol, logits_tol), overrides=list(overrides))
    if mask is not None and not mask.all():
        report.notes.append(
            f"[B, T, ...] entries compared at the {int(mask.sum())} real positions of {mask.size} (padding left out)"
        )
    return report
