"""The real-size model on this machine: load time, image-prompt prefill, decode per token, peak memory.

    python tools/full_size.py                                   # llava-1.5-7b-hf, every mode (a long run)
    python tools/full_size.py --modes float16,int8 --new-tokens 4
    python tools/full_size.py --config tests/data/llava-interleave-qwen-0.5b-hf --modes float32,transformers

No download: it writes a synthetic checkpoint with the published config's exact shapes, key names (the hub's
layout), file dtype and shard layout, and random values (``.fixtures/synthetic-<name>``, once), streaming one
tensor at a time so that writing it never holds the model in memory. Then each mode runs in a process of its
own, one after the other (the machine's memory is all theirs), and reports what a user would see:

    float16        minillava, weights kept in the file's dtype, memory-mapped, cast where used (low_memory=True),
                   multiplied a block of rows at a time on every CPU (blocked_matmul=True, as the CLI does)
    float16-plain  the same with the plain path: each whole weight cast, then multiplied (the library's default)
    float32        minillava, weights cast to float32 in RAM (low_memory=False: the machine must hold them)
    int8, int4, nf4  minillava with quantize=... (the language model's linear weights), blocked_matmul=True
    int8-mapped    int8, the other weights kept in the file's float16, memory-mapped (low_memory=True)
    transformers   LlavaForConditionalGeneration.from_pretrained(dtype=float16), its default attention, the CPU

The prompt is one image and a short question (593 tokens for llava-1.5: 576 image tokens), batch 1; decode is
greedy, one token at a time with the KV cache; the time per token is the median over ``--new-tokens`` steps.
Peak memory is the process's peak resident set (``ru_maxrss``), which counts the memory-mapped weights a
process has touched. Timings depend on the machine and on what else runs: run it on a quiet machine, and never
turn these figures into assertions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("float16", "float16-plain", "float32", "int8", "int8-mapped", "int4", "nf4", "transformers")
SHARD_BYTES = 5 * 10**9  # llava-1.5-7b-hf's shards: ~5 GB each, 3 files
TEXT_TOKENS = 17  # a short question around the image tokens: 576 + 17 = 593 for llava-1.5


# ---------------------------------------------------------------------------------------------
# The synthetic checkpoint, written one tensor at a time
# ---------------------------------------------------------------------------------------------


def hub_key(key: str) -> str:
    """A canonical key (minillava.loading.weights) -> its name in a llava-hf hub folder."""
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith("language_model."):
        return "language_model.model." + key[len("language_model.") :]
    if key.startswith("vision_tower."):
        return "vision_tower.vision_model." + key[len("vision_tower.") :]
    return key


def write_checkpoint(config_folder: Path, out: Path, text_layers: int | None = None) -> Path:
    """config.json (+ generation_config.json) of ``config_folder`` and random weights of its shapes in ``out``."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from minillava.loading.config import config_from_dict
    from minillava.loading.weights import expected_shapes

    config_json = json.loads((config_folder / "config.json").read_text())
    if text_layers is not None:
        config_json.setdefault("text_config", {})["num_hidden_layers"] = text_layers
    stamp = out / ".synthetic.json"
    if stamp.exists() and json.loads(stamp.read_text()) == config_json:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors"):
        old.unlink()
    config = config_from_dict(config_json)
    file_dtype = {"bfloat16": "BF16", "float32": "F32"}.get(config_json.get("torch_dtype"), "F16")
    shapes = {
        k: s for k, s in expected_shapes(config).items() if not (k == "lm_head.weight" and config.tie_word_embeddings)
    }
    itemsize = 4 if file_dtype == "F32" else 2
    # Shards of ~5 GB, tensors in key order (as save_pretrained writes them).
    shards, current, size = [], [], 0
    for key in sorted(shapes):
        nbytes = math.prod(shapes[key]) * itemsize
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(key)
        size += nbytes
    shards.append(current)
    rng = np.random.default_rng(0)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    if len(shards) == 1:
        names = ["model.safetensors"]
    weight_map = {}
    for name, keys in zip(names, shards, strict=True):
        header, offset = {}, 0
        for key in keys:
            nbytes = math.prod(shapes[key]) * itemsize
            header[hub_key(key)] = {
                "dtype": file_dtype,
                "shape": list(shapes[key]),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            weight_map[hub_key(key)] = name
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        with open(out / name, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for key in keys:  # one tensor in memory at a time
                shape = shapes[key]
                if "norm" in key and key.endswith("weight"):
                    values = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
                elif key.endswith("bias"):
                    values = 0.02 * rng.standard_normal(shape, dtype=np.float32)
                else:  # Transformers' init scale: normal(0, 0.02)
                    values = 0.02 * rng.standard_normal(shape, dtype=np.float32)
                if file_dtype == "BF16":  # the upper 16 bits of each float32 (truncated)
                    f.write((values.view(np.uint32) >> 16).astype("<u2").tobytes())
                else:
                    f.write(values.astype("<f2" if file_dtype == "F16" else "<f4").tobytes())
                del values
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(math.prod(s) * itemsize for s in shapes.values())},
            "weight_map": weight_map,
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config_json, indent=2))
    generation = config_folder / "generation_config.json"
    if generation.is_file():
        (out / "generation_config.json").write_text(generation.read_text())
    stamp.write_text(json.dumps(config_json))
    return out


def prompt(config, seed: int = 0):
    """One image's pixel values and a prompt of TEXT_TOKENS text tokens around its image tokens: [1, T]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    side = config.vision.image_size
    pixel_values = rng.uniform(-1.5, 1.5, size=(1, 3, side, side)).astype(np.float32)  # [1, 3, S, S]
    special = {config.image_token_index, config.pad_token_id}
    words = [int(t) for t in rng.integers(3, min(config.text.vocab_size, 30000), size=3 * TEXT_TOKENS)]
    words = [t for t in words if t not in special][: TEXT_TOKENS - 1]
    ids = [1, *words[:4], *[config.image_token_index] * config.num_image_tokens, *words[4:]]
    return np.asarray([ids], dtype=np.int64), pixel_values


# ---------------------------------------------------------------------------------------------
# The workers: one mode per process, one JSON line on stdout
# ---------------------------------------------------------------------------------------------


def peak_rss_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def run_minillava(folder: Path, mode: str, new_tokens: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(REPO))
    import minillava

    options = {
        "float16": dict(low_memory=True, blocked_matmul=True),
        "float16-plain": dict(low_memory=True),
        "float32": dict(low_memory=False),
        "int8-mapped": dict(quantize="int8", low_memory=True, blocked_matmul=True),
    }.get(mode, dict(quantize=mode, blocked_matmul=True))
    start = time.perf_counter()
    model = minillava.load_model(folder, **options)
    load_s = time.perf_counter() - start
    input_ids, pixel_values = prompt(model.config)
    T = input_ids.shape[1]
    cache = model.new_cache(1, T + new_tokens + 1)
    start = time.perf_counter()
    logits = model.forward_device(input_ids, pixel_values=pixel_values, cache=cache, last_only=True)
    prefill_s = time.perf_counter() - start
    token, steps, tokens = int(logits[0, -1].argmax()), [], []
    for _ in range(new_tokens):
        tokens.append(token)
        mask = np.ones((1, cache.length + 1), dtype=np.int64)
        start = time.perf_counter()
        logits = model.forward_device(np.asarray([[token]]), attention_mask=mask, cache=cache, last_only=True)
        steps.append(time.perf_counter() - start)
        token = int(logits[0, -1].argmax())
    return {"load_s": load_s, "prefill_s": prefill_s, "decode_s": statistics.median(steps), "prompt_tokens": T,
            "peak_rss_gib": peak_rss_gib(), "tokens": tokens}  # fmt: skip


def run_transformers(folder: Path, new_tokens: int) -> dict:
    import torch
    from transformers import LlavaForConditionalGeneration

    sys.path.insert(0, str(REPO))
    from minillava import load_config

    torch.set_num_threads(os.cpu_count())
    start = time.perf_counter()
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float16).eval()
    load_s = time.perf_counter() - start
    input_ids, pixel_values = prompt(load_config(folder))
    ids, pixels = torch.from_numpy(input_ids), torch.from_numpy(pixel_values).to(torch.float16)
    steps, tokens = [], []
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(input_ids=ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - start
        cache_name = "cache" if hasattr(out, "cache") else "past_key_values"
        cache, token = getattr(out, cache_name), int(out.logits[0, -1].argmax())
        for _ in range(new_tokens):
            tokens.append(token)
            mask = torch.ones(1, cache.get_seq_length() + 1, dtype=torch.long)
            start = time.perf_counter()
            out = model(input_ids=torch.tensor([[token]]), attention_mask=mask, use_cache=True, logits_to_keep=1,
                        **{cache_name: cache})  # fmt: skip
            steps.append(time.perf_counter() - start)
            cache, token = getattr(out, cache_name), int(out.logits[0, -1].argmax())
    T = ids.shape[1]
    return {"load_s": load_s, "prefill_s": prefill_s, "decode_s": statistics.median(steps), "prompt_tokens": T,
            "peak_rss_gib": peak_rss_gib(), "tokens": tokens}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------


def spawn(folder: Path, mode: str, new_tokens: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--folder", str(folder)]
    command += ["--new-tokens", str(new_tokens)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "wall_s": time.perf_counter() - start}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "tests" / "data" / "llava-1.5-7b-hf",
                        help="a folder with the published config.json (default: llava-1.5-7b-hf's)")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help="where the synthetic checkpoint goes (default .fixtures/synthetic-NAME)"
    )
    parser.add_argument("--modes", default=",".join(m for m in MODES if m not in ("float32", "float16-plain")),
                        help=f"comma-separated, from {MODES} (default: all but float32 and float16-plain)")  # fmt: skip
    parser.add_argument("--new-tokens", type=int, default=8, help="decode steps timed (the median is reported)")
    parser.add_argument("--text-layers", type=int, help="fewer language-model layers (to try the tool quickly)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = run_transformers(args.folder, args.new_tokens) if args.worker == "transformers" else (
            run_minillava(args.folder, args.worker, args.new_tokens)
        )  # fmt: skip
        print(json.dumps(result), flush=True)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or args.new_tokens < 1:
        parser.error(f"--modes: unknown {unknown}; choose from {MODES}" if unknown else "--new-tokens must be >= 1")

    name = args.config.resolve().name + (f"-t{args.text_layers}" if args.text_layers else "")
    out = args.out or REPO / ".fixtures" / f"synthetic-{name}"
    start = time.perf_counter()
    folder = write_checkpoint(args.config, out, args.text_layers)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    print(f"checkpoint {folder}: {size / 1e9:.2f} GB of safetensors ({time.perf_counter() - start:.0f} s)", flush=True)
    results = {}
    for mode in modes:
        print(f"{mode} ...", file=sys.stderr, flush=True)
        results[mode] = spawn(folder, mode, args.new_tokens)
    print(f"{'mode':<14}{'load':>9}{'prefill':>10}{'decode/token':>14}{'peak RSS':>11}   prompt tokens")
    for mode, r in results.items():
        if "error" in r:
            print(f"{mode:<14}  failed: {r['error']}")
            continue
        times = f"{r['load_s']:>8.1f}s{r['prefill_s']:>9.1f}s{r['decode_s']:>13.2f}s"
        print(f"{mode:<14}{times}{r['peak_rss_gib']:>8.1f} GiB   {r['prompt_tokens']}")
    if args.json:
        payload = {"config": str(args.config), "cpus": os.cpu_count(), "results": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
