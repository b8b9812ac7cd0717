"""The comparison (minillava.parity.compare) finds real bugs: known mistakes are planted in minillava's forward
with monkeypatch, and the report must name the module where each first shows; and, on hand-made traces, how
entries are compared (real positions only, tolerances, NaN, missing entries)."""

import numpy as np
import pytest

import minillava
from minillava import parity
from minillava.model import siglip
from minillava.model.trace import activation_names

from ..model.helpers import BATCH, make_inputs
from .helpers import BUGS, keep_cls, report_for, rotate_half_interleaved


def test_a_clean_run_passes(setup):
    report = report_for(setup)
    assert report.passed and report.first_failure is None
    names = [r.name for r in report.rows]
    model = setup[0]
    assert names == list(parity.INPUT_NAMES) + activation_names(model.config, with_images=True)
    assert all(r.rel is not None and r.rel <= 1e-5 for r in report.rows if r.name != "lm_head")


@pytest.mark.parametrize("plant,first", BUGS, ids=[b[0].__name__ for b in BUGS])
def test_the_report_names_the_first_wrong_module(setup, monkeypatch, plant, first):
    plant(monkeypatch)
    report = report_for(setup)
    assert not report.passed
    assert report.first_failure.name == first
    before = report.rows[: report.rows.index(report.first_failure)]
    assert before and all(r.status == "ok" for r in before)
    table = parity.format_report(report)
    assert [line for line in table.splitlines() if "<== first failure" in line][0].startswith(first + " ")
    assert f"the first in data-flow order is {first} " in table


def test_a_shape_mismatch_is_a_failure_not_a_crash(setup, monkeypatch):
    keep_cls(monkeypatch)  # [N, 1 + Np, Dv] features: the merge then refuses them, ending minillava's forward
    report = report_for(setup)
    row = report.first_failure
    assert row.status == "FAIL" and "shape mismatch: candidate [3, 17, 32], reference [3, 16, 32]" in row.message
    assert any("minillava stopped with ValueError" in note for note in report.notes)
    missing = [r.name for r in report.rows if r.status == "missing"]
    assert "inputs_embeds" in missing and "lm_head" in missing  # never computed, listed as missing
    assert "language_model.embed_tokens" not in missing  # computed before the error, still compared


def test_planted_bug_is_still_caught_at_reduced_precision_tolerances(setup, monkeypatch):
    """The bf16 defaults are loose, but not loose enough to hide a real bug."""
    rotate_half_interleaved(monkeypatch)
    tol, logits_tol = parity.TOLERANCES["bfloat16"]
    model, inputs, reference = setup
    ours, _ = parity.minillava_trace(model, inputs)
    report = parity.compare_traces(reference, ours, tol=tol, logits_tol=logits_tol)
    assert report.first_failure.name == "language_model.layers.0.self_attn"


# ---------------------------------------------------------------------------------------------
# Hand-made traces
# ---------------------------------------------------------------------------------------------


def hand_made_traces():
    """A reference and an equal candidate: a left-padded batch of two rows of 4 positions."""
    rng = np.random.default_rng(0)
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]])
    reference = {
        "input_ids": np.array([[9, 1, 5, 6], [1, 7, 8, 2]]),
        "attention_mask": mask,
        "multi_modal_projector": rng.standard_normal((2, 3, 8)).astype(np.float32),
        "language_model.layers.0.mlp": rng.standard_normal((2, 4, 8)).astype(np.float32),
        "lm_head": rng.standard_normal((2, 4, 16)).astype(np.float32),
    }
    return reference, {name: value.copy() for name, value in reference.items()}


def test_padding_positions_are_left_out_and_entries_sorted():
    reference, candidate = hand_made_traces()
    candidate["language_model.layers.0.mlp"][0, 0] += 100.0  # a padding position: anything goes there
    candidate["lm_head"][0, 0] = np.nan
    report = parity.compare_traces(reference, candidate)
    assert report.passed, parity.format_report(report)
    names = [r.name for r in report.rows]
    assert names == ["input_ids", "attention_mask", "multi_modal_projector", "language_model.layers.0.mlp", "lm_head"]
    assert "compared at the 7 real positions of 8" in report.notes[0]
    candidate["language_model.layers.0.mlp"][0, 1, 0] += 1e-3  # a real position
    report = parity.compare_traces(reference, candidate)
    assert report.first_failure.name == "language_model.layers.0.mlp" and report.first_failure.rel > 1e-5


def test_tolerances_nan_and_missing_entries():
    reference, candidate = hand_made_traces()
    assert parity.tolerance_for("input_ids", 1e-5, 1e-4) == 0  # inputs are compared exactly
    assert parity.tolerance_for("lm_head", 1e-5, 1e-4) == 1e-4
    assert parity.tolerance_for("language_model.layers.0.mlp", 1e-5, 1e-4, [("*.mlp", 0.1), ("*", 0.2)]) == 0.2
    candidate["multi_modal_projector"] = candidate["multi_modal_projector"] * (1 + 5e-5)
    report = parity.compare_traces(reference, candidate)
    assert report.first_failure.name == "multi_modal_projector"
    overridden = parity.compare_traces(reference, candidate, overrides=[("multi_*", 1e-4)])
    assert overridden.passed
    candidate["lm_head"][1, 2, 3] = np.nan
    assert [r.name for r in parity.compare_traces(reference, candidate, tol=1e-3).failures()] == ["lm_head"]
    del candidate["language_model.layers.0.mlp"]
    report = parity.compare_traces(reference, candidate, tol=1e-3)
    assert report.first_failure.status == "missing" and report.first_failure.message == "not in the candidate"
    allowed = parity.compare_traces(reference, candidate, tol=1e-3, allow_missing=True)
    assert [r.name for r in allowed.failures()] == ["lm_head"]


def test_interleave_checkpoints_compare_unchanged(tiny_checkpoint, monkeypatch):
    """The parity tool on llava-interleave's shape (SigLIP + Qwen2): both sides record the same activations (no
    pre_layrnorm: SigLIP has none), a clean run passes, in isolation too, and a bug planted in the SigLIP
    embeddings is caught there first, and named the culprit."""
    folder = tiny_checkpoint("interleave", "hub", "float16", True)
    model, hf = minillava.load_model(folder), parity.load_transformers(folder)
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(4), BATCH)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
    theirs, error = parity.transformers_trace(hf, model.config, inputs)
    assert error is None
    ours, _ = parity.minillava_trace(model, inputs)
    report = parity.compare_traces(theirs, ours)
    assert report.passed, parity.format_report(report)
    names = [r.name for r in report.rows]
    assert names == list(parity.INPUT_NAMES) + activation_names(model.config, with_images=True)
    assert "vision_tower.pre_layrnorm" not in names and "vision_tower.encoder.layers.2" in names

    isolated = parity.isolated_differences(model, theirs, *parity.ISOLATED_TOLERANCES["float32"])
    assert len(isolated) == len(names) - 3 and all(r.status == "ok" for r in isolated.values())  # all but the inputs

    upside_down = siglip.embeddings
    monkeypatch.setattr(siglip, "embeddings", lambda params, pixels: upside_down(params, pixels[:, :, ::-1]))
    bad, _ = parity.minillava_trace(model, inputs)
    assert parity.compare_traces(theirs, bad).first_failure.name == "vision_tower.embeddings"
    isolated = parity.isolated_differences(model, theirs, *parity.ISOLATED_TOLERANCES["float32"])
    assert parity.compare_traces(theirs, bad, isolated=isolated).culprit.name == "vision_tower.embeddings"


# ---------------------------------------------------------------------------------------------
# The measures of a row
# ---------------------------------------------------------------------------------------------


def test_measures_of_equal_scaled_noisy_orthogonal_and_nan_arrays():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal(1000)
    assert parity.measure(reference, reference.copy()) == (0.0, 0.0, 1.0, -np.inf)  # -inf dB: no error at all
    max_abs, rel, cosine, nmse_db = parity.measure(reference, 1.01 * reference)  # 1% too large everywhere
    assert max_abs == pytest.approx(0.01 * np.abs(reference).max()) and rel == pytest.approx(0.01)
    assert cosine == pytest.approx(1.0) and nmse_db == pytest.approx(-40.0)  # 10 log10(0.01^2)
    noise = rng.standard_normal(1000)
    noise *= 0.1 * np.linalg.norm(reference) / np.linalg.norm(noise)  # an error of a tenth of the signal's norm
    assert parity.measure(reference, reference + noise)[3] == pytest.approx(-20.0)  # SQNR 20 dB
    orthogonal = parity.measure(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert orthogonal[2] == 0.0 and orthogonal[3] == pytest.approx(10 * np.log10(2))
    assert parity.measure(np.zeros(3), np.ones(3))[1:] == (np.inf, 0.0, np.inf)  # nothing to be relative to
    assert all(np.isnan(parity.measure(reference, np.where(np.arange(1000) == 5, np.nan, reference))))


def test_rows_carry_cosine_and_nmse_at_real_positions():
    reference, candidate = hand_made_traces()
    candidate["lm_head"][1] *= 1.001  # row 1 has no padding: 0.1% off
    candidate["lm_head"][0, 0] = 1e6  # a padding position: left out
    row = {r.name: r for r in parity.compare_traces(reference, candidate).rows}["lm_head"]
    real = reference["lm_head"][reference["attention_mask"].astype(bool)].astype(np.float64)  # [7, 16]
    error = 0.001 * reference["lm_head"][1].astype(np.float64)  # [4, 16]: row 1's change
    assert row.nmse_db == pytest.approx(10 * np.log10((error**2).sum() / (real**2).sum()), abs=1e-3)
    assert row.sqnr_db == -row.nmse_db and 1 - 1e-6 < row.cosine < 1
