"""A checkpoint folder -> a ready model: config.json, the safetensors weights, generation_config.json.

    folder ─ config.load_config ─────────▶ LlavaConfig
           ─ weights.load_weights ───────▶ params {vision_tower, multi_modal_projector, language_model, lm_head}
           ─ generation_config.json ─────▶ GenerationDefaults (EOS, pad, BOS ids)
                                            └─▶ LlavaModel(config, params, device, dtype)

``find_checkpoint`` turns what a user types (a folder, or a hub id such as llava-hf/llava-1.5-7b-hf) into
a folder; with no name, it is the demo model bundled with minillava.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..demo import demo_folder
from ..model import backend
from ..model.generate import generation_defaults
from ..model.llava import COMPUTE_DTYPES, LlavaModel
from .config import load_config
from .files import read_json
from .weights import load_weights


def load_model(
    path=None, device: str = "cpu", dtype: str = "float32", low_memory: bool = False, progress=None
) -> LlavaModel:
    """Load a llava-hf checkpoint folder (config.json + safetensors, single file or sharded); with no
    path, the small demo model bundled with minillava (minillava/demo, trained by tools/train_demo.py).

    device: "cpu" (NumPy) or "cuda" (CuPy). dtype: the compute dtype, "float32" (the reference,
    the default) or "float16". low_memory: keep the weights in the file's dtype, memory-mapped, and
    cast each one where it is used, so llava-1.5-7b (14 GB of float16) runs in float32 on a 16 GB
    machine at the cost of a cast per use. progress: an optional ``progress(bytes_done, bytes_total)``
    callback while the weights are read.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    backend.check_device(device)
    if device == "cuda":
        backend.namespace("cuda")  # fail before reading gigabytes when CuPy or the GPU is missing
    folder = Path(path) if path is not None else demo_folder()
    config = load_config(folder)
    params = load_weights(folder, config, dtype=None if low_memory else dtype, progress=progress)
    if device == "cuda":
        params = _map_arrays(lambda a: backend.to_device(np.ascontiguousarray(a), "cuda"), params)
    defaults = generation_defaults(config, read_json(folder / "generation_config.json"))
    return LlavaModel(config, params, device=device, dtype=dtype, generation_defaults=defaults)


def _map_arrays(fn, tree):
    """Apply fn to every array of a nested dict/list of parameters."""
    if isinstance(tree, dict):
        return {k: _map_arrays(fn, v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_arrays(fn, v) for v in tree]
    return fn(tree)


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
