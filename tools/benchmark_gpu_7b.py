"""llava-1.5-7b at full size on a GPU, in float16: minillava (CuPy) against Transformers (torch, sdpa and eager).

Usage:
    python tools/benchmark_gpu_7b.py                         # on the GPU: every layer, 2 rounds
    python tools/benchmark_gpu_7b.py --rounds 3 --json /tmp/bench-7b.json
    python tools/benchmark_gpu_7b.py --smoke --device cpu    # tiny sizes on the CPU in seconds: checks the script

``--device`` defaults to $DEVICE, else cuda; on the CPU only ``--smoke`` runs (tools/full_size.py is the CPU's
full-size measurement).

What it does: builds llava-1.5-7b's exact shapes (tools/benchmark.py's LLAVA_7B widths with all 32 text
and 24 CLIP layers, vision_feature_layer -2) with random float16 weights made directly on the device:
nothing is downloaded and nothing is written to disk (tools/benchmark.py saves a checkpoint and loads it,
which for 14 GB of weights would take longer than the measurement). Each side makes its own random weights:

    minillava            every tensor of ``expected_shapes`` drawn with the array library's own generator on
                         the device (CuPy's; NumPy's with ``--device cpu``): normal(0, 0.02) for the matrices
                         and embeddings, ones for the norms' weights, zeros for the biases (Transformers'
                         init scale), so that activations stay well inside float16 through 32 layers
    transformers-sdpa    ``LlavaForConditionalGeneration._from_config`` under ``torch.device(device)``: torch's
    transformers-eager   own init, on the device, in float16, attn_implementation "sdpa" or "eager"

Then it times, on one image and a prompt of 600 tokens (576 image tokens, as tools/benchmark.py's prompt):

    image encode   CLIP up to the selected layer + projector (minillava runs 23 CLIP layers, Transformers 24
                   and then picks layer -2: that is how each works on the real model)
    prefill        the whole prompt with the image, filling a KV cache, logits of the last position
    decode b1      greedy one-token steps after the prefill, batch 1: the median step, as tokens/s
    decode b8      the same for 8 copies of the prompt and image at once (prefilled untimed): 8 tokens a step
    peak memory    the most device memory the process held from the end of the build on (the weights
                   included, the random generator's scratch not): CuPy's memory pool (which keeps what it has
                   allocated, so its total at the end is its peak), torch.cuda.max_memory_reserved (the same
                   measure; max_memory_allocated is reported beside it); on the CPU, the process's peak RSS

Each side checks that the image features and the prefill's logits are finite (a NaN in float16 would make
every timing meaningless) and reports it. The two sides hold different random weights, so their greedy
tokens are not expected to agree; sdpa and eager are built from the same seed and should agree, though
random float16 logits may tie, so a disagreement there is reported, not raised.

House rules, as tools/benchmark.py: each framework runs in its own process, the processes alternate
(minillava, transformers-sdpa, transformers-eager, minillava, ...), each phase is warmed up once and then
repeated (median within a process), and a ratio (minillava / Transformers: 2.00 means twice as slow, or
half the tokens/s) is the median of the per-round ratios. Never use these timings in assertions.

Internals: the parent spawns ``python tools/benchmark_gpu_7b.py --worker minillava|sdpa|eager ...``, which
prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))  # tools/benchmark.py: the 7B config, the prompt, the timing helpers (one source)
sys.path.insert(0, str(REPO))  # minillava from this checkout

import benchmark  # noqa: E402

WORKERS = ("minillava", "sdpa", "eager")  # one process each; the last two are Transformers' attention kinds
NAMES = {"minillava": "minillava", "sdpa": "transformers-sdpa", "eager": "transformers-eager"}
TIMED = ("image_encode", "prefill", "decode_b1", "decode_b8")  # seconds (a decode entry: one step)
# minillava with its GPU options, each against Transformers' default phase of the same batch (Transformers records
# no graph by default): cuda_graphs=True's decode step (model/static_step.py), and with fused_kernels=True too
# (model/fused.py), its prefill as well
MINILLAVA_ONLY = {  # phase -> (the Transformers phase it is compared with, its row in the report)
    "decode_b1_cuda_graphs": ("decode_b1", "  graphs b1"),
    "decode_b8_cuda_graphs": ("decode_b8", "  graphs b8"),
    "prefill_fused": ("prefill", "  fused prefill"),
    "decode_b1_fused_cuda_graphs": ("decode_b1", "  fused+graphs b1"),
    "decode_b8_fused_cuda_graphs": ("decode_b8", "  fused+graphs b8"),
}
BATCH = 8  # the second decode measurement's batch size
SEED = 0


def full_config(smoke: bool) -> dict:
    """LlavaConfig kwargs: llava-1.5-7b with every layer (32 text, 24 CLIP), or tools/benchmark.py's tiny widths
    with 2 + 2 layers for ``--smoke``. vision_feature_layer -2, as llava-1.5."""
    cfg = json.loads(json.dumps(benchmark.TINY if smoke else benchmark.LLAVA_7B))  # a copy
    cfg["text_config"]["num_hidden_layers"] = 2 if smoke else 32
    cfg["vision_config"]["num_hidden_layers"] = 2 if smoke else 24
    cfg["vision_feature_layer"] = -2
    return cfg


def batched_inputs(cfg: dict):
    """tools/benchmark.py's prompt (1 image + 600 tokens at full size) and 8 copies of it."""
    import numpy as np

    input_ids, pixel_values = benchmark.make_inputs(cfg)  # [1, T], [1, 3, S, S]
    return input_ids, pixel_values, np.repeat(input_ids, BATCH, axis=0), np.repeat(pixel_values, BATCH, axis=0)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ---------------------------------------------------------------------------------------------
# The workers: one framework per process, one JSON line on stdout
# ---------------------------------------------------------------------------------------------


def random_params(config, xp, dtype: str) -> dict:
    """Random weights of every shape ``config`` asks for, made on the device of ``xp`` one tensor at a time
    (drawn in float32, which every generator offers, then cast: one tensor's float32 temporaries are the only
    extra memory). Norms' weights are ones and biases zeros, as Transformers' init has them."""
    from minillava.loading.weights import check_params, expected_shapes, unflatten

    rng = xp.random.default_rng(SEED)
    flat = {}
    for key, shape in expected_shapes(config).items():
        if key.endswith("bias"):
            flat[key] = xp.zeros(shape, dtype=dtype)
        elif "norm" in key:  # input_layernorm, layer_norm1, pre_layrnorm (sic), norm: LayerNorm's and RMSNorm's
            flat[key] = xp.ones(shape, dtype=dtype)
        else:  # normal(0, 0.02): Transformers' initializer_range
            flat[key] = (0.02 * rng.standard_normal(shape, dtype=xp.float32)).astype(dtype)
    params = unflatten(flat)
    check_params(params, config)  # every key and shape, as load_model would have them
    return params


def phase_record(build_s, encode_s, prefill_s, decode_b1_s, decode_b8_s, peak, finite, tokens, input_ids) -> dict:
    """The fields both workers report, in one shape (each adds its own after them)."""
    return {
        "build_s": build_s,
        "image_encode": encode_s,
        "prefill": prefill_s,
        "decode_b1": decode_b1_s,
        "decode_b8": decode_b8_s,
        **peak,
        "finite": finite,
        "tokens": [int(t[0]) for t in tokens],
        "prompt_tokens": int(input_ids.shape[1]),
    }


def run_minillava(args) -> dict:
    import numpy as np

    from minillava.loading.config import config_from_dict
    from minillava.model import backend
    from minillava.model.llava import LlavaModel
    from minillava.model.static_step import StaticDecodeStep

    cfg = full_config(args.smoke)
    config = config_from_dict(cfg)
    xp = backend.namespace(args.device)  # CuPy on "cuda": fails here, in one line, without a GPU
    sync, gpu = None, None
    if args.device == "cuda":
        sync = xp.cuda.Device().synchronize
        gpu = f"{xp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {xp.__version__}"

    start = time.perf_counter()
    model = LlavaModel(config, random_params(config, xp, "float16"), device=args.device, dtype="float16")
    if sync is not None:
        sync()
        xp.get_default_memory_pool().free_all_blocks()  # the generator's float32 draws: not the model's memory
    build_s = time.perf_counter() - start

    input_ids, pixel_values, ids_8, pixels_8 = batched_inputs(cfg)  # NumPy: [1, T], [1, 3, S, S], 8 of each
    pixel_values, pixels_8 = xp.asarray(pixel_values), xp.asarray(pixels_8)  # on the device, as torch's are
    max_len = input_ids.shape[1] + args.decode_steps + 3  # the prompt, the warm-up step(s), the timed steps

    encode_s, features = benchmark.timed(lambda: model.encode_image(pixel_values), args.repeats, sync)

    def prefill(ids, pixels):
        cache = model.new_cache(ids.shape[0], max_len)
        logits = model.forward_device(ids, pixel_values=pixels, cache=cache, last_only=True)  # [B, 1, V]
        return cache, logits

    prefill_s, (cache, logits) = benchmark.timed(lambda: prefill(input_ids, pixel_values), args.repeats, sync)
    finite = bool(xp.isfinite(features).all()) and bool(xp.isfinite(logits).all())

    def step(tokens, cache):  # tokens: NumPy [B]; the argmax's transfer to the host waits for the GPU
        mask = np.ones((tokens.shape[0], cache.length + 1), dtype=np.int64)  # [B, Tk]
        logits = model.forward_device(tokens[:, None], attention_mask=mask, cache=cache, last_only=True)  # [B, 1, V]
        return backend.to_numpy(logits[:, -1].argmax(axis=-1)), cache  # [B]

    first = backend.to_numpy(logits[:, -1].argmax(axis=-1))  # [1]
    decode_b1_s, tokens = benchmark.time_decode(step, first, cache, args.decode_steps)

    cache_8, logits_8 = prefill(ids_8, pixels_8)  # untimed: 8 x 600 positions
    first_8 = backend.to_numpy(logits_8[:, -1].argmax(axis=-1))  # [8]
    decode_b8_s, _ = benchmark.time_decode(step, first_8, cache_8, args.decode_steps)
    del cache, cache_8

    def static_decode(model, ids, pixels):
        """Greedy decode with ``cuda_graphs=True``'s step (model/static_step.py): the median step and the tokens."""
        B, T = ids.shape
        cache = model.new_cache(B, max_len)
        static = StaticDecodeStep(model, cache)
        positions = np.broadcast_to(np.arange(T), (B, T))  # [B, T]
        logits = static(ids, np.ones((B, T), np.int64), positions, cache, model.encode_image(pixels))  # [B, V]

        def static_step(tokens, cache):  # tokens: NumPy [B]
            mask, positions = np.ones((B, cache.length + 1), np.int64), np.full((B, 1), cache.length)  # [B, Tk], [B, 1]
            return backend.to_numpy(static(tokens[:, None], mask, positions, cache).argmax(axis=-1)), cache  # [B]

        first = backend.to_numpy(logits.argmax(axis=-1))  # [B]
        second, _ = static_step(first, cache)  # unrecorded (CuPy compiles its kernels); time_decode's warm-up records
        step_s, tokens = benchmark.time_decode(static_step, second, cache, args.decode_steps)
        return step_s, [first, *tokens]

    graphs_b1_s, graph_tokens = static_decode(model, input_ids, pixel_values)
    graphs_b8_s, _ = static_decode(model, ids_8, pixels_8)
    # The same weights with the language model's elementwise chains fused (model/fused.py): the prefill, and the
    # decode with both options, as a user who wants the fastest step would load it.
    fused = LlavaModel(config, model.params, device=args.device, dtype="float16", fused_kernels=True, cuda_graphs=True)
    fused_prefill_s, _ = benchmark.timed(
        lambda: fused.forward_device(input_ids, pixel_values=pixel_values, cache=fused.new_cache(1, max_len),
                                     last_only=True), args.repeats, sync)  # fmt: skip
    fused_b1_s, fused_tokens = static_decode(fused, input_ids, pixel_values)
    fused_b8_s, _ = static_decode(fused, ids_8, pixels_8)

    def same_tokens(other):  # the same weights, so the same greedy tokens (random float16 logits may tie: reported)
        return [int(t[0]) for t in other[: len(tokens)]] == [int(t[0]) for t in tokens]

    if args.device == "cuda":
        sync()
        peak = {"peak_memory_bytes": xp.get_default_memory_pool().total_bytes(), "peak_memory_kind": "CuPy pool"}
    else:
        peak = {"peak_memory_bytes": peak_rss_bytes(), "peak_memory_kind": "process peak RSS"}
    return {
        **phase_record(build_s, encode_s, prefill_s, decode_b1_s, decode_b8_s, peak, finite, tokens, input_ids),
        "decode_b1_cuda_graphs": graphs_b1_s,
        "decode_b8_cuda_graphs": graphs_b8_s,
        "prefill_fused": fused_prefill_s,
        "decode_b1_fused_cuda_graphs": fused_b1_s,
        "decode_b8_fused_cuda_graphs": fused_b8_s,
        "cuda_graphs_tokens_equal": same_tokens(graph_tokens),
        "fused_cuda_graphs_tokens_equal": same_tokens(fused_tokens),
        "clip_layers_run": config.vision_layers_needed,
        "gpu": gpu,
        "numpy": np.__version__,
        "imports_torch": "torch" in sys.modules,  # must stay False: minillava's process is NumPy/CuPy alone
    }


def run_transformers(args) -> dict:
    import inspect

    import torch
    import transformers
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as tools/benchmark.py
    cfg = full_config(args.smoke)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else None

    start = time.perf_counter()
    torch.manual_seed(SEED)  # sdpa and eager get the same weights
    with device:  # parameters made and initialised on the device, in float16: no copy, no file
        model = LlavaForConditionalGeneration._from_config(
            LlavaConfig(**cfg), dtype=torch.float16, attn_implementation=args.worker
        ).eval()
    if sync is not None:
        sync()
        torch.cuda.empty_cache()  # as CuPy's pool above: the peak counts from here, the weights included
        torch.cuda.reset_peak_memory_stats()
    build_s = time.perf_counter() - start

    input_ids, pixel_values, ids_8, pixels_8 = batched_inputs(cfg)
    input_ids, ids_8 = torch.from_numpy(input_ids).to(device), torch.from_numpy(ids_8).to(device)
    pixel_values = torch.from_numpy(pixel_values).to(device, torch.float16)  # [1, 3, S, S]
    pixels_8 = torch.from_numpy(pixels_8).to(device, torch.float16)  # [8, 3, S, S]
    layer, strategy = cfg["vision_feature_layer"], cfg["vision_feature_select_strategy"]
    # Transformers 5.24 renamed past_key_values to cache (the old name warns until 5.40).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def encode():
        return model.model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=layer, vision_feature_select_strategy=strategy
        )

    def prefill(ids, pixels):
        return model(input_ids=ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)

    def step(tokens, cache):  # tokens: [B] on the device; .tolist() at the end waits for the GPU
        out = model(
            input_ids=tokens[:, None],
            attention_mask=torch.ones(tokens.shape[0], cache.get_seq_length() + 1, dtype=torch.long, device=device),
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: cache},
        )
        next_tokens = out.logits[:, -1].argmax(dim=-1)  # [B]
        next_tokens.tolist()  # on the host, as minillava's: the step is over when the tokens are known
        return next_tokens, getattr(out, cache_arg)

    with torch.inference_mode():
        encode_s, features = benchmark.timed(encode, args.repeats, sync)
        features = features.pooler_output if hasattr(features, "pooler_output") else features
        if isinstance(features, (list, tuple)):  # one tensor per image in some versions
            features = torch.cat(list(features))
        prefill_s, out = benchmark.timed(lambda: prefill(input_ids, pixel_values), args.repeats, sync)
        finite = bool(torch.isfinite(features).all()) and bool(torch.isfinite(out.logits).all())
        first = out.logits[:, -1].argmax(dim=-1)  # [1]
        decode_b1_s, tokens = benchmark.time_decode(step, first, getattr(out, cache_arg), args.decode_steps)
        out_8 = prefill(ids_8, pixels_8)  # untimed: 8 x 600 positions
        first_8 = out_8.logits[:, -1].argmax(dim=-1)  # [8]
        decode_b8_s, _ = benchmark.time_decode(step, first_8, getattr(out_8, cache_arg), args.decode_steps)

    if args.device == "cuda":
        peak = {
            "peak_memory_bytes": torch.cuda.max_memory_reserved(),
            "peak_memory_kind": "torch max_memory_reserved",
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        }
    else:
        peak = {"peak_memory_bytes": peak_rss_bytes(), "peak_memory_kind": "process peak RSS"}
    return {
        **phase_record(build_s, encode_s, prefill_s, decode_b1_s, decode_b8_s, peak, finite, tokens, input_ids),
        "clip_layers_run": len(model.model.vision_tower.encoder.layers),
        "gpu": f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}" if args.device == "cuda" else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": model.config.text_config._attn_implementation,
        "vision_attn_implementation": model.config.vision_config._attn_implementation,
    }


def worker(args) -> None:
    result = run_minillava(args) if args.worker == "minillava" else run_transformers(args)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: alternate the workers, take medians, print the table
# ---------------------------------------------------------------------------------------------


def spawn(name: str, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--device", args.device]
    command += ["--repeats", str(args.repeats), "--decode-steps", str(args.decode_steps)]
    command += ["--smoke"] if args.smoke else []
    env = dict(os.environ)
    for var in benchmark.THREAD_VARS:  # on the CPU (--device cpu) both sides get the same threads
        env[var] = str(args.threads)
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{NAMES[name]} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(rounds: list[dict]) -> dict:
    """Per phase: each worker's median seconds, and minillava's median per-round ratio to each Transformers run."""
    summary = {}
    for phase in TIMED:
        entry = {f"{NAMES[w]}_s": statistics.median(r[w][phase] for r in rounds) for w in WORKERS}
        for other in WORKERS[1:]:
            ratios = [r["minillava"][phase] / r[other][phase] for r in rounds]
            entry[f"ratio_{other}"] = statistics.median(ratios)
            entry[f"round_ratios_{other}"] = ratios
        if phase.startswith("decode"):  # the batch's tokens over the median step
            batch = BATCH if phase == "decode_b8" else 1
            entry.update({f"{NAMES[w]}_tokens_per_s": batch / entry[f"{NAMES[w]}_s"] for w in WORKERS})
        summary[phase] = entry
    for phase, (plain, _) in MINILLAVA_ONLY.items():
        seconds = statistics.median(r["minillava"][phase] for r in rounds)
        entry = {"minillava_s": seconds}
        if plain.startswith("decode"):
            entry["minillava_tokens_per_s"] = (BATCH if plain == "decode_b8" else 1) / seconds
        for other in WORKERS[1:]:
            ratios = [r["minillava"][phase] / r[other][plain] for r in rounds]
            entry[f"ratio_{other}"] = statistics.median(ratios)
            entry[f"round_ratios_{other}"] = ratios
        summary[phase] = entry
    summary["peak_memory_bytes"] = {NAMES[w]: max(r[w]["peak_memory_bytes"] for r in rounds) for w in WORKERS}
    summary["finite"] = {NAMES[w]: all(r[w]["finite"] for r in rounds) for w in WORKERS}
    summary["tokens_agree"] = {
        "sdpa_vs_eager": all(r["sdpa"]["tokens"] == r["eager"]["tokens"] for r in rounds),
        "minillava_vs_transformers": None,  # different random weights: no agreement to expect
        "minillava_cuda_graphs_vs_plain": all(r["minillava"]["cuda_graphs_tokens_equal"] for r in rounds),
        "minillava_fused_cuda_graphs_vs_plain": all(r["minillava"]["fused_cuda_graphs_tokens_equal"] for r in rounds),
    }
    return summary


def report(cfg: dict, rounds: list[dict], summary: dict, args) -> str:
    from minillava.loading.config import config_from_dict

    config = config_from_dict(cfg)
    text, vision = config.text, config.vision
    first = rounds[0]
    mini, sdpa = first["minillava"], first["sdpa"]
    gib = 2**30
    builds = ", ".join(f"{NAMES[w]} {statistics.median(r[w]['build_s'] for r in rounds):.1f}" for w in WORKERS)
    lines = [
        f"model      {'tiny (--smoke)' if args.smoke else 'llava-1.5-7b, full size'}: text {text.num_hidden_layers} "
        f"layers x {text.hidden_size} (MLP {text.intermediate_size}, vocab {text.vocab_size}), CLIP "
        f"{vision.num_hidden_layers} layers x {vision.hidden_size} at {vision.image_size} px, vision_feature_layer "
        f"{cfg['vision_feature_layer']} (CLIP layers run: minillava {mini['clip_layers_run']}, Transformers "
        f"{sdpa['clip_layers_run']}); random float16 weights made on the device",
        f"inputs     1 image, prompt of {mini['prompt_tokens']} tokens; decode: {args.decode_steps} greedy steps "
        f"after the prefill, batch 1 and batch {BATCH}",
        f"device     {args.device}"
        + (f": minillava sees {mini['gpu']}, Transformers {sdpa['gpu']}" if args.device == "cuda" else "")
        + f"; python {platform.python_version()}, numpy {mini['numpy']}, torch {sdpa['torch']}, "
        f"transformers {sdpa['transformers']}",
        f"attention  Transformers: {sdpa['attn_implementation']} and {first['eager']['attn_implementation']} "
        f"(vision tower: {sdpa['vision_attn_implementation']}, {first['eager']['vision_attn_implementation']})",
        f"build      median s (random weights on the device): {builds}",
        f"runs       {len(rounds)} round(s) alternating {', '.join(NAMES[w] for w in WORKERS)}; each phase warmed "
        f"up once + {args.repeats} repeat(s), median; ratio = minillava / Transformers, median of the rounds'",
        "finite     " + ", ".join(f"{n} {'yes' if ok else 'NO (NaN or inf)'}" for n, ok in summary["finite"].items()),
        f"tokens     sdpa and eager agree: {'yes' if summary['tokens_agree']['sdpa_vs_eager'] else 'no'}; minillava "
        "holds other random weights, its tokens are not compared with theirs; minillava's plain step and its "
        f"cuda_graphs step agree: {'yes' if summary['tokens_agree']['minillava_cuda_graphs_vs_plain'] else 'no'}, "
        f"with fused_kernels too: {'yes' if summary['tokens_agree']['minillava_fused_cuda_graphs_vs_plain'] else 'no'}",
        "",
        f"{'phase':<16}{'minillava':>12}{'T. sdpa':>12}{'T. eager':>12}{'/sdpa':>8}{'/eager':>8}",
    ]
    for phase in TIMED:
        s = summary[phase]
        values = [s[f"{NAMES[w]}_s"] for w in WORKERS]
        if phase.startswith("decode"):  # tokens/s; the ratio stays one of times: 2.00 is still twice as slow
            cells = "".join(f"{s[f'{NAMES[w]}_tokens_per_s']:>10.1f}/s" for w in WORKERS)
            name = f"decode b{BATCH if phase == 'decode_b8' else 1} tok/s"
        else:
            cells = "".join(f"{v * 1e3:>10.1f}ms" for v in values)
            name = phase.replace("_", " ")
        lines.append(f"{name:<16}{cells}{s['ratio_sdpa']:>8.2f}{s['ratio_eager']:>8.2f}")
    lines.append("minillava with its GPU options (Transformers' columns: its default, as above)")
    for phase, (plain, row) in MINILLAVA_ONLY.items():
        s = summary[phase]
        if plain.startswith("decode"):
            cells = f"{s['minillava_tokens_per_s']:>10.1f}/s" + "".join(
                f"{summary[plain][f'{NAMES[w]}_tokens_per_s']:>10.1f}/s" for w in WORKERS[1:]
            )
        else:
            cells = "".join(f"{v * 1e3:>10.1f}ms" for v in [s["minillava_s"]] + [summary[plain][f"{NAMES[w]}_s"]
                                                                                 for w in WORKERS[1:]])  # fmt: skip
        lines.append(f"{row:<16}{cells}{s['ratio_sdpa']:>8.2f}{s['ratio_eager']:>8.2f}")
    peaks = summary["peak_memory_bytes"]
    kinds = ", ".join(dict.fromkeys(first[w]["peak_memory_kind"] for w in WORKERS))
    cells = "".join(f"{peaks[NAMES[w]] / gib:>10.2f}GB" for w in WORKERS)
    ratios = "".join(f"{peaks['minillava'] / peaks[NAMES[w]]:>8.2f}" for w in WORKERS[1:])
    lines.append(f"{'peak memory':<16}{cells}{ratios}   ({kinds}; GB = GiB)")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=os.environ.get("DEVICE", "cuda"),
                        help="cuda (default; or $DEVICE): CuPy against torch on the GPU")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="alternated minillava/sdpa/eager process triples")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each phase per process (after a warm-up)")
    parser.add_argument("--decode-steps", type=int, default=16, help="timed one-token steps after the prefill")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads of each side with --device cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 1 round, 1 repeat: checks that it runs")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(args)
        return
    if min(args.rounds, args.repeats, args.decode_steps, args.threads) < 1:
        parser.error("--rounds, --repeats, --decode-steps and --threads must be at least 1")
    if args.device == "cpu" and not args.smoke:  # NumPy's float16 matrix products do not use BLAS
        parser.error("--device cpu runs only with --smoke: a float16 7B takes hours on the CPU "
                     "(tools/full_size.py measures the real size there)")  # fmt: skip
    if args.smoke:
        args.rounds, args.repeats, args.decode_steps = 1, 1, 2

    cfg = full_config(args.smoke)
    rounds, start = [], time.perf_counter()
    for i in range(args.rounds):
        result = {}
        for name in WORKERS:
            print(f"round {i + 1}/{args.rounds}: {NAMES[name]} ...", file=sys.stderr, flush=True)
            result[name] = spawn(name, args)
        rounds.append(result)
        summary = summarize(rounds)
        print(report(cfg, rounds, summary, args))  # after every round: a run cut short keeps the rounds it finished
        print(f"wall       {time.perf_counter() - start:.0f} s ({i + 1} of {args.rounds} rounds)", flush=True)
        if args.json:
            settings = {k: v for k, v in vars(args).items() if k not in ("worker", "json")}
            payload = {
                "settings": settings,
                "config": cfg,
                "batch_sizes": [1, BATCH],
                "rounds_done": i + 1,
                "summary": summary,
                "rounds": [{NAMES[w]: r[w] for w in WORKERS} for r in rounds],
            }
            args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
