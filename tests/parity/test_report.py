"""The report (minillava.parity.report): the config diff first, the table in data-flow order with the culprit (or
the first failure) marked, drift told apart from a wrong module, the verdict and the hint where to look, every line
within 120 columns, the JSON and the plot."""

import json

import pytest

from minillava import parity
from minillava.parity.compare import Isolated, Report, Row


def report_of(*rows, **kwargs):
    return Report(list(rows), **kwargs)


def alone(rel, tol=1e-5, status=None):
    """An isolated difference of ``rel``, ok or FAIL against ``tol``."""
    return Isolated(("x",), rel, rel, 1.0, -100.0, tol, status or ("ok" if rel <= tol else "FAIL"))


def test_table_marks_the_first_failure_and_says_where_to_look():
    report = report_of(
        Row("vision_tower.encoder.layers.0.mlp", "[3, 17, 32]", 1e-7, 2e-7, 1e-5, cosine=1.0, nmse_db=-130.0),
        Row("language_model.layers.0.self_attn", "[2, 9, 48]", 0.5, 0.4, 1e-5, status="FAIL", cosine=0.87),
        Row("language_model.layers.0", "[2, 9, 48]", 0.7, 0.6, 1e-5, status="FAIL"),
        Row("lm_head", "[2, 9, 384]", status="missing", message="not in the candidate"),
        notes=["a note"],
    )
    table = parity.format_report(report, header=["HEADER"]).splitlines()
    assert table[0] == "HEADER" and table[1] == "tolerance (rel diff): end to end 1e-05, lm_head 0.0001"
    assert table[2].split() == ["module", "max", "abs", "rel", "diff", "cosine", "NMSE", "dB", "result"]
    assert [line.split()[0] for line in table[3:7]] == [r.name for r in report.rows]
    assert table[3].split()[1:] == ["1.0e-07", "2.0e-07", "1", "-130.0", "ok"]
    assert table[4].split() == [
        "language_model.layers.0.self_attn", "5.0e-01", "4.0e-01", "0.870000", "-", "FAIL", "<==", "first", "failure"
    ]  # fmt: skip
    assert [line for line in table if "<==" in line] == [table[4]]
    assert table[6].split()[1:] == ["-", "-", "-", "-", "missing"]
    assert table[7:9] == ["note: 1 entries not in the candidate: lm_head", "note: a note"]
    verdict = " ".join(line.strip() for line in table[9:])
    assert verdict.startswith(
        "FAIL: 3 of 4 entries fail; the first in data-flow order is language_model.layers.0.self_attn "
        "(rel diff 4.0e-01 > tol 1e-05) look at: "
    )
    assert verdict.endswith(parity.HINTS["self_attn"])


def test_the_culprit_is_the_first_module_wrong_in_isolation_and_drift_is_shown_as_such():
    """float16 drift fails a strict end-to-end tolerance from the first entry on; the module wrong in isolation is
    named, not the first row over the tolerance."""
    report = report_of(
        Row("vision_tower.embeddings", "[1, 17, 32]", 1e-3, 3e-4, 1e-5, "FAIL", isolated=alone(4e-4, 1e-2)),
        Row("language_model.layers.0.input_layernorm", "[1, 9, 48]", 1e-3, 4e-4, 1e-5, "FAIL",
            isolated=alone(4e-4, 1e-2)),
        Row("language_model.layers.0.mlp", "[1, 9, 48]", 0.5, 0.3, 1e-5, "FAIL", isolated=alone(0.3, 1e-2)),
        Row("language_model.layers.0", "[1, 9, 48]", 0.6, 0.3, 1e-5, "FAIL", isolated=alone(0.0, 1e-2)),
        Row("lm_head", "[1, 9, 384]", 0.1, 0.05, 1e-4, "FAIL", isolated=alone(1e-4, 2.5e-3)),
    )  # fmt: skip
    assert report.first_failure.name == "vision_tower.embeddings"
    assert report.culprit.name == "language_model.layers.0.mlp"
    rows = {line.split()[0]: line for line in parity.format_report(report).splitlines() if line.startswith(("v", "l"))}
    assert rows["vision_tower.embeddings"].endswith("4.0e-04  drift")  # within the isolated tolerance
    assert rows["language_model.layers.0.mlp"].endswith("3.0e-01  FAIL  <== culprit")
    assert rows["language_model.layers.0"].endswith("0  drift") and rows["lm_head"].endswith("drift")
    text = parity.format_report(report)
    assert "tolerance (rel diff): end to end 1e-05, lm_head 0.0001; isolated 0.01, lm_head 0.0025" in text
    assert parity.verdict(report) == [
        "FAIL: culprit language_model.layers.0.mlp: fed the same input, it gives another output (isolated rel diff "
        "3.0e-01 > tol 0.01); 2 failing entries after it may be its echo",
        "look at: " + parity.HINTS["mlp"],
    ]


def test_the_config_diff_and_the_inputs_come_before_any_module():
    report = report_of(
        Row("input_ids", "[1, 9]", 0, 0, 0),
        Row("pixel_values", "[1, 3, 28, 28]", 0.5, 0.2, 1e-5, "FAIL"),
        Row("language_model.layers.0.self_attn", "[1, 9, 48]", 0.5, 0.4, 1e-5, "FAIL", isolated=alone(0.4)),
        config_differences=[("text.rms_norm_eps", 1e-05, 1e-06), ("vision.image_size", 336, 224)],
    )
    lines = parity.format_report(report, header=["HEADER"]).splitlines()
    assert lines[1:4] == [
        "config: 2 resolved field(s) differ (reference | candidate):",
        "  text.rms_norm_eps  1e-05 | 1e-06",
        "  vision.image_size  336 | 224",
    ]
    assert parity.verdict(report)[:3] == [
        "FAIL: the two sides resolved the config differently: text.rms_norm_eps, vision.image_size (at the top)",
        f"FAIL: the inputs differ (pixel_values: {parity.HINTS['pixel_values']})",
        "FAIL: culprit language_model.layers.0.self_attn: fed the same input, it gives another output (isolated rel "
        "diff 4.0e-01 > tol 1e-05); 0 failing entries after it may be its echo",
    ]
    checked = report_of(Row("lm_head", "[1, 2, 8]", 0.0, 0.0, 1e-4), config_checked=True)
    assert "config: every resolved field the same on both sides" in parity.format_report(checked).splitlines()


def test_verdicts_drift_only_and_the_hint_for_a_whole_layer():
    ok = Row("lm_head", "[1, 2, 8]", 0.0, 0.0, 1e-4)
    assert parity.format_report(report_of(ok)).splitlines()[-1] == "PASS: all 1 compared entries within tolerance"
    ok_alone = Row("lm_head", "[1, 2, 8]", 0.0, 0.0, 1e-4, isolated=alone(0.0))
    assert parity.verdict(report_of(ok_alone)) == [
        "PASS: all 1 compared entries within tolerance; 1 modules within tolerance in isolation"
    ]
    drift = Row("language_model.norm", "[1, 2, 8]", 1e-3, 1e-3, 1e-5, "FAIL", isolated=alone(1e-6))
    assert parity.verdict(report_of(drift, ok_alone)) == [
        "FAIL: drift only: 1 entries exceed the end-to-end tolerance from language_model.norm on, but every module "
        "is within tolerance in isolation (error carried downstream, no module wrong by itself)"
    ]
    layer = Row("language_model.layers.1", "[1, 2, 8]", 1.0, 1.0, 1e-5, status="FAIL")
    assert parity.format_report(report_of(ok, layer)).endswith(
        "look at: the residual adds of the layer (or a part of it that one side does not trace)"
    )
    missing = report_of(
        Row("lm_head", "[1, 2, 8]", status="missing", message="not in the reference"), allow_missing=True
    )
    assert missing.passed and parity.format_report(missing).endswith("PASS: all 0 compared entries within tolerance")


def test_every_line_fits_a_terminal_of_120_columns():
    """At llava-1.5-7b's depth the longest names (language_model.layers.31.post_attention_layernorm) still leave
    room for every column and the culprit's mark; notes and verdicts are wrapped."""
    rows = []
    for i in range(32):
        for part in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
            rows.append(Row(f"language_model.layers.{i}.{part}", "[1, 600, 4096]", 1.5e-3, 2.5e-3, 2e-2,
                            cosine=0.999999, nmse_db=-61.3, isolated=alone(2.5e-3, 1e-2)))  # fmt: skip
    rows[-3].status, rows[-3].isolated = "FAIL", alone(0.7, 1e-2)
    rows.append(Row("lm_head", "[1, 600, 32064]", status="missing", message="not in the candidate"))
    report = report_of(*rows, notes=["a long note " * 20], isolated_of="Transformers' own input to it " * 3)
    text = parity.format_report(report, header=["reference: " + "a/very/long/path/" * 10])
    assert "<== culprit" in text and max(len(line) for line in text.splitlines()) <= 120


def test_json_holds_every_row_and_measure_as_strict_json():
    report = report_of(
        Row("input_ids", "[1, 9]", 0.0, 0.0, 0.0, cosine=1.0, nmse_db=float("-inf")),
        Row("language_model.layers.0.mlp", "[1, 9, 48]", 0.5, 0.3, 1e-5, "FAIL", cosine=0.9, nmse_db=-10.0,
            isolated=alone(0.3)),
        config_differences=[("text.rms_norm_eps", 1e-05, 1e-06)],
    )  # fmt: skip
    data = json.loads(json.dumps(parity.report_json(report, ["HEADER"], exit_status=1), allow_nan=False))
    assert data["format"] == "minillava-parity-report/1" and data["kind"] == "modules"
    assert data["passed"] is False and data["exit_status"] == 1 and data["header"] == ["HEADER"]
    assert data["culprit"] == data["first_failure"] == "language_model.layers.0.mlp"
    assert data["config_differences"] == [{"field": "text.rms_norm_eps", "reference": 1e-05, "candidate": 1e-06}]
    assert data["verdict"] == parity.verdict(report)
    exact, mlp = data["rows"]
    assert exact["nmse_db"] is None and exact["sqnr_db"] is None and exact["isolated"] is None  # -inf: null
    assert mlp == {
        "name": "language_model.layers.0.mlp", "shape": "[1, 9, 48]", "result": "FAIL", "status": "FAIL",
        "message": "", "max_abs": 0.5, "rel": 0.3, "cosine": 0.9, "nmse_db": -10.0, "sqnr_db": 10.0, "tol": 1e-05,
        "isolated": {"inputs": ["x"], "status": "FAIL", "message": "", "max_abs": 0.3, "rel": 0.3, "cosine": 1.0,
                     "nmse_db": -100.0, "sqnr_db": 100.0, "tol": 1e-05},
    }  # fmt: skip
    assert data["tolerances"] == {"end_to_end": [1e-05, 1e-04], "isolated": [1e-05, None], "overrides": []}


def test_plot_shows_both_differences_and_marks_the_culprit(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [
        Row(f"language_model.layers.{i}", "[1, 2, 8]", 1e-7, 1e-7 * 10**i, 1e-5, isolated=alone(1e-7 * (i == 2)))
        for i in range(4)
    ]
    rows[2].status = rows[3].status = "FAIL"
    rows[2].isolated = alone(0.1)
    figure = parity.plot_report(report_of(Row("input_ids", "[1, 2]", 0, 0, 0), *rows), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "culprit: language_model.layers.2" in labels and "isolated (the module alone)" in labels
    assert "Llama layer outputs, end to end" in labels and "isolated tolerance" in labels
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == [f"lm.layers.{i}" for i in range(4)]
    without = parity.plot_report(report_of(*[Row(r.name, r.shape, r.max_abs, r.rel, r.tol, r.status) for r in rows]))
    assert "first failure: language_model.layers.2" in without.axes[0].get_legend_handles_labels()[1]
    with pytest.raises(parity.ParityError, match="nothing was compared"):
        parity.plot_report(report_of(Row("lm_head", "[1]", status="missing")))
