"""minillava's prefill with each way of attending, timed in pairs in one process: which is faster, and by how much.

    python tools/attention_variants.py             # 12 pairs, llava-1.5-7b's widths (2 text, 2 CLIP layers), 2 threads
    python tools/attention_variants.py --smoke     # tiny sizes, seconds: checks the script

``tools/benchmark.py`` compares minillava with Transformers, each in its own process. On a shared machine the
speed of a process drifts by more than the change being measured (this project's 2-vCPU machine: the same prefill
2.8-3.4 s in four processes within ten minutes), so to decide between two ways of computing the same thing this
tool runs them in one process on one model, alternating (whole, blocks, tiled, tiled, blocks, whole, ...), and
reports each one's median and the median of its per-pair ratios to the first ("whole"):

    whole    the plain scaled_dot_product_attention on the whole [B, H, T, T] score matrix
    blocks   the same function by blocks of 128 queries, each with only the keys it may see (by_query_blocks:
             what the model uses on the CPU)
    tiled    tiled_attention, FlashAttention's loop with an online softmax (attn_implementation="tiled")

Each variant's logits are compared with the first's (the same numbers to float32 rounding). The model is
tools/benchmark.py's (built with Transformers once, cached in .fixtures/); the inputs are its image and 600-token
prompt. Never use these timings in assertions.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=12, help="rounds over the variants (each times every variant)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads")
    parser.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="queries per block for blocks and tiled "
        "(default: the functions' own, 128; --smoke: 16, so that its 40 positions span blocks)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 pairs: checks the script")
    args = parser.parse_args(argv)
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before NumPy loads
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tools"))
    import numpy as np
    from benchmark import checkpoint_folder, ensure_checkpoint, llava_config, make_inputs

    import minillava
    from minillava.model import attention

    # tools/benchmark.py's model (its defaults: llava-1.5-7b's widths, 2 text and 2 CLIP layers)
    bench_args = argparse.Namespace(config=None, smoke=args.smoke, text_layers=None, vision_layers=None,
                                    vision_feature_layer=None, cache_dir=None)  # fmt: skip
    cfg = llava_config(bench_args)
    folder = ensure_checkpoint(cfg, checkpoint_folder(cfg, bench_args))
    model = minillava.load_model(folder)
    input_ids, pixel_values = make_inputs(cfg)
    size = args.block_size or (16 if args.smoke else None)
    sized = {} if size is None else {"block_size": size}
    variants = {
        "whole": attention.scaled_dot_product_attention,
        "blocks": functools.partial(attention.by_query_blocks, **sized),  # around the plain function, its default
        "tiled": functools.partial(attention.tiled_attention, **sized),
    }
    pairs = 2 if args.smoke else args.pairs

    def prefill():
        cache = model.new_cache(1, input_ids.shape[1] + 1)
        return model.forward_device(input_ids, pixel_values=pixel_values, cache=cache, last_only=True)  # [1, 1, V]

    times = {variant: [] for variant in variants}
    logits = {}
    for variant, attend in variants.items():  # a warm-up each, and its logits
        model.attention = attend
        logits[variant] = prefill()
    for i in range(pairs):
        for variant in list(variants) if i % 2 == 0 else list(variants)[::-1]:
            model.attention = variants[variant]
            start = time.perf_counter()
            prefill()
            times[variant].append(time.perf_counter() - start)
    blocks = f"blocks of {size or attention.QUERY_BLOCK} queries"
    print(f"prefill of {input_ids.shape[1]} positions, {pairs} rounds, {args.threads} BLAS thread(s), {blocks}")
    first = next(iter(variants))
    for variant in variants:
        ratio = np.median(np.array(times[variant]) / np.array(times[first]))
        diff = np.abs(logits[variant] - logits[first]).max() / np.abs(logits[first]).max()
        print(f"{variant:<7} median {np.median(times[variant]) * 1e3:8.1f} ms   per-pair ratio to {first}: "
              f"{ratio:.3f}   logits: {diff:.1e} of the largest from {first}'s")  # fmt: skip


if __name__ == "__main__":
    main()
