"""tools/attention_variants.py, the paired in-process timing of minillava's ways of attending, in its --smoke mode:
tiny sizes, blocks of 16 queries so that its 40 positions span several. Only that it runs, names the three ways
and finds their logits equal to float32 rounding are checked, never its timings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_mode_times_the_three_ways_and_finds_the_same_logits():
    run = subprocess.run([sys.executable, "tools/attention_variants.py", "--smoke"], cwd=ROOT, capture_output=True,
                         text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "prefill of 40 positions, 2 rounds" in run.stdout and "blocks of 16 queries" in run.stdout, run.stdout
    rows = dict(re.findall(r"^(whole|blocks|tiled) +median .* logits: (\S+) of the largest", run.stdout, re.M))
    assert set(rows) == {"whole", "blocks", "tiled"}, run.stdout
    assert float(rows["whole"]) == 0 and float(rows["blocks"]) <= 1e-5 and float(rows["tiled"]) <= 1e-5, rows
