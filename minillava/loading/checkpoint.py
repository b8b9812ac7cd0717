"""A checkpoint folder -> a ready model: config.json, the safetensors weights, generation_config.json.

    folder ─ config.load_config ─────────▶ LlavaConfig
           ─ weights.load_weights ───────▶ params {vision_tower, multi_modal_projector, language_model, lm_head}
           ─ generation_config.json ─────▶ GenerationDefaults (EOS, pad, BOS ids)
                                            └─▶ LlavaModel(config, params, device, dtype)

``find_checkpoint`` turns what a user types (a folder, or a hub id such as llava-hf/llava-1.5-7b-hf) into
a folder; with no name, it is the demo model bundled with minillava.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from ..demo import demo_folder
from ..model import backend
from ..model.blocked import BlockedWeight, thread_pool
from ..model.generate import generation_defaults
from ..model.llava import ATTN_IMPLEMENTATIONS, COMPUTE_DTYPES, LlavaModel
from ..model.quantize import FORMATS, QuantizedWeight
from .config import load_config, load_generation_config
from .memory import plan_memory, weight_bytes
from .weights import expected_shapes, file_dtypes, load_weights

QUANTIZE_CHOICES = FORMATS  # "int8", "int4", "nf4": weight-only quantization of the language model's linear layers

# from_pretrained's keywords a Transformers user brings along, and what to write instead (each refused by name).
TRANSFORMERS_KEYWORDS = {
    "torch_dtype": "dtype='float32' (the CPU's reference) or 'float16'",
    "device_map": "device='cpu' or 'cuda' (minillava runs on one device)",
    "low_cpu_mem_usage": "low_memory=True (weights kept in the file's dtype, memory-mapped)",
    "load_in_8bit": "quantize='int8'",
    "load_in_4bit": "quantize='nf4' (or 'int4')",
    "quantization_config": "quantize='int8', 'int4' or 'nf4'",
    "trust_remote_code": "nothing: minillava runs no code from a checkpoint",
    "revision": "a local folder (download the revision you want with huggingface-cli)",
}


def load_model(
    path=None,
    device: str = "cpu",
    dtype: str = "float32",
    low_memory: bool | None = None,
    progress=None,
    *,
    quantize: str | None = None,
    attn_implementation: str = "eager",
    fused_kernels: bool = False,
    memory_budget=None,
    blocked_matmul: bool = False,
    threads: int | None = None,
    strict: bool = False,
    cuda_graphs: bool = False,
    **transformers_keywords,
) -> LlavaModel:
    """Load a llava-hf checkpoint folder (config.json + safetensors, single file or sharded); with no
    path, the small demo model bundled with minillava (minillava/demo, trained by tools/train_demo.py).

    device: "cpu" (NumPy) or "cuda" (CuPy). dtype: the compute dtype, "float32" (the reference,
    the default) or "float16". low_memory: True keeps the weights in the file's dtype, memory-mapped, and
    casts each one where it is used (llava-1.5-7b's 14 GB of float16 on a 16 GB machine, at the cost of a
    cast per use); False casts them all to ``dtype`` in RAM; None (the default) chooses from the checkpoint's
    size and the memory available, says which in one line for a large checkpoint, and refuses with a clear
    error, before reading, a checkpoint that cannot fit either way (loading/memory.py). memory_budget: plan
    with this much memory (bytes or "12GB") instead of what the system reports. quantize: None, or one of
    QUANTIZE_CHOICES: the language model's linear weights stored as integers and scales (model/quantize.py;
    int8 per row, int4 and nf4 in groups of 64), each quantized as it is read, and turned back into floats where
    it is multiplied; the other weights follow ``low_memory``. attn_implementation: "eager" (the
    plain attention, the default) or "tiled" (blocks of keys with an online softmax). fused_kernels: the language
    model's RMSNorm, SwiGLU gating and RoPE, and eager attention's softmax (both towers), as fused kernels
    (model/fused.py: the same numbers, fewer kernel launches on a GPU; the same code, unfused, on the CPU; off by
    default). blocked_matmul: multiply
    the language model's weights kept at rest (float16 memory-mapped, or quantized) a block of rows at a time on
    ``threads`` threads (None: one per CPU) in a decode step, instead of casting each whole weight first
    (model/blocked.py: the same numbers to float32 rounding, several times faster; off by default, the plain
    path being the reference). progress: an optional ``progress(bytes_done, bytes_total)`` callback while the
    weights are read. strict: weights holding NaN or infinite values are an error instead of a warning
    (``NonFiniteWeightsWarning``), and memory-mapped weights are scanned for them too (loading/weights.py).
    cuda_graphs: generation's decode steps on fixed shapes, recorded once as a CUDA graph and replayed with
    device="cuda" (model/static_step.py: one launch per token instead of one per operation); on the CPU the same
    fixed-shape step runs, unrecorded. Off by default: the plain step is the reference.
    """
    for name in transformers_keywords:
        instead = TRANSFORMERS_KEYWORDS.get(name)
        raise TypeError(
            f"load_model() got an unexpected keyword argument {name!r}"
            + (f": from_pretrained's keyword; in minillava, write {instead}" if instead else "")
        )
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be None or one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
    if not isinstance(fused_kernels, bool):
        raise ValueError(f"fused_kernels must be True or False, got {fused_kernels!r}")
    if low_memory is not None and not isinstance(low_memory, bool):  # 1 == True in Python: not a choice here
        raise ValueError(f"low_memory must be None (choose), True or False, got {low_memory!r}")
    if not isinstance(strict, bool):
        raise ValueError(f"strict must be True or False, got {strict!r}")
    if not isinstance(cuda_graphs, bool):
        raise ValueError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
    if not isinstance(blocked_matmul, bool):
        raise ValueError(f"blocked_matmul must be True or False, got {blocked_matmul!r}")
    if threads is not None and not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        raise ValueError(f"threads must be None (one per CPU) or a positive int, got {threads!r}")
    if blocked_matmul and device != "cpu":
        raise ValueError("blocked_matmul is for weights at rest on the CPU; on a GPU the weights live on the device")
    backend.check_device(device)
    if device == "cuda":
        backend.namespace("cuda")  # fail before reading gigabytes when CuPy or the GPU is missing
    folder = Path(path) if path is not None else demo_folder()
    if folder.is_file():  # config.json or a .safetensors file: the model needs the whole folder
        raise ValueError(
            f"{folder} is a file; load_model takes the checkpoint folder that holds config.json and the weights, "
            f"e.g. {folder.parent}"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"no such checkpoint folder: {folder}")
    config = load_config(folder)
    if device == "cpu":
        in_ram, at_rest = weight_bytes(expected_shapes(config), file_dtypes(folder), dtype, quantize)
        plan = plan_memory(in_ram, at_rest, low_memory, memory_budget, quantize)
        if plan.announce:
            print(f"minillava: {folder}: {plan.message}", file=sys.stderr)
        low_memory = plan.low_memory
    params = load_weights(
        folder, config, dtype=None if low_memory else dtype, progress=progress, quantize=quantize, strict=strict
    )
    if device == "cuda":
        params = _map_arrays(lambda a: backend.to_device(np.ascontiguousarray(a), "cuda"), params)
    if blocked_matmul:
        params = _blocked_at_rest(params, np.dtype(dtype), thread_pool(threads))
    defaults = generation_defaults(config, load_generation_config(folder))
    return LlavaModel(
        config,
        params,
        device=device,
        dtype=dtype,
        generation_defaults=defaults,
        attn_implementation=attn_implementation,
        fused_kernels=fused_kernels,
        cuda_graphs=cuda_graphs,
    )


def _map_arrays(fn, tree):
    """Apply fn to every array of a nested dict/list of parameters (a QuantizedWeight's integers and scales)."""
    if isinstance(tree, dict):
        return {k: _map_arrays(fn, v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_arrays(fn, v) for v in tree]
    if isinstance(tree, QuantizedWeight):
        return dataclasses.replace(tree, data=fn(tree.data), scales=fn(tree.scales))
    return fn(tree)


LANGUAGE_MODEL_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _blocked_at_rest(params: dict, dtype, pool) -> dict:
    """The language model's linear weights and lm_head, where they rest in another dtype than the compute dtype
    (or quantized), wrapped to be multiplied a block of rows at a time (model/blocked.py). What a decode step
    reads every token; the vision tower runs once per image, in a prefill, where blocks do not help."""

    def wrap(weight):
        at_rest = isinstance(weight, QuantizedWeight) or weight.dtype != dtype
        if isinstance(weight, np.memmap):  # a plain view of the same pages: np.memmap's slicing runs Python code,
            weight = weight.view(np.ndarray)  # and a decode step slices some 25,000 blocks
        return BlockedWeight(weight, pool=pool) if at_rest else weight

    language_model = dict(params["language_model"])
    language_model["layers"] = []
    for layer in params["language_model"]["layers"]:
        layer = {**layer, "self_attn": dict(layer["self_attn"]), "mlp": dict(layer["mlp"])}
        for part in ("self_attn", "mlp"):
            for name, linear in layer[part].items():
                if name in LANGUAGE_MODEL_LINEARS:
                    layer[part][name] = {**linear, "weight": wrap(linear["weight"])}
        language_model["layers"].append(layer)
    return {**params, "language_model": language_model, "lm_head": {"weight": wrap(params["lm_head"]["weight"])}}


def find_checkpoint(name: str | None) -> Path:
    """The checkpoint folder a name stands for: None is the bundled demo model; an existing path must be a
    folder with a config.json; anything else of the form owner/name is a hub id, downloaded with
    huggingface_hub when it is installed. Raises FileNotFoundError or ValueError with a one-line reason
    (the command lines prefix it with the option's name)."""
    if name is None:
        return demo_folder()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError("not a folder (give a llava-hf checkpoint folder)")
        if not (path / "config.json").is_file():
            raise FileNotFoundError("no config.json there, so it is not a llava-hf checkpoint folder")
        return path
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise FileNotFoundError("no such folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"no such folder. To use a hub id, `pip install huggingface_hub`, or download the "
            f"folder yourself: `huggingface-cli download {name} --local-dir {name.split('/')[-1]}`"
        ) from None
    print(f"downloading {name} from the Hugging Face hub ...", file=sys.stderr)
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.jinja", "*.safetensors", "*.model"]))
    except Exception as err:  # network, auth, unknown repo: one line
        raise FileNotFoundError(f"download failed: {err}") from None
