"""Where a prefill's time goes, in minillava and in Transformers: the products with the weights against the rest.

    python tools/prefill_breakdown.py            # llava-1.5-7b's widths (2 text, 2 CLIP layers), 2 threads, 3 rounds
    python tools/prefill_breakdown.py --smoke    # tiny sizes, seconds: checks the script

Why: at llava-1.5-7b's widths a prefill is mostly matrix products with the weights (every q/k/v/o projection, the
MLPs, the patch embedding, the projector, lm_head), which both frameworks hand to a BLAS: NumPy to OpenBLAS, torch to
its own (MKL on x86). What is left (norms, activations, rotations, the attention's scores and softmax, the
residual sums) NumPy computes one array operation at a time on one core, while torch splits each of its operations
over its threads. So one ratio (``tools/benchmark.py``'s) mixes two questions: how fast is each BLAS at the same
products, and how fast is everything else. This tool answers them apart.

How: as tools/benchmark.py, on its model and inputs, each framework in its own process, the processes alternated
over rounds, the ratio the median of the per-round ratios. Each process times the whole prefill (a warm-up, then
``--repeats`` runs, the median), and then times its products during ``--repeats`` more:

    minillava     every call of ``layers.linear``, through which every weight product goes
    Transformers  every call of ``nn.Linear.forward`` and ``nn.Conv2d.forward`` (CLIP's patch embedding)

each timed around the call (both return when the product is done), its floating-point operations counted from
the shapes: 2 N D F for [N, D] x [D, F], as many for the convolution written as that product.

"everything else" is each of those prefills' wall time less its products' time, the median of the runs: both
parts come from the same runs, since two runs of one process differ by more than the rest of Transformers' prefill
takes. Transformers runs every CLIP layer (minillava stops at ``vision_feature_layer``), so the two do not count
the same products: the operations per second (GFLOP/s) compare the two BLAS at equal work, and "products at equal
work" is the ratio of seconds per operation. The instrumentation costs the same little in both: two clock reads
and a Python call per product (24 and 30 products a prefill). Never use these timings in assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("minillava", "transformers")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
WIDTHS = "llava-1.5-7b widths, 2 text and 2 CLIP layers"


def bench_namespace(args) -> argparse.Namespace:
    """tools/benchmark.py's arguments for its model: llava-1.5-7b's widths, 2 text and 2 CLIP layers (--smoke: tiny)."""
    return argparse.Namespace(config=None, smoke=args.smoke, text_layers=None, vision_layers=None,
                              vision_feature_layer=None, cache_dir=None)  # fmt: skip


def instrumented_runs(prefill, spent: dict, repeats: int) -> list[dict]:
    """A warm-up, then ``repeats`` prefills: each one's wall time and what the timed products added up in ``spent``
    (seconds, flop, calls) meanwhile."""
    prefill()
    runs = []
    for _ in range(repeats):
        spent.update(seconds=0.0, flop=0, calls=0)
        start = time.perf_counter()
        prefill()
        runs.append({"wall": time.perf_counter() - start, **spent})
    return runs


def parts_of(runs: list[dict]) -> dict:
    """The instrumented prefills' medians: the products' seconds, and the rest (each run's wall time less its
    products'); the products' operations and calls (the same every run)."""
    return {"products_s": statistics.median(r["seconds"] for r in runs),
            "rest_s": statistics.median(r["wall"] - r["seconds"] for r in runs),
            "instrumented_s": statistics.median(r["wall"] for r in runs),
            "products_flop": runs[-1]["flop"], "products_calls": runs[-1]["calls"]}  # fmt: skip


def run_minillava(folder: Path, cfg: dict, repeats: int) -> dict:
    sys.path.insert(0, str(REPO))
    import numpy as np
    from benchmark import make_inputs, timed

    import minillava
    from minillava.model import layers

    model = minillava.load_model(folder)
    input_ids, pixel_values = make_inputs(cfg)

    def prefill():
        cache = model.new_cache(1, input_ids.shape[1] + 1)
        return model.forward_device(input_ids, pixel_values=pixel_values, cache=cache, last_only=True)

    whole, _ = timed(prefill, repeats)  # a warm-up, then the median of the repeats

    plain_linear = layers.linear
    spent = {"seconds": 0.0, "flop": 0, "calls": 0}

    def timed_linear(x, weight, bias=None):
        start = time.perf_counter()
        y = plain_linear(x, weight, bias)
        spent["seconds"] += time.perf_counter() - start
        spent["flop"] += 2 * x.size * weight.shape[0]  # [N, D] x [D, F]: N * F outputs, D multiply-adds each
        spent["calls"] += 1
        return y

    # Every module that multiplies by weights imports layers.linear by name: time it there.
    patched = [m for name, m in sys.modules.items() if name.startswith("minillava.") and getattr(m, "linear", None)
               is plain_linear]  # fmt: skip
    for module in patched:
        module.linear = timed_linear
    try:
        runs = instrumented_runs(prefill, spent, repeats)
    finally:
        for module in patched:
            module.linear = plain_linear
    return {"whole_s": whole, **parts_of(runs), "prompt_tokens": input_ids.shape[1], "numpy": np.__version__,
            "vision_layers_run": model.config.vision_layers_needed}  # fmt: skip


def run_transformers(folder: Path, cfg: dict, repeats: int, threads: int) -> dict:
    import math

    import torch
    from benchmark import make_inputs, timed
    from transformers import LlavaForConditionalGeneration

    torch.set_num_threads(threads)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    input_ids, pixel_values = (torch.from_numpy(a) for a in make_inputs(cfg))

    @torch.inference_mode()
    def prefill():
        return model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True, logits_to_keep=1)

    whole, _ = timed(prefill, repeats)

    plain_linear, plain_conv = torch.nn.Linear.forward, torch.nn.Conv2d.forward
    spent = {"seconds": 0.0, "flop": 0, "calls": 0}

    def timing(forward, flop_of):
        def timed_forward(module, x):
            start = time.perf_counter()
            y = forward(module, x)  # torch on the CPU returns when the product is done
            spent["seconds"] += time.perf_counter() - start
            spent["flop"] += flop_of(module, x, y)
            spent["calls"] += 1
            return y

        return timed_forward

    # As minillava's: 2 N D F for a linear layer; a convolution, 2 multiply-adds per output and kernel entry.
    torch.nn.Linear.forward = timing(plain_linear, lambda m, x, y: 2 * x.numel() * m.out_features)
    torch.nn.Conv2d.forward = timing(
        plain_conv, lambda m, x, y: 2 * y.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    )
    try:
        runs = instrumented_runs(prefill, spent, repeats)
    finally:
        torch.nn.Linear.forward, torch.nn.Conv2d.forward = plain_linear, plain_conv
    return {"whole_s": whole, **parts_of(runs), "torch": torch.__version__,
            "torch_blas": torch.__config__.show().split("BLAS_INFO=")[-1].split(",")[0],
            "vision_layers_run": len(model.model.vision_tower.encoder.layers)}  # fmt: skip


def spawn(framework: str, folder: Path, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--model", str(folder),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
    command += ["--smoke"] if args.smoke else []  # the worker builds the same config: tiny with --smoke
    env = dict(os.environ, **{var: str(args.threads) for var in THREAD_VARS})
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{framework} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(rounds: list[dict]) -> dict:
    """Per framework the medians of the whole, the products and the rest; per part the median ratio of the rounds."""
    parts = {
        "whole": lambda r: r["whole_s"],
        "products": lambda r: r["products_s"],
        "rest": lambda r: r["rest_s"],
        "seconds_per_gflop": lambda r: r["products_s"] / (r["products_flop"] / 1e9),
    }
    summary = {}
    for part, value in parts.items():
        ratios = [value(r["minillava"]) / value(r["transformers"]) for r in rounds]
        summary[part] = {
            "minillava": statistics.median(value(r["minillava"]) for r in rounds),
            "transformers": statistics.median(value(r["transformers"]) for r in rounds),
            "ratio": statistics.median(ratios),
            "round_ratios": ratios,
        }
    mini_products_over_hf_whole = [r["minillava"]["products_s"] / r["transformers"]["whole_s"] for r in rounds]
    summary["minillava_products_over_transformers_whole"] = statistics.median(mini_products_over_hf_whole)
    return summary


def report(rounds: list[dict], summary: dict, args) -> str:
    mini, hf = rounds[-1]["minillava"], rounds[-1]["transformers"]
    lines = [
        f"model      tools/benchmark.py's ({'tiny, --smoke' if args.smoke else WIDTHS}), "
        f"prompt of {mini['prompt_tokens']} tokens with 1 image, float32, {args.threads} thread(s) per framework",
        f"libraries  numpy {mini['numpy']} (OpenBLAS) | torch {hf['torch']} (BLAS {hf['torch_blas']})",
        f"runs       {len(rounds)} round(s) alternating minillava / Transformers, each a warm-up + {args.repeats} "
        "prefills for the whole and as many for the products, medians",
        f"products   minillava {mini['products_calls']} calls, {mini['products_flop'] / 1e9:.1f} GFLOP "
        f"(vision layers run: {mini['vision_layers_run']}); Transformers {hf['products_calls']} calls, "
        f"{hf['products_flop'] / 1e9:.1f} GFLOP (vision layers run: {hf['vision_layers_run']})",
        "",
        f"{'part of the prefill':<30}{'minillava':>12}{'Transformers':>14}{'ratio':>8}   per-round ratios",
    ]
    names = {"whole": "whole prefill", "products": "  products with the weights", "rest": "  everything else"}
    for part, name in names.items():
        s = summary[part]
        per_round = " ".join(f"{r:.2f}" for r in s["round_ratios"])
        lines.append(f"{name:<30}{s['minillava'] * 1e3:>10.1f}ms{s['transformers'] * 1e3:>12.1f}ms"
                     f"{s['ratio']:>8.2f}   {per_round}")  # fmt: skip
    s = summary["seconds_per_gflop"]
    per_round = " ".join(f"{r:.2f}" for r in s["round_ratios"])
    rates = f"{1 / s['minillava']:>7.0f} GFLOP/s{1 / s['transformers']:>8.0f} GFLOP/s"
    lines.append(f"{'products at equal work':<30}{rates}{s['ratio']:>5.2f}   {per_round}")
    lines.append("")
    lines.append(f"minillava's products alone take {summary['minillava_products_over_transformers_whole']:.2f} of "
                 "Transformers' whole prefill (median of the rounds).")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternated minillava/Transformers process pairs")
    parser.add_argument("--repeats", type=int, default=3, help="timed prefills per process, for each measurement")
    parser.add_argument("--threads", type=int, default=2, help="BLAS/torch threads for both frameworks")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round, 1 repeat: checks that it runs")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.rounds, args.repeats, args.threads) < 1:
        parser.error("--rounds, --repeats and --threads must be at least 1")
    sys.path.insert(0, str(REPO / "tools"))
    from benchmark import checkpoint_folder, ensure_checkpoint, llava_config

    cfg = llava_config(bench_namespace(args))
    if args.worker:
        folder = Path(args.model)
        result = (run_minillava(folder, cfg, args.repeats) if args.worker == "minillava"
                  else run_transformers(folder, cfg, args.repeats, args.threads))  # fmt: skip
        print(json.dumps(result), flush=True)
        return
    if args.smoke:
        args.rounds, args.repeats = 1, 1
    folder = ensure_checkpoint(cfg, checkpoint_folder(cfg, bench_namespace(args)))
    rounds = []
    for i in range(args.rounds):
        result = {}
        for framework in FRAMEWORKS:
            print(f"round {i + 1}/{args.rounds}: {framework} ...", file=sys.stderr, flush=True)
            result[framework] = spawn(framework, folder, args)
        rounds.append(result)
    summary = summarize(rounds)
    print(report(rounds, summary, args))
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "summary": summary,
                                         "rounds": rounds}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
