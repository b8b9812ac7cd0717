"""tools/prefill_breakdown.py, which splits each framework's prefill into its products with the weights and the rest,
in its --smoke mode (tools/benchmark.py's tiny model). Only what it counts is checked, never its timings: that both
frameworks' instrumentation sees every product, and the floating-point operations it reports equal those of the
model's shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from benchmark import TINY  # noqa: E402


def linear_flop(rows, d_in, d_out):
    return 2 * rows * d_in * d_out  # [rows, d_in] x [d_in, d_out]: a multiply and an add per term


def test_smoke_mode_counts_every_product_of_both_frameworks(tmp_path):
    out = tmp_path / "breakdown.json"
    run = subprocess.run([sys.executable, "tools/prefill_breakdown.py", "--smoke", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    for line in ("whole prefill", "products with the weights", "everything else", "products at equal work"):
        assert line in run.stdout, run.stdout
    mini, hf = (json.loads(out.read_text())["rounds"][0][f] for f in ("minillava", "transformers"))

    text, vision = TINY["text_config"], TINY["vision_config"]
    D, F, V = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    Dv, Fv, P = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    patches = (vision["image_size"] // P) ** 2  # 16 image tokens
    T = 40  # the smoke prompt: BOS, 4 words, 16 image tokens, 19 words
    L = patches + 1  # CLIP's positions: the class embedding and the patches
    clip_layer = 4 * linear_flop(L, Dv, Dv) + linear_flop(L, Dv, Fv) + linear_flop(L, Fv, Dv)
    llama_layer = 4 * linear_flop(T, D, D) + 2 * linear_flop(T, D, F) + linear_flop(T, F, D)
    shared = (
        linear_flop(patches, 3 * P * P, Dv)  # the patch embedding (a convolution in Transformers)
        + linear_flop(patches, Dv, D) + linear_flop(patches, D, D)  # the projector
        + 2 * llama_layer
        + linear_flop(1, D, V)  # lm_head, the last position only
    )  # fmt: skip
    # minillava stops at vision_feature_layer -2 (1 of the 2 CLIP layers); Transformers runs both.
    assert (mini["vision_layers_run"], hf["vision_layers_run"]) == (1, 2)
    assert mini["products_flop"] == shared + clip_layer
    assert hf["products_flop"] == shared + 2 * clip_layer
    assert (mini["products_calls"], hf["products_calls"]) == (1 + 6 + 2 + 14 + 1, 1 + 12 + 2 + 14 + 1)
    for result in (mini, hf):
        assert 0 < result["products_s"] < result["instrumented_s"], result
