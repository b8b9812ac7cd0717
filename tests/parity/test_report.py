"""The report (minillava.parity.report): the table in data-flow order with the first failure marked, the verdict
and the hint where to look, and the plot."""

import pytest

from minillava import parity
from minillava.parity.compare import Report, Row


def report_of(*rows, **kwargs):
    return Report(list(rows), **kwargs)


def test_table_marks_the_first_failure_and_says_where_to_look():
    report = report_of(
        Row("vision_tower.encoder.layers.0.mlp", "[3, 17, 32]", 1e-7, 2e-7, 1e-5),
        Row("language_model.layers.0.self_attn", "[2, 9, 48]", 0.5, 0.4, 1e-5, status="FAIL"),
        Row("language_model.layers.0", "[2, 9, 48]", 0.7, 0.6, 1e-5, status="FAIL"),
        Row("lm_head", "[2, 9, 384]", status="missing", message="not in the candidate"),
        notes=["a note"],
    )
    table = parity.format_report(report, header=["HEADER"]).splitlines()
    assert table[0] == "HEADER" and table[1].split()[:2] == ["module", "shape"] and table[1].endswith("result")
    assert [line.split()[0] for line in table[2:6]] == [r.name for r in report.rows]
    assert [line for line in table if "<== first failure" in line] == [table[3]]
    assert table[3].split()[:6] == ["language_model.layers.0.self_attn", "[2,", "9,", "48]", "5.00e-01", "4.00e-01"]
    assert "missing  (not in the candidate)" in table[5]
    assert table[6] == "note: a note"
    assert table[7] == (
        "FAIL: 3 of 4 entries fail; the first in data-flow order is language_model.layers.0.self_attn "
        "(rel diff 4.00e-01 > tol 1e-05)"
    )
    assert table[8] == "look at: " + parity.HINTS["self_attn"]


def test_verdicts_and_the_hint_for_a_whole_layer():
    ok = Row("lm_head", "[1, 2, 8]", 0.0, 0.0, 1e-4)
    assert parity.format_report(report_of(ok)).splitlines()[-1] == "PASS: all 1 compared entries within tolerance"
    mismatch = parity.format_report(report_of(ok, config_mismatch=True)).splitlines()[-1]
    assert mismatch == "FAIL: the two sides were made from different configs (see the notes)"
    layer = Row("language_model.layers.1", "[1, 2, 8]", 1.0, 1.0, 1e-5, status="FAIL")
    assert parity.format_report(report_of(ok, layer)).endswith(
        "look at: the residual adds of the layer (or a part of it that one side does not trace)"
    )
    missing = report_of(
        Row("lm_head", "[1, 2, 8]", status="missing", message="not in the reference"), allow_missing=True
    )
    assert missing.passed and parity.format_report(missing).endswith("PASS: all 0 compared entries within tolerance")


def test_plot_marks_the_first_failure(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [Row(f"language_model.layers.{i}", "[1, 2, 8]", 1e-7, 1e-7 * 10**i, 1e-5) for i in range(4)]
    rows[2].status = rows[3].status = "FAIL"
    figure = parity.plot_report(report_of(Row("input_ids", "[1, 2]", 0, 0, 0), *rows), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "first failure: language_model.layers.2" in labels and "Llama layer outputs" in labels
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == [f"lm.layers.{i}" for i in range(4)]
    with pytest.raises(parity.ParityError, match="nothing was compared"):
        parity.plot_report(report_of(Row("lm_head", "[1]", status="missing")))
