"""Speed of minillava against Transformers, as ratios (minillava time / Transformers time), on the CPU
(NumPy against torch) or on an NVIDIA GPU (CuPy against torch with CUDA).

Usage:
    python tools/benchmark.py                      # llava-1.5-7b widths, 2 text + 2 CLIP layers, 1 thread
    python tools/benchmark.py --config tests/data/llava-interleave-qwen-0.5b-hf   # a published config, all layers
    python tools/benchmark.py --threads 2 --json /tmp/bench.json
    python tools/benchmark.py --device cuda --dtype float16   # on a GPU, in the checkpoint's precision
    python tools/benchmark.py --smoke              # a tiny model, 1 round: checks that the script runs

What it does: builds a random ``LlavaForConditionalGeneration`` with llava-1.5-7b's widths (text
hidden 4096, MLP 11008, 32 heads, vocab 32064; CLIP-L/14 at 336 px, so 576 image tokens) but only a
few layers, saves it once in float16 as the real checkpoint is (under ``.fixtures/bench-*``), then
times three phases on one image and a prompt of ~600 tokens (the 576 image tokens included), batch 1.
With ``--config`` the model is the one a published config.json describes (every layer, unless
``--text-layers`` / ``--vision-layers`` say otherwise), saved in that file's ``torch_dtype``: e.g.
llava-interleave-qwen-0.5b at full size, SigLIP at 384 px (729 image tokens) and its 24-layer Qwen2:

    image encode   CLIP up to the selected layer + projector
                   (minillava ``encode_image``, Transformers ``model.model.get_image_features``)
    prefill        the whole prompt with the image, filling a KV cache, logits of the last position
    decode         one-token steps after the prefill, greedy; the median time of one step (at ~600)
    decode_long    the same at ~1600 positions (``--long-context``): a text prompt of that length is
                   prefilled once, untimed, then the steps are timed; with the KV cache the cost of a
                   step should stay nearly flat, growing only by the attention over the longer cache
    preprocess     one 640x480 photograph to pixel_values [1, 3, 336, 336] (minillava's preprocess
                   against Transformers' PIL-backend CLIPImageProcessor, llava-1.5's settings)

Both run in the same ``--dtype`` (float32 by default) with the same number of threads, on the same
``--device``. On the GPU every timed phase ends with a device synchronisation (CuPy and torch queue
their kernels and return at once), TF32 is off in torch as it is in CuPy (float32 means float32), and
preprocessing stays on the CPU in both. House rules: each framework runs in its own
process (torch's and NumPy's BLAS thread pools slow each other down in one process), the processes
alternate (minillava, Transformers, minillava, ...), each phase is warmed up once and then repeated
(median within a process), and the reported ratio is the median of the per-round ratios. Never use
these timings in assertions: they depend on the machine and its load.

How to read the result: ratio 1.00 means as fast as Transformers, 2.00 twice as slow. Transformers
computes every CLIP layer and then picks ``vision_feature_layer`` (-2 by default, as llava-1.5),
while minillava stops at that layer: with 2 CLIP layers that is 1 layer against 2, so the image
encode ratio flatters minillava far more than it would on the real model (23 of 24 layers). Pass
``--vision-feature-layer -1`` to compare equal work. The "load" line says how many CPUs other
processes kept busy meanwhile: on a shared 2-core machine anything above ~0.2 makes the per-round
ratios scatter (and makes ``--threads 2`` meaningless), so look at their spread before trusting a
median. NumPy's OpenBLAS picks its kernel at import;
the machine may set OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE), which forces an older one. By default
the minillava process runs with both unset (``--no-unset-openblas-coretype`` keeps them); the
kernel it used is printed either way.

Internals: the parent spawns ``python tools/benchmark.py --worker minillava|transformers --model DIR
...``, which prints one JSON line of timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("minillava", "transformers")
PHASES = ("preprocess", "image_encode", "prefill", "decode", "decode_long")
OPENBLAS_MACHINE_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# llava-1.5-7b-hf's config.json, with the layer counts left to the command line.
LLAVA_7B = {
    "text_config": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32064,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
    },
    "image_token_index": 32000,
    "pad_token_id": 32001,
    "vision_feature_select_strategy": "default",
}

# --smoke: the same structure at toy widths (28 px image in 7 px patches: 16 image tokens).
TINY = {
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 256,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "image_size": 28,
        "patch_size": 7,
        "projection_dim": 16,
        "hidden_act": "quick_gelu",
    },
    "image_token_index": 200,
    "pad_token_id": 201,
    "vision_feature_select_strategy": "default",
}
TEXT_TOKENS = 24  # prompt tokens besides the image tokens: 576 + 24 = 600 at llava-1.5 sizes


# ---------------------------------------------------------------------------------------------
# The model: built once with Transformers, saved in float16 like the real checkpoint
# ---------------------------------------------------------------------------------------------


def llava_config(args) -> dict:
    """The benchmark model's LlavaConfig kwargs: a published config.json (``--config``, a file or its folder) or
    llava-1.5-7b's widths (tiny ones with ``--smoke``), with the layer counts the command line gives."""
    if args.config:
        path = Path(args.config)
        cfg = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    else:
        cfg = json.loads(json.dumps(TINY if args.smoke else LLAVA_7B))
        cfg["text_config"]["num_hidden_layers"] = 2
        cfg["vision_config"]["num_hidden_layers"] = 2
        cfg["vision_feature_layer"] = -2
    for key, value in (("text_config", args.text_layers), ("vision_config", args.vision_layers)):
        if value is not None:
            cfg[key]["num_hidden_layers"] = value
    if args.vision_feature_layer is not None:
        cfg["vision_feature_layer"] = args.vision_feature_layer
    return cfg


def model_name(cfg: dict, args) -> str:
    if args.config:
        return Path(args.config).resolve().name.removesuffix(".json")
    return "tiny (--smoke)" if args.smoke else "llava-1.5-7b widths"


def is_siglip(cfg: dict) -> bool:
    return cfg["vision_config"].get("model_type") == "siglip_vision_model"


def checkpoint_folder(cfg: dict, args) -> Path:
    """Where the model of ``cfg`` is kept: ``--cache-dir``, or .fixtures/bench-<model>-t<text layers>-v<vision
    layers>-f<feature layer> (e.g. bench-7b-t2-v2-f-2)."""
    base = Path(args.config).resolve().name.removesuffix(".json") if args.config else "tiny" if args.smoke else "7b"
    layers = (cfg["text_config"].get("num_hidden_layers", "all"), cfg["vision_config"].get("num_hidden_layers", "all"))
    sizes = f"{base}-t{layers[0]}-v{layers[1]}-f{cfg['vision_feature_layer']}"
    return args.cache_dir or REPO / ".fixtures" / f"bench-{sizes}"


def ensure_checkpoint(cfg: dict, folder: Path) -> Path:
    """Build and save the random model unless ``folder`` already holds it (same config)."""
    stamp = folder / ".bench-config.json"
    if stamp.exists() and json.loads(stamp.read_text()) == cfg:
        return folder
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    print(f"building a random model in {folder} (once) ...", flush=True)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(**json.loads(json.dumps(cfg)))).eval()  # its own random init
    model.to(getattr(torch, cfg.get("torch_dtype", "float16"))).save_pretrained(folder)  # the published file's dtype
    stamp.write_text(json.dumps(cfg))
    return folder


def make_inputs(cfg: dict, seed: int = 0):
    """One random image and a prompt: BOS, a few text tokens, the image tokens, the rest of the text."""
    import numpy as np

    from minillava.loading.config import config_from_dict

    rng = np.random.default_rng(seed)
    resolved = config_from_dict(cfg)
    side, n_image = resolved.vision.image_size, resolved.num_image_tokens  # 336, 576 for llava-1.5-7b
    pixel_values = rng.standard_normal((1, 3, side, side), dtype=np.float32)  # [1, 3, S, S]
    special = {cfg["image_token_index"], cfg.get("pad_token_id")}
    vocab = resolved.text.vocab_size
    words = [int(t) for t in rng.integers(2, vocab, size=4 * TEXT_TOKENS) if int(t) not in special]
    before, after = words[:4], words[4 : TEXT_TOKENS - 1]  # "USER: <image>\n...? ASSISTANT:"-like split
    ids = [1, *before, *[cfg["image_token_index"]] * n_image, *after]
    return np.asarray([ids], dtype=np.int64), pixel_values  # [1, T], [1, 3, S, S]


def long_prompt(cfg: dict, length: int, seed: int = 1):
    """A text-only prompt of ``length`` random tokens (BOS first): what matters is its length."""
    import numpy as np

    rng = np.random.default_rng(seed)
    from minillava.loading.config import config_from_dict

    special = {cfg["image_token_index"], cfg.get("pad_token_id")}
    vocab = config_from_dict(cfg).text.vocab_size
    words = [int(t) for t in rng.integers(2, vocab, size=2 * length) if int(t) not in special]
    return np.asarray([[1, *words[: length - 1]]], dtype=np.int64)  # [1, length]


def photo():
    """A 640x480 photograph (scikit-image's astronaut, resized), or noise without scikit-image."""
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        return Image.fromarray(data.astronaut()).resize((640, 480), Image.Resampling.BICUBIC)
    except ImportError:
        rng = np.random.default_rng(0)
        return Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))


def time_decode(step, token, cache, n_steps: int) -> tuple[float, list[int]]:
    """One untimed warm-up step, then ``n_steps`` timed ones: the median seconds per step, the tokens."""
    tokens = [token]
    token, cache = step(token, cache)
    tokens.append(token)
    times = []
    for _ in range(n_steps):
        start = time.perf_counter()
        token, cache = step(tokens[-1], cache)
        times.append(time.perf_counter() - start)
        tokens.append(token)
    return statistics.median(times), tokens


# ---------------------------------------------------------------------------------------------
# The workers: one framework per process, one JSON line of timings on stdout
# ---------------------------------------------------------------------------------------------


def timed(fn, repeats: int, sync=None) -> tuple[float, object]:
    """Run fn once to warm up, then ``repeats`` times; the median wall time and the last result.
    ``sync``: called before the clock stops (a GPU's queued kernels must have finished)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def result_record(load_s, preprocess_s, encode_s, prefill_s, decode_s, decode_long_s, tokens, prompt, long) -> dict:
    """What both workers report: the seconds of each phase, the greedy tokens, the prompts' lengths."""
    return {
        "load_s": load_s,
        "preprocess": preprocess_s,
        "image_encode": encode_s,
        "prefill": prefill_s,
        "decode": decode_s,
        "decode_long": decode_long_s,
        "tokens": tokens,
        "prompt_tokens": int(prompt.shape[1]),
        "long_prompt_tokens": int(long.shape[1]),
    }


def blas_info() -> list[dict]:
    """The BLAS libraries loaded in this process (threadpoolctl, when it is installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "pip install threadpoolctl to see which BLAS kernel runs"}]
    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: info.get(k) for k in keys} for info in threadpool_info()]


def run_minillava(folder: Path, args) -> dict:
    import numpy as np

    sys.path.insert(0, str(REPO))
    import minillava

    start = time.perf_counter()
    model = minillava.load_model(
        folder, device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation
    )
    load_s = time.perf_counter() - start
    cfg = json.loads((folder / ".bench-config.json").read_text())
    input_ids, pixel_values = make_inputs(cfg)
    sync = None
    if args.device == "cuda":
        import cupy

        sync = cupy.cuda.Device().synchronize
        pixel_values = cupy.asarray(pixel_values)  # on the device already, as Transformers' is
        gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    max_len = input_ids.shape[1] + args.decode_steps + 1

    from minillava.loading.preprocess import ImageProcessorConfig, preprocess

    image = photo()
    side = cfg["vision_config"]["image_size"]
    settings = ImageProcessorConfig(size=side, crop_size=(side, side))  # llava-1.5's: shortest edge, center crop
    if is_siglip(cfg):  # llava-interleave's: an exact resize to the square, no crop, mean = std = 0.5
        half = (0.5, 0.5, 0.5)
        settings = ImageProcessorConfig(size=side, crop_size=(side, side), size_hw=(side, side), do_center_crop=False,
                                        image_mean=half, image_std=half)  # fmt: skip
    preprocess_s, _ = timed(lambda: preprocess([image], settings), 5 * args.repeats)
    encode_s, _ = timed(lambda: model.encode_image(pixel_values), args.repeats, sync)

    def prefill():
        cache = model.new_cache(1, max_len)
        logits = model.forward_device(input_ids, pixel_values=pixel_values, cache=cache, last_only=True)
        return cache, logits

    prefill_s, (cache, logits) = timed(prefill, args.repeats, sync)

    def step(token, cache):
        mask = np.ones((1, cache.length + 1), dtype=np.int64)
        logits = model.forward_device(np.asarray([[token]]), attention_mask=mask, cache=cache, last_only=True)
        return int(logits[0, -1].argmax()), cache

    decode_s, tokens = time_decode(step, int(logits[0, -1].argmax()), cache, args.decode_steps)

    long_ids = long_prompt(cfg, args.long_context)  # [1, ~1600]
    long_cache = model.new_cache(1, long_ids.shape[1] + args.decode_steps + 2)
    logits = model.forward_device(long_ids, cache=long_cache, last_only=True)  # untimed prefill
    decode_long_s, _ = time_decode(step, int(logits[0, -1].argmax()), long_cache, args.decode_steps)
    return {
        **result_record(
            load_s, preprocess_s, encode_s, prefill_s, decode_s, decode_long_s, tokens, input_ids, long_ids
        ),
        "clip_layers_run": model.config.vision_layers_needed,
        "attention": describe_attention(model),
        "gpu": f"{gpu}, CuPy {cupy.__version__}" if args.device == "cuda" else None,
        "numpy": np.__version__,
        "blas": blas_info(),
        "openblas_env": {k: os.environ.get(k) for k in OPENBLAS_MACHINE_VARS},
    }


def describe_attention(model) -> str:
    """How the model attends: its attn_implementation, and the blocks of queries it is called by (on the CPU)."""
    from minillava.model.attention import QUERY_BLOCK, by_query_blocks

    blocks = getattr(model.attention, "func", None) is by_query_blocks
    size = model.attention.keywords.get("block_size", QUERY_BLOCK) if blocks else None
    return model.attn_implementation + (f", by blocks of {size} queries" if blocks else "")


def run_transformers(folder: Path, args) -> dict:
    import inspect

    import torch
    from transformers import LlavaForConditionalGeneration

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as CuPy: float32 is float32
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    load_s = time.perf_counter() - start
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    cfg = json.loads((folder / ".bench-config.json").read_text())
    input_ids, pixel_values = make_inputs(cfg)
    input_ids = torch.from_numpy(input_ids).to(args.device)
    pixel_values = torch.from_numpy(pixel_values).to(args.device, dtype)
    layer, strategy = cfg["vision_feature_layer"], cfg["vision_feature_select_strategy"]
    # Transformers 5.24 renamed past_key_values to cache (the old name warns until 5.40).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def encode():
        return model.model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=layer, vision_feature_select_strategy=strategy
        )

    def prefill():
        return model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True, logits_to_keep=1)

    def step(token, cache):
        out = model(
            input_ids=torch.tensor([[token]], device=args.device),
            attention_mask=torch.ones(1, cache.get_seq_length() + 1, dtype=torch.long, device=args.device),
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: cache},
        )
        return int(out.logits[0, -1].argmax()), getattr(out, cache_arg)

    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    side = cfg["vision_config"]["image_size"]
    if is_siglip(cfg):
        processor = SiglipImageProcessorPil(size={"height": side, "width": side})
    else:
        processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    image = photo()
    preprocess_s, _ = timed(lambda: processor(images=[image], return_tensors="np"), 5 * args.repeats)

    with torch.inference_mode():
        encode_s, _ = timed(encode, args.repeats, sync)
        prefill_s, out = timed(prefill, args.repeats, sync)
        decode_s, tokens = time_decode(
            step, int(out.logits[0, -1].argmax()), getattr(out, cache_arg), args.decode_steps
        )
        long_ids = torch.from_numpy(long_prompt(cfg, args.long_context)).to(args.device)  # [1, ~1600]
        out = model(input_ids=long_ids, use_cache=True, logits_to_keep=1)  # untimed prefill
        decode_long_s, _ = time_decode(
            step, int(out.logits[0, -1].argmax()), getattr(out, cache_arg), args.decode_steps
        )
    import transformers

    return {
        **result_record(
            load_s, preprocess_s, encode_s, prefill_s, decode_s, decode_long_s, tokens, input_ids, long_ids
        ),
        "clip_layers_run": len(model.model.vision_tower.encoder.layers),
        "gpu": f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}" if args.device == "cuda" else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_blas": "BLAS " + (re.findall(r"BLAS_INFO=(\w+)", torch.__config__.show()) or ["?"])[0],
        "attn_implementation": model.config.text_config._attn_implementation,
    }


def worker(args) -> None:
    folder = Path(args.model)
    result = run_minillava(folder, args) if args.worker == "minillava" else run_transformers(folder, args)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: build the model, alternate the workers, take medians, print the table
# ---------------------------------------------------------------------------------------------


def child_env(framework: str, args) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(args.threads)
    if framework == "minillava" and args.unset_openblas_coretype:
        for var in OPENBLAS_MACHINE_VARS:
            env.pop(var, None)
    return env


def spawn(framework: str, folder: Path, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--model", str(folder)]
    command += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    command += ["--decode-steps", str(args.decode_steps), "--long-context", str(args.long_context)]
    command += ["--device", args.device, "--dtype", args.dtype, "--attn-implementation", args.attn_implementation]
    proc = subprocess.run(command, env=child_env(framework, args), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{framework} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds used by our finished children), or
    None off Linux. Their difference over a run is what other processes took: the noise to expect."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarize(rounds: list[dict]) -> dict:
    """Median time per framework and phase, and the median of the per-round ratios."""
    summary = {}
    for phase in PHASES:
        ratios = [r["minillava"][phase] / r["transformers"][phase] for r in rounds]
        summary[phase] = {
            "minillava_s": statistics.median(r["minillava"][phase] for r in rounds),
            "transformers_s": statistics.median(r["transformers"][phase] for r in rounds),
            "ratio": statistics.median(ratios),
            "round_ratios": ratios,
        }
    return summary


def describe_blas(blas: list[dict]) -> str:
    parts = []
    for b in blas:
        if "internal_api" in b:
            parts.append(f"{b['internal_api']} {b['version']} kernel {b['architecture']}, {b['num_threads']} thread(s)")
        else:
            parts.append(b.get("note", "?"))
    return "; ".join(parts) or "none found"


def report(cfg: dict, rounds: list[dict], summary: dict, args) -> str:
    from minillava.loading.config import config_from_dict

    mini, hf = rounds[0]["minillava"], rounds[0]["transformers"]
    resolved = config_from_dict(cfg)
    text, vision = resolved.text, resolved.vision
    outer = " ".join(f"{k}={os.environ[k]}" for k in OPENBLAS_MACHINE_VARS if k in os.environ) or "neither set"
    seen = " ".join(f"{k}={v}" for k, v in mini["openblas_env"].items() if v is not None) or "neither set"
    env_note = f"here: {outer}; minillava ran with: {seen}" + (
        " (--unset-openblas-coretype)" if args.unset_openblas_coretype else " (--no-unset-openblas-coretype)"
    )
    same = all(r["minillava"]["tokens"] == r["transformers"]["tokens"] for r in rounds)
    lines = [
        f"model      {model_name(cfg, args)}: text {text.num_hidden_layers} layers x {text.hidden_size} "
        f"(MLP {text.intermediate_size}, vocab {text.vocab_size}), {'SigLIP' if is_siglip(cfg) else 'CLIP'} "
        f"{vision.num_hidden_layers} layers x {vision.hidden_size} at {vision.image_size} px, vision_feature_layer "
        f"{cfg['vision_feature_layer']} (vision layers run: minillava {mini['clip_layers_run']}, "
        f"Transformers {hf['clip_layers_run']})",
        f"inputs     1 image, prompt of {mini['prompt_tokens']} tokens, batch 1, {args.decode_steps} decode steps "
        f"(decode times are per token, after a prompt of that many tokens); preprocess: one 640x480 photo",
        f"machine    {cpu_model()}, {os.cpu_count()} CPUs, {args.threads} thread(s) per framework, "
        f"python {platform.python_version()}",
        f"device     {args.device}, {args.dtype}"
        + (f"; GPU: minillava sees {mini['gpu']}, Transformers {hf['gpu']}" if args.device == "cuda" else ""),
        f"minillava  numpy {mini['numpy']}, BLAS: {describe_blas(mini['blas'])}, attention {mini['attention']}",
        f"           OpenBLAS env {env_note}",
        f"Transf.    transformers {hf['transformers']}, torch {hf['torch']} ({hf['torch_blas']}, "
        f"{hf['torch_threads']} thread(s), attention {hf['attn_implementation']})",
        f"runs       {len(rounds)} round(s) alternating minillava / Transformers, each phase warmed up once + "
        f"{args.repeats} repeat(s), median; greedy tokens equal in every round: {'yes' if same else 'NO'}",
        f"load       other processes kept {summary['other_load']:.2f} of {os.cpu_count()} CPUs busy during the run"
        + (" (timings are noisy: rerun on a quiet machine)" if summary["other_load"] > 0.2 else "")
        if "other_load" in summary
        else "load       unknown (no /proc/stat)",
        "",
        f"{'phase':<14}{'minillava':>12}{'Transformers':>14}{'ratio':>8}   per-round ratios (minillava / Transformers)",
    ]
    for phase in PHASES:
        s = summary[phase]
        name = {
            "decode": f"decode @{mini['prompt_tokens']}",
            "decode_long": f"decode @{mini['long_prompt_tokens']}",
            "preprocess": "preprocess",
        }.get(phase, phase.replace("_", " "))
        per_round = " ".join(f"{r:.2f}" for r in s["round_ratios"])
        mini_ms, hf_ms = s["minillava_s"] * 1e3, s["transformers_s"] * 1e3
        lines.append(f"{name:<14}{mini_ms:>10.1f}ms{hf_ms:>12.1f}ms{s['ratio']:>8.2f}   {per_round}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternated minillava/Transformers process pairs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each phase per process (after a warm-up)")
    parser.add_argument("--decode-steps", type=int, default=16, help="timed one-token steps after the prefill")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads for both frameworks")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: CuPy against torch on the GPU")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="compute dtype of both")
    parser.add_argument("--long-context", type=int, default=1600, help="cache length for the decode_long phase")
    parser.add_argument("--attn-implementation", choices=("eager", "tiled"), default="eager",
                        help="minillava's attention (Transformers keeps its default, sdpa)")  # fmt: skip
    parser.add_argument("--config", help="a published config.json (or its folder): that model, every layer")
    parser.add_argument("--text-layers", type=int, help="language model layers (default 2; --config: the file's)")
    parser.add_argument("--vision-layers", type=int, help="vision tower layers (default 2; --config: the file's)")
    parser.add_argument("--vision-feature-layer", type=int, help="default -2, as llava-1.5 (--config: the file's)")
    parser.add_argument(
        "--unset-openblas-coretype",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run minillava with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (default), so OpenBLAS picks its kernel",
    )
    parser.add_argument("--cache-dir", type=Path, help="where the model is saved (default .fixtures/bench-<sizes>)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 1 round, 1 repeat: checks that it runs")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(args)
        return
    if min(args.rounds, args.repeats, args.decode_steps, args.threads) < 1:
        parser.error("--rounds, --repeats, --decode-steps and --threads must be at least 1")
    if args.smoke:
        args.rounds, args.repeats, args.decode_steps, args.long_context = 1, 1, 2, 100

    cfg = llava_config(args)
    folder = ensure_checkpoint(cfg, checkpoint_folder(cfg, args))

    rounds, start, cpu_before = [], time.perf_counter(), cpu_seconds()
    for i in range(args.rounds):
        result = {}
        for framework in FRAMEWORKS:
            print(f"round {i + 1}/{args.rounds}: {framework} ...", file=sys.stderr, flush=True)
            result[framework] = spawn(framework, folder, args)
        rounds.append(result)

    summary = summarize(rounds)
    wall, cpu_after = time.perf_counter() - start, cpu_seconds()
    if cpu_before and cpu_after:  # CPUs' worth of work by other processes, on average over the run
        summary["other_load"] = ((cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1])) / wall
    print(report(cfg, rounds, summary, args))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "model", "json", "cache_dir")}
        payload = {"settings": settings, "config": cfg, "cpu": cpu_model(), "summary": summary, "rounds": rounds}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
