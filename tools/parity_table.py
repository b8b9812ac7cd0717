"""Print how far minillava's logits are from Transformers' on the tiny test checkpoints.

For each checkpoint variant (the same ones the test suite uses), one left-padded batch of two rows
with three images in all is run through both; the table gives the largest absolute difference of
the logits at real positions, relative to the largest reference logit. The tests require <= 1e-4.
Transformers runs on the CPU in float32; minillava in float32 on ``--device``.

    python tools/parity_table.py                        # minillava on the CPU (NumPy)
    python tools/parity_table.py --device cuda          # minillava on the GPU (CuPy)
    python tools/parity_table.py --llava-7b-widths      # also a random model of llava-1.5-7b's widths with 2 text
                                                        # and 2 CLIP layers (tools/benchmark.py's; ~4 GB of RAM)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.fixtures

import numpy as np  # noqa: E402

from tests.fixtures import tiny_llava  # noqa: E402

ROWS = [
    ("base", "fresh", "float32", False),
    ("base", "hub", "float16", True),
    ("base", "internal", "bfloat16", False),
    ("layer_list", "fresh", "float32", False),
    ("full", "fresh", "float32", False),
    ("mha", "fresh", "float32", False),
    ("no_projector_bias", "hub", "float32", False),
    ("biases", "fresh", "float32", False),
    ("rope_linear", "fresh", "float32", False),
    ("rope_llama3", "fresh", "float32", False),
    ("tied", "fresh", "float32", False),
    ("interleave", "fresh", "float32", False),
    ("interleave", "hub", "float16", True),
    ("interleave", "internal", "bfloat16", False),
]


def batch(config, rng):
    """Row 0: text, image, text, image, text; row 1 shorter and left-padded: text, image, text."""
    L, img = config.num_image_tokens, config.image_token_index
    vocab = [i for i in range(config.text.vocab_size) if i not in (img, config.pad_token_id)]
    row0 = [1, *rng.choice(vocab, 3), *[img] * L, *rng.choice(vocab, 5), *[img] * L, *rng.choice(vocab, 2)]
    row1 = [1, *rng.choice(vocab, 4), *[img] * L, *rng.choice(vocab, 6)]
    T = len(row0)
    pad = T - len(row1)
    input_ids = np.array([row0, [config.pad_token_id] * pad + row1], dtype=np.int64)
    attention_mask = np.array([[1] * T, [0] * pad + [1] * len(row1)], dtype=np.int64)
    side = config.vision.image_size
    pixel_values = rng.standard_normal((3, 3, side, side)).astype(np.float32)
    return input_ids, attention_mask, pixel_values


def llava_7b_widths() -> Path:
    """tools/benchmark.py's random model: llava-1.5-7b's widths, 2 text + 2 CLIP layers, saved in float16."""
    import benchmark

    no_options = dict(config=None, smoke=False, text_layers=None, vision_layers=None, vision_feature_layer=None)
    cfg = benchmark.llava_config(argparse.Namespace(**no_options))  # 2 text + 2 CLIP layers, feature layer -2
    return benchmark.ensure_checkpoint(cfg, tiny_llava.CACHE / "bench-7b-t2-v2-f-2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where minillava runs")
    parser.add_argument("--llava-7b-widths", action="store_true", help="add a row at llava-1.5-7b's widths")
    args = parser.parse_args()
    import torch
    from transformers import LlavaForConditionalGeneration

    import minillava

    torch.set_num_threads(1 if args.device == "cpu" else os.cpu_count())
    rows = [(*row, tiny_llava.checkpoint(*row)) for row in ROWS]
    if args.llava_7b_widths:
        rows.append(("llava-1.5-7b widths", "fresh", "float16", False, llava_7b_widths()))
    print(f"minillava on {args.device}, float32; Transformers on the CPU, float32")
    print(f"{'variant':<20} {'layout':<9} {'file dtype':<10} {'shards':<6} {'max |diff| / max |ref|':>22}")
    for variant, layout, dtype, shard, folder in rows:
        model = minillava.load_model(folder, device=args.device)
        hf = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        input_ids, attention_mask, pixel_values = batch(model.config, np.random.default_rng(0))
        ours = model.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        with torch.no_grad():
            ref = hf(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(attention_mask),
                pixel_values=torch.from_numpy(pixel_values),
                output_hidden_states=True,  # see tests/model/helpers.py: works around layer-0 selection in 5.24
            ).logits.numpy()
        real = attention_mask.astype(bool)
        err = np.max(np.abs(ours[real] - ref[real])) / np.max(np.abs(ref[real]))
        print(f"{variant:<20} {layout:<9} {dtype:<10} {'yes' if shard else 'no':<6} {err:>22.2e}")


if __name__ == "__main__":
    main()
