"""The command line of the parity tool: `minillava parity` (minillava against Transformers), its exit status, the
config diff, the culprit, the tolerances it picks, --json, the plot, output paths refused before any compute, and
what it does without Transformers or matplotlib."""

import dataclasses
import json
import subprocess
import sys

import pytest

import minillava
from minillava import cli
from minillava.model.trace import order_key
from minillava.parity import command

from .helpers import culprit_line, kv_heads_tiled, run_args, table


def test_command_line_clean_run_exits_0(folder, pictures, capsys):
    assert cli.main(run_args(folder, pictures)) == 0
    out = capsys.readouterr().out
    assert "PASS: all 31 compared entries within tolerance; 28 modules within tolerance in isolation" in out
    assert "config: every resolved field the same on both sides" in out
    assert "real positions" in out  # the two prompts differ in length: a padded batch
    rows = table(out)
    names = list(rows)
    assert names[:3] == ["input_ids", "attention_mask", "pixel_values"]  # the inputs first
    assert names == sorted(names, key=order_key) and names[-1] == "lm_head" and len(names) == 31
    assert all(line.endswith("  ok") for line in rows.values())
    assert max(len(line) for line in out.splitlines()) <= 120


def test_command_line_on_a_llava_interleave_folder(tiny_checkpoint, pictures, capsys):
    """`minillava parity` on llava-interleave's shape (SigLIP + Qwen2, its ChatML template and tokenizer), unchanged:
    every entry within the float32 tolerances, no pre_layrnorm row (SigLIP has none)."""
    folder = tiny_checkpoint("interleave_chat", "hub", "bfloat16", False)
    assert cli.main(run_args(folder, pictures)) == 0
    out = capsys.readouterr().out
    n_entries = 2 + 1 + 1 + 3 * 5 + 2 + 2 + 2 * 5 + 2  # inputs, pixels, embeddings, 3 SigLIP layers, ..., lm_head
    assert f"PASS: all {n_entries} compared entries within tolerance" in out
    assert "vision_tower.encoder.layers.2.mlp" in out and "pre_layrnorm" not in out


def test_command_line_planted_bug_is_the_culprit_and_exits_1(folder, pictures, monkeypatch, capsys):
    kv_heads_tiled(monkeypatch)
    assert cli.main(run_args(folder, pictures)) == 1
    out = capsys.readouterr().out
    assert culprit_line(out).startswith("language_model.layers.0.self_attn ")
    assert table(out)["language_model.layers.0.post_attention_layernorm"].endswith("drift")  # fed the wrong input
    assert "FAIL: culprit language_model.layers.0.self_attn: fed the same input, it gives another output" in out
    assert "look at: attention" in out


def test_a_config_field_read_differently_comes_first(folder, pictures, monkeypatch, capsys):
    """A port that reads rms_norm_eps wrong (here minillava, its loaded config changed): the config diff at the top
    names the field, and the norms that use it are the culprit."""

    def wrong_eps(*args, **kwargs):
        model = minillava.load_model(*args, **kwargs)
        text = dataclasses.replace(model.config.text, rms_norm_eps=1e-2)
        return minillava.LlavaModel(dataclasses.replace(model.config, text=text), model.params)

    monkeypatch.setattr(command, "load_model", wrong_eps)
    assert cli.main(run_args(folder, pictures)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == [
        "config: 1 resolved field(s) differ (reference | candidate):",
        "  text.rms_norm_eps  1e-05 | 0.01",
    ]
    assert "FAIL: the two sides resolved the config differently: text.rms_norm_eps (at the top)" in lines
    assert culprit_line("\n".join(lines)).startswith("language_model.layers.0.input_layernorm ")


def test_reduced_precision_drift_is_not_a_culprit(folder, pictures, capsys):
    """Transformers in bfloat16: within the measured tolerances. With float32's end-to-end tolerances the drift
    fails every row, but each module alone stays within one bfloat16 module's rounding: drift, no culprit."""
    assert cli.main(run_args(folder, pictures, "--dtype", "bf16")) == 0
    out = capsys.readouterr().out
    assert "Transformers in bfloat16" in out and "rounding drift" in out
    assert "tolerance (rel diff): end to end 0.15, lm_head 0.15; isolated 0.08, lm_head 0.016" in out
    fp32_tolerances = ["--tol", "1e-5", "--logits-tol", "1e-4"]
    assert cli.main(run_args(folder, pictures, "--dtype", "bf16", *fp32_tolerances)) == 1
    out = capsys.readouterr().out
    assert "FAIL: drift only: " in out and "<== culprit" not in out
    assert table(out)["language_model.norm"].endswith("drift")
    # --module-tol sets both tolerances of the entries it matches: 1e-5 alone is below one bfloat16 rounding
    assert cli.main(run_args(folder, pictures, "--dtype", "bf16", "--module-tol", "*=1e-5")) == 1
    assert culprit_line(capsys.readouterr().out).startswith("vision_tower.embeddings ")


def test_json_report_for_ci(folder, pictures, monkeypatch, tmp_path, capsys):
    kv_heads_tiled(monkeypatch)
    path = tmp_path / "report.json"
    assert cli.main(run_args(folder, pictures, "--json", str(path))) == 1
    assert f"JSON written to {path}" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["kind"] == "modules" and data["exit_status"] == 1 and data["passed"] is False
    assert data["culprit"] == "language_model.layers.0.self_attn" and data["config_differences"] == []
    assert data["verdict"][0].startswith("FAIL: culprit language_model.layers.0.self_attn")
    rows = {row["name"]: row for row in data["rows"]}
    assert len(rows) == 31 and rows["input_ids"]["isolated"] is None
    attn = rows["language_model.layers.0.self_attn"]
    assert set(attn) >= {"max_abs", "rel", "cosine", "nmse_db", "sqnr_db", "tol", "shape", "result", "isolated"}
    assert attn["isolated"]["status"] == "FAIL" and attn["isolated"]["inputs"] == [
        "language_model.layers.0.input_layernorm", "attention_mask"
    ]  # fmt: skip
    assert 0 < attn["cosine"] < 1 and attn["sqnr_db"] == -attn["nmse_db"]


def test_bad_arguments_are_refused_in_one_line_before_any_compute(folder, pictures, tmp_path, capsys):
    absent = tmp_path / "absent" / "r.out"
    for extra, message in [
        (["--json", str(absent)], f"minillava parity: --json {absent}: the folder {absent.parent} does not exist"),
        (["--plot", str(tmp_path)], f"minillava parity: --plot {tmp_path}: is a folder; give a file name"),
        (["--module-tol", "lm_head=x"], "minillava parity: --module-tol 'lm_head=x': expected GLOB=TOL"),
        (
            ["--tol", "nan"],
            "minillava parity: argument --tol: expected a relative tolerance (a number >= 0), got 'nan'",
        ),
        (["--isolated-tol", "-1"], "argument --isolated-tol: expected a relative tolerance (a number >= 0), got '-1'"),
        (["--image", str(pictures[2])], "minillava parity: --image: 3 image(s) cannot be shared out equally among 2"),
    ]:
        assert cli.main(run_args(folder, pictures, *extra)) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # nothing ran
        assert len(captured.err.strip().splitlines()) == 1 and message in captured.err, captured.err


def test_plot(folder, pictures, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "errors.png"
    assert cli.main(run_args(folder, pictures, "--plot", str(png))) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert cli.main(run_args(folder, pictures, "--plot", str(png))) == 2
    captured = capsys.readouterr()
    assert "PASS" in captured.out  # the report came first
    assert captured.err.strip() == "minillava parity: --plot needs matplotlib: `pip install matplotlib`"


def test_without_transformers_minillava_still_runs(folder, pictures, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    assert cli.main(run_args(folder, pictures)) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "not installed" in captured.err
    assert table(captured.out)["lm_head"].endswith("missing") and "29 entries not in the reference" in captured.out
    assert "PASS" not in captured.out and "FAIL" not in captured.out  # nothing was compared: no verdict
    out = tmp_path / "ours.npz"
    assert cli.main(["parity", "dump", *run_args(folder, pictures)[1:], "--out", str(out)]) == 0
    assert out.is_file()


def test_python_dash_m_dispatch(dumps):
    result = subprocess.run(
        [sys.executable, "-m", "minillava", "parity", "compare", str(dumps["a"]), str(dumps["b"])],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "PASS" in result.stdout, result.stderr


def test_quantized_drift_module_by_module(folder, pictures, capsys):
    """--quantize int8: the vision tower and projector still pass, the language model's modules show the
    quantization error, each one's own in the isolated column (and the report says why it fails)."""
    assert cli.main(run_args(folder, pictures, "--quantize", "int8")) == 1
    out = capsys.readouterr().out
    assert "candidate: minillava (float32, cpu, int8)" in out and "quantized (int8)" in out
    rows = table(out)
    assert rows["multi_modal_projector"].endswith("ok")
    assert rows["language_model.layers.0.self_attn"].split()[-3] == "FAIL"
    assert culprit_line(out).startswith("language_model.layers.0.")
