"""Peak memory and time of one attention call, plain against tiled, at llava-1.5-7b's widths.

The README's "Tiled attention" table: random q, k, v (float32), one call of
``attention.scaled_dot_product_attention`` (eager) and of ``attention.tiled_attention`` (blocks of 128) for a
two-image text prefill (1200 positions, 32 heads of 128, causal), a decode step at position 1200 and the CLIP
tower on two images (577 tokens, 16 heads of 64). Peak memory is what tracemalloc sees (NumPy's allocations, the
inputs excluded); time is the median of --repeats calls. Also prints the largest difference between the two.

Usage:  python tools/attention_memory.py [--threads 1] [--repeats 7] [--block-size 128]
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per case; the median is shown")
    parser.add_argument("--block-size", type=int, default=128, help="the tiled attention's block (default 128)")
    args = parser.parse_args()
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)  # before NumPy loads its BLAS

    import functools
    import statistics
    import time
    import tracemalloc

    import numpy as np

    from minillava.model import attention

    implementations = {
        "eager": attention.scaled_dot_product_attention,
        f"tiled, blocks of {args.block_size}": functools.partial(attention.tiled_attention, block_size=args.block_size),
    }
    cases = {  # name: (B, H, Tq, Tk, hd, causal)
        "text prefill, 1200 positions (two images + prompt), 32 heads of 128, causal": (1, 32, 1200, 1200, 128, True),
        "text decode step at position 1200": (1, 32, 1, 1201, 128, True),
        "CLIP-L/14-336, two images (577 tokens, 16 heads of 64)": (2, 16, 577, 577, 64, False),
    }
    print(f"one attention call, float32, {args.threads} BLAS thread(s), median of {args.repeats}")
    for case, (B, H, Tq, Tk, hd, causal) in cases.items():
        rng = np.random.default_rng(0)
        q = rng.standard_normal((B, H, Tq, hd), dtype=np.float32)  # [B, H, Tq, hd]
        k = rng.standard_normal((B, H, Tk, hd), dtype=np.float32)  # [B, H, Tk, hd]
        v = rng.standard_normal((B, H, Tk, hd), dtype=np.float32)
        mask = attention.causal_mask(np.ones((B, Tk), np.int64), Tq, Tk - Tq) if causal else None
        print(f"\n{case}: one score matrix {B * H * Tq * Tk * 4 / 2**20:.1f} MiB")
        outputs = {}
        for label, fn in implementations.items():
            tracemalloc.start()
            outputs[label] = fn(q, k, v, mask)
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn(q, k, v, mask)
                times.append(time.perf_counter() - start)
            print(f"  {label:20s} peak {peak:7.1f} MiB   {statistics.median(times) * 1e3:7.1f} ms")
        eager, tiled = outputs.values()
        print(f"  max |tiled - eager| / max |eager| = {float(np.abs(tiled - eager).max() / np.abs(eager).max()):.1e}")


if __name__ == "__main__":
    main()
