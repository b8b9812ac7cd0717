"""Comparing two traces ({name: array}) entry by entry, in data-flow order, each against a tolerance.

A row per entry: its shape, the largest absolute difference, the relative difference (that divided by the
largest magnitude of the reference) and ok / FAIL / missing against the entry's tolerance. The report's
*first failure* in data-flow order is where to look: every module after it is fed its error. Sequence
entries ([B, T, ...]) are compared at real positions only (attention_mask 1): what a model computes for a
padding position is arbitrary.
"""

from __future__ import annotations

import dataclasses
import fnmatch

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
# visible in float32.
TOLERANCES = {"float32": (1e-5, 1e-4), "float16": (2e-2, 2e-2), "bfloat16": (1.5e-1, 1.5e-1)}


class ParityError(Exception):
    """A problem the parity tool reports in one line (an unreadable file, Transformers not installed, ...)."""


def is_sequence(name: str) -> bool:
    """Entries shaped [B, T, ...], compared at real (non-padding) positions only."""
    return name.startswith("language_model.") or name in ("inputs_embeds", "lm_head")


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
        ref, cand = reference.get(name), candidate.get(name)
        if any(isinstance(a, str) or (a is not None and np.asarray(a).dtype.kind not in "iufb") for a in (ref, cand)):
            continue  # the strings of a .npz trace (format, config, meta) are not activations
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
