"""tools/train_stage1.py, LLaVA's stage 1 in NumPy, in miniature: a few steps on a few held-out pictures, in a
process of its own that must never import torch; what it writes. (The full run's figures are in the README:
it is minutes long, so the suite does not repeat it.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_run_trains_the_projector_without_torch(tmp_path):
    out = tmp_path / "run.json"
    code = (
        "import sys\n"
        "from tests.tools import load_tool\n"
        f"args = ['--steps', '3', '--batch-size', '4', '--heldout', '5', '--json', {str(out)!r}]\n"
        "load_tool('train_stage1').main(args)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    record = json.loads(out.read_text())
    assert record["heldout"] == 5 and record["steps"] == 3 and record["batch_size"] == 4
    assert len(record["losses"]) == 3 and all(math.isfinite(x) and x > 0 for x in record["losses"])
    assert 0 <= record["reinitialised"] <= record["shipped"] <= 5
    assert "held-out answers right: shipped model" in run.stdout and "trained 3 steps of 4" in run.stdout


def test_bad_arguments_are_refused():
    for args in (["--steps", "0"], ["--lr", "-1"], ["--warmup", "1.5"], ["--heldout", "0"]):
        run = subprocess.run([sys.executable, "tools/train_stage1.py", *args], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 2 and "must be >= 1, --lr > 0, --warmup in [0, 1)" in run.stderr, args
