"""tools/benchmark_gpu_7b.py, the full-size llava-1.5-7b GPU benchmark, in its --smoke mode on the CPU: tiny sizes,
one round of its three processes (minillava, Transformers with sdpa, Transformers with eager). Only that the
script runs and what its JSON holds are checked, never its timings (they depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("image_encode", "prefill", "decode_b1", "decode_b8")


def test_smoke_mode_on_the_cpu_runs_all_three_processes_and_writes_the_json(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "tools/benchmark_gpu_7b.py", "--smoke", "--device", "cpu", "--json", str(out)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["settings"]["smoke"] is True and record["settings"]["device"] == "cpu"
    assert record["config"]["text_config"]["num_hidden_layers"] == 2
    assert record["config"]["vision_config"]["num_hidden_layers"] == 2
    assert record["batch_sizes"] == [1, 8]

    (round_,) = record["rounds"]  # --smoke: one round
    assert set(round_) == {"minillava", "transformers-sdpa", "transformers-eager"}
    for name, result in round_.items():
        for phase in PHASES:
            assert result[phase] > 0, (name, phase)
        assert result["finite"] is True, name
        assert result["peak_memory_bytes"] > 0 and result["peak_memory_kind"] == "process peak RSS", name
        assert result["prompt_tokens"] == 40, name  # BOS + 4 + 16 image tokens + 19 at the tiny sizes
        assert len(result["tokens"]) == 4, name  # the prefill's token, the warm-up step's, 2 timed steps
    assert round_["minillava"]["imports_torch"] is False
    assert round_["minillava"]["clip_layers_run"] == 1  # stops at vision_feature_layer -2
    assert round_["transformers-sdpa"]["clip_layers_run"] == 2
    assert round_["transformers-sdpa"]["attn_implementation"] == "sdpa"
    assert round_["transformers-eager"]["attn_implementation"] == "eager"

    summary = record["summary"]
    for phase in PHASES:
        assert summary[phase]["ratio_sdpa"] > 0 and summary[phase]["ratio_eager"] > 0, phase
        assert len(summary[phase]["round_ratios_sdpa"]) == 1, phase
    assert summary["decode_b8"]["minillava_tokens_per_s"] == 8 / summary["decode_b8"]["minillava_s"]
    assert set(summary["finite"].values()) == {True}
    assert isinstance(summary["tokens_agree"]["sdpa_vs_eager"], bool)
    assert summary["tokens_agree"]["minillava_vs_transformers"] is None  # different random weights
    # load_model(..., cuda_graphs=True)'s decode step and fused_kernels=True, minillava's only: on the CPU
    # unrecorded and unfused, the same tokens
    assert round_["minillava"]["decode_b1_cuda_graphs"] > 0 and round_["minillava"]["decode_b8_cuda_graphs"] > 0
    assert round_["minillava"]["prefill_fused"] > 0 and round_["minillava"]["decode_b8_fused_cuda_graphs"] > 0
    assert summary["tokens_agree"]["minillava_cuda_graphs_vs_plain"] is True
    assert summary["tokens_agree"]["minillava_fused_cuda_graphs_vs_plain"] is True
    assert summary["decode_b1_cuda_graphs"]["ratio_sdpa"] > 0 and summary["prefill_fused"]["ratio_sdpa"] > 0
    rows = ("image encode", "prefill", "decode b1 tok/s", "decode b8 tok/s", "graphs b1", "fused prefill",
            "fused+graphs b8", "peak memory")  # fmt: skip
    for line in rows:
        assert line in run.stdout, line


def test_rounds_of_zero_are_refused_before_any_process_starts():
    command = [sys.executable, "tools/benchmark_gpu_7b.py", "--rounds", "0"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert "--rounds, --repeats, --decode-steps and --threads must be at least 1" in run.stderr
    assert "round 1/" not in run.stderr


def test_the_full_size_on_the_cpu_is_refused_with_the_way_to_check_the_script():
    command = [sys.executable, "tools/benchmark_gpu_7b.py", "--device", "cpu"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert "--device cpu runs only with --smoke" in run.stderr and "tools/full_size.py" in run.stderr
    assert "round 1/" not in run.stderr
