"""The command line of the parity tool: `minillava parity` (minillava against Transformers), its exit status, the
tolerances it picks, the plot, and what it does without Transformers or matplotlib."""

import subprocess
import sys

import pytest

from minillava import cli
from minillava.model.trace import order_key

from .helpers import first_failure_line, kv_heads_tiled, run_args


def test_command_line_clean_run_exits_0(folder, pictures, capsys):
    assert cli.main(run_args(folder, pictures)) == 0
    out = capsys.readouterr().out
    assert "PASS: all 31 compared entries within tolerance" in out
    assert "real positions" in out  # the two prompts differ in length: a padded batch
    names = [line.split()[0] for line in out.splitlines()[2:33]]
    assert names == sorted(names, key=order_key) and names[-1] == "lm_head"


def test_command_line_on_a_llava_interleave_folder(tiny_checkpoint, pictures, capsys):
    """`minillava parity` on llava-interleave's shape (SigLIP + Qwen2, its ChatML template and tokenizer), unchanged:
    every entry within the float32 tolerances, no pre_layrnorm row (SigLIP has none)."""
    folder = tiny_checkpoint("interleave_chat", "hub", "bfloat16", False)
    assert cli.main(run_args(folder, pictures)) == 0
    out = capsys.readouterr().out
    n_entries = 2 + 1 + 1 + 3 * 5 + 2 + 2 + 2 * 5 + 2  # inputs, pixels, embeddings, 3 SigLIP layers, ..., lm_head
    assert f"PASS: all {n_entries} compared entries within tolerance" in out
    assert "vision_tower.encoder.layers.2.mlp" in out and "pre_layrnorm" not in out


def test_command_line_planted_bug_exits_1(folder, pictures, monkeypatch, capsys):
    kv_heads_tiled(monkeypatch)
    assert cli.main(run_args(folder, pictures)) == 1
    out = capsys.readouterr().out
    assert first_failure_line(out).startswith("language_model.layers.0.self_attn ")
    assert "look at: attention" in out


def test_reduced_precision_uses_measured_tolerances_and_says_so(folder, pictures, capsys):
    assert cli.main(run_args(folder, pictures, "--dtype", "bf16")) == 0
    out = capsys.readouterr().out
    assert "Transformers in bfloat16" in out and "rounding drift" in out
    # The drift is real: fp32 tolerances reject it.
    fp32_tolerances = ["--tol", "1e-5", "--logits-tol", "1e-4"]
    assert cli.main(run_args(folder, pictures, "--dtype", "bf16", *fp32_tolerances)) == 1
    assert cli.main(run_args(folder, pictures, "--dtype", "bf16", "--module-tol", "*=1e-5")) == 1


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
    assert "lm_head" in captured.out and "missing  (not in the reference)" in captured.out
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
    quantization error (and the report says why it fails)."""
    assert cli.main(run_args(folder, pictures, "--quantize", "int8")) == 1
    out = capsys.readouterr().out
    assert "candidate: minillava (float32, cpu, int8)" in out and "quantized (int8)" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("vision_", "multi_", "language_"))}
    assert rows["multi_modal_projector"].rstrip().endswith("ok")
    assert "FAIL" in rows["language_model.layers.0.self_attn"]
    assert first_failure_line(out).startswith("language_model.layers.0.")
