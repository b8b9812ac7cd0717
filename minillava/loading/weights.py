"""Loading a LLaVA checkpoint from safetensors into a nested dict of NumPy arrays.

A checkpoint folder holds either one ``model.safetensors`` or several shards listed in
``model.safetensors.index.json`` (its ``weight_map`` says which shard holds which tensor). The tensors
come back as a nested dict named like the Transformers modules, so that model code reads
``params["language_model"]["layers"][3]["self_attn"]["q_proj"]["weight"]``.

Each file is read by ``safetensors.py`` (memory-mapped where the dtype allows).

Checkpoints name the same tensor differently depending on who saved them. All of these map to one
canonical layout (``canonical_key``)::

    hub llava-hf folders    language_model.model.*   language_model.lm_head.*   vision_tower.vision_model.*
    Transformers 5.x save   language_model.model.*   language_model.lm_head.*   vision_tower.*
    in-memory state_dict    model.language_model.*   lm_head.*                  model.vision_tower.*
    canonical (ours)        language_model.*         lm_head.*                  vision_tower.*

plus ``multi_modal_projector.*`` (``model.multi_modal_projector.*`` in memory).

Shape letters used below (see ``expected_shapes``):
    Dv vision hidden size        Fv vision MLP size       C image channels     P patch size
    Np number of patches         D  text hidden size      F  text MLP size     V vocabulary size
    H  attention heads           KV key/value heads       hd head dim          L  number of feature layers
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping

import numpy as np

from ..model.quantize import FORMATS as QUANTIZE_FORMATS
from ..model.quantize import QuantizedWeight
from ..model.quantize import quantize as quantize_weight
from .files import read_json
from .safetensors import FLOAT_DTYPES, SAFETENSORS_DTYPES, bfloat16_to_float32, map_buffer, read_header, tensor

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# (checkpoint prefix, canonical prefix), tried in order: the first that matches wins, so longer
# prefixes come before the shorter ones they start with.
_PREFIXES = (
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model."),
    ("language_model.model.", "language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("language_model.", "language_model."),
    ("lm_head.", "lm_head."),
)

# Buffers some checkpoints carry that are not weights: CLIP's position_ids (arange(Np+1)) and the
# rotary inv_freq of old Llama checkpoints. Both are recomputed from the config.
_IGNORED_SUFFIXES = (".position_ids", ".inv_freq")

# The weights ``load_weights(..., quantize=...)`` stores quantized (model/quantize.py): the language model's seven
# linear layers per block. See ``is_quantized``.
QUANTIZED_WEIGHTS = re.compile(
    r"language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight"
)

# Tensors only a checkpoint saved already quantized has (name ending -> its format), and what each format's
# tools call it: found in the headers, before any weight is read (``read_headers``).
_PREQUANTIZED = (
    ((".weight.absmax", ".weight.quant_map", ".weight.nested_absmax", ".weight.nested_quant_map",
      ".weight.quant_state.bitsandbytes__nf4", ".weight.quant_state.bitsandbytes__fp4"),
     "bitsandbytes 4-bit (nf4/fp4, load_in_4bit)"),
    ((".SCB", ".weight_format"), "bitsandbytes 8-bit (LLM.int8, load_in_8bit)"),
    ((".qweight", ".qzeros", ".g_idx"), "GPTQ or AWQ (qweight/qzeros/scales)"),
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Key names
# --------------------------------------------------------------------------------------------------


def canonical_key(key: str) -> str | None:
    """The canonical dotted name of a checkpoint key, or None for a buffer that is not a weight.

    >>> canonical_key("language_model.model.layers.0.mlp.up_proj.weight")
    'language_model.layers.0.mlp.up_proj.weight'
    >>> canonical_key("vision_tower.vision_model.embeddings.position_ids") is None
    True

    Raises ValueError for a key that belongs to none of the known layouts (e.g. llava-next's
    ``image_newline``). Whether a known-looking key is really expected is decided by ``check_params``.
    """
    if key.endswith(_IGNORED_SUFFIXES):
        return None
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise ValueError(
        f"checkpoint key {key!r} is not part of a LLaVA-1.5 model (expected names under vision_tower., "
        "multi_modal_projector., language_model. or lm_head., with or without a leading model.)"
    )


def is_quantized(key: str) -> bool:
    """Whether ``load_weights(..., quantize=...)`` stores this canonical weight quantized: the language model's
    q/k/v/o_proj and gate/up/down_proj weights (Llama's and Qwen2's), nothing else.

    >>> is_quantized("language_model.layers.3.mlp.down_proj.weight"), is_quantized("lm_head.weight")
    (True, False)

    Why those: they are ~92% of llava-1.5-7b's bytes (6.5 of its 7.1 billion weights), and decoding reads every one
    of them for every new token, so they are where the memory and the time go. The rest stays as it is:
    embed_tokens is a lookup of a few rows per token, not a product, and lm_head (2% of the weights) makes the
    logits themselves, which Transformers' bitsandbytes integration also keeps unquantized; the norms and biases
    are vectors; the vision tower (CLIP-L, 0.3 billion) and the projector run once per image, not per token, and
    are small (Transformers' bitsandbytes integration quantizes those two as well: minillava keeps them exact,
    so that its drift comes from the language model alone). Biases stay floats (only the weights are quantized).
    """
    return QUANTIZED_WEIGHTS.fullmatch(key) is not None


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Canonical dotted key -> shape of every tensor a LLaVA model with this config has.

    ``config`` is a minillava LlavaConfig (``config.vision``, ``config.text`` and the llava fields).
    Biases of the projector, the Llama attention and the Llama MLP appear only when the config says
    the model has them (``multimodal_projector_bias``, ``attention_bias``, ``mlp_bias``; Qwen2's ``qkv_bias``).
    The vision tower is CLIP's or SigLIP's (``config.vision.model_type``).
    """
    v, t = config.vision, config.text
    Dv, Fv, C, P = v.hidden_size, v.intermediate_size, v.num_channels, v.patch_size
    D, F, V = t.hidden_size, t.intermediate_size, t.vocab_size
    H, KV, hd = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    layers = config.vision_feature_layer
    L = 1 if isinstance(layers, int) else len(layers)

    shapes: dict[str, tuple[int, ...]] = {
        "vision_tower.embeddings.patch_embedding.weight": (Dv, C, P, P),
        "vision_tower.embeddings.position_embedding.weight": (v.num_positions, Dv),  # Np (+ 1 for CLS) rows
        "vision_tower.post_layernorm.weight": (Dv,),  # in every checkpoint, never used by llava
        "vision_tower.post_layernorm.bias": (Dv,),
    }
    if v.model_type == "clip_vision_model":  # the conv has no bias; a CLS token and a pre-LayerNorm
        shapes["vision_tower.embeddings.class_embedding"] = (Dv,)
        shapes["vision_tower.pre_layrnorm.weight"] = (Dv,)  # (sic) the name Transformers uses
        shapes["vision_tower.pre_layrnorm.bias"] = (Dv,)
    else:  # SigLIP: the conv has a bias; the attention-pooling head (never used by llava) when the config has it
        shapes["vision_tower.embeddings.patch_embedding.bias"] = (Dv,)
        if v.vision_use_head:
            shapes["vision_tower.head.probe"] = (1, 1, Dv)
            shapes["vision_tower.head.attention.in_proj_weight"] = (3 * Dv, Dv)
            shapes["vision_tower.head.attention.in_proj_bias"] = (3 * Dv,)
            shapes["vision_tower.head.attention.out_proj.weight"] = (Dv, Dv)
            shapes["vision_tower.head.attention.out_proj.bias"] = (Dv,)
            shapes["vision_tower.head.layernorm.weight"] = (Dv,)
            shapes["vision_tower.head.layernorm.bias"] = (Dv,)
            shapes["vision_tower.head.mlp.fc1.weight"] = (Fv, Dv)
            shapes["vision_tower.head.mlp.fc1.bias"] = (Fv,)
            shapes["vision_tower.head.mlp.fc2.weight"] = (Dv, Fv)
            shapes["vision_tower.head.mlp.fc2.bias"] = (Dv,)
    for i in range(v.num_hidden_layers):
        p = f"vision_tower.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{name}.weight"] = (Dv, Dv)
            shapes[p + f"self_attn.{name}.bias"] = (Dv,)
        for name in ("layer_norm1", "layer_norm2"):
            shapes[p + f"{name}.weight"] = (Dv,)
            shapes[p + f"{name}.bias"] = (Dv,)
        shapes[p + "mlp.fc1.weight"] = (Fv, Dv)
        shapes[p + "mlp.fc1.bias"] = (Fv,)
        shapes[p + "mlp.fc2.weight"] = (Dv, Fv)
        shapes[p + "mlp.fc2.bias"] = (Dv,)

    # The projector reads the selected vision layers concatenated on the feature axis.
    shapes["multi_modal_projector.linear_1.weight"] = (D, Dv * L)
    shapes["multi_modal_projector.linear_2.weight"] = (D, D)
    if config.multimodal_projector_bias:
        shapes["multi_modal_projector.linear_1.bias"] = (D,)
        shapes["multi_modal_projector.linear_2.bias"] = (D,)

    shapes["language_model.embed_tokens.weight"] = (V, D)
    for i in range(t.num_hidden_layers):
        p = f"language_model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (D,)
        shapes[p + "post_attention_layernorm.weight"] = (D,)
        attn = {"q_proj": (H * hd, D), "k_proj": (KV * hd, D), "v_proj": (KV * hd, D), "o_proj": (D, H * hd)}
        for name, shape in attn.items():
            shapes[p + f"self_attn.{name}.weight"] = shape
            if t.attention_bias or (t.qkv_bias and name != "o_proj"):
                shapes[p + f"self_attn.{name}.bias"] = shape[:1]
        mlp = {"gate_proj": (F, D), "up_proj": (F, D), "down_proj": (D, F)}
        for name, shape in mlp.items():
            shapes[p + f"mlp.{name}.weight"] = shape
            if t.mlp_bias:
                shapes[p + f"mlp.{name}.bias"] = shape[:1]
    shapes["language_model.norm.weight"] = (D,)
    shapes["lm_head.weight"] = (V, D)
    return shapes


def check_params(params: Mapping, config) -> None:
    """Check that ``params`` holds exactly the tensors ``config`` asks for, each of the right shape.

    ``params`` may be the nested dict ``load_weights`` returns or a flat {dotted key: array} dict.
    Raises one ValueError listing every missing, misshapen and unexpected tensor.
    """
    _check_shapes({key: tuple(a.shape) for key, a in flatten(params).items()}, config)


def _check_shapes(shapes: dict[str, tuple], config, sources: dict[str, str] | None = None) -> None:
    """``check_params`` on shapes alone; ``sources`` (canonical key -> "key in file") names origins."""
    sources = sources or {}

    def origin(key):
        return f" (from {sources[key]})" if key in sources else ""

    expected = expected_shapes(config)
    problems = []
    for key, shape in expected.items():
        if key not in shapes:
            problems.append(f"missing tensor {key!r}, expected shape {shape}")
        elif tuple(shapes[key]) != shape:
            problems.append(f"tensor {key!r}{origin(key)} has shape {tuple(shapes[key])}, expected {shape}")
    for key in shapes:
        if key not in expected:
            problems.append(
                f"unexpected tensor {key!r}{origin(key)}: the config has no such weight "
                "(check attention_bias, mlp_bias, multimodal_projector_bias and the layer counts)"
            )
    if problems:  # the count and the first on the first line (what a command line shows), then the others
        others = problems[1:21] + ([f"... and {len(problems) - 21} more"] if len(problems) > 21 else [])
        raise ValueError(
            f"checkpoint does not match the config: {len(problems)} problem(s), the first: {problems[0]}"
            + "".join(f"\n  {line}" for line in others)
        )


# --------------------------------------------------------------------------------------------------
# Nesting
# --------------------------------------------------------------------------------------------------


def unflatten(flat: Mapping[str, object]) -> dict:
    """{"a.layers.3.b.weight": x} -> {"a": {"layers": [..., {"b": {"weight": x}}]}}.

    A level whose names are all integers (``layers.0``, ``layers.1``, ...) becomes a Python list; its
    indices must run 0..n-1 without gaps.
    """
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {key!r}: {'.'.join(parents[: i + 1])!r} is both a tensor and a module")
        if leaf in node:
            raise ValueError(f"key {key!r}: a module of that name exists already")
        node[leaf] = value
    return _lists_from_int_keys(tree, "")


def _lists_from_int_keys(node, path: str):
    if not isinstance(node, dict):
        return node
    children = {k: _lists_from_int_keys(v, f"{path}{k}.") for k, v in node.items()}
    if children and all(k.isdigit() for k in children):
        indices = sorted(int(k) for k in children)
        if indices != list(range(len(indices))):
            missing = sorted(set(range(indices[-1] + 1)) - set(indices))
            raise ValueError(f"{path}* has numbered entries {indices}: missing {missing}")
        return [children[str(i)] for i in indices]
    return children


def flatten(params: Mapping, prefix: str = "") -> dict[str, object]:
    """The inverse of ``unflatten``: nested dicts and lists -> {dotted key: array}."""
    flat = {}
    items = enumerate(params) if isinstance(params, list) else params.items()
    for name, value in items:
        key = f"{prefix}{name}"
        if isinstance(value, (Mapping, list)):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


# --------------------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------------------


def _checkpoint_files(folder: str) -> dict[str, list[str] | None]:
    """{safetensors path: the tensor names to read from it, or None for all of them}.

    A folder with ``model.safetensors`` is read from that file (Transformers prefers it too); otherwise
    the index's ``weight_map`` {tensor name: shard file} says which shards to read and what each holds.
    A path to a ``.safetensors`` file is read directly.
    """
    if os.path.isfile(folder) and folder.endswith(".safetensors"):
        return {folder: None}
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder {folder!r} does not exist")
    single = os.path.join(folder, SINGLE_FILE)
    if os.path.isfile(single):
        return {single: None}
    index_path = os.path.join(folder, INDEX_FILE)
    if not os.path.isfile(index_path):
        raise FileNotFoundError(f"checkpoint folder {folder!r} has neither {SINGLE_FILE} nor {INDEX_FILE}")

    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ValueError(f"{index_path}: needs a 'weight_map' object of tensor name -> shard file name")

    files: dict[str, list[str]] = {}
    root = os.path.realpath(folder)
    for name, shard in weight_map.items():
        path = os.path.join(folder, shard)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:  # an absolute path, or one with ../
            raise ValueError(f"{index_path}: weight_map names the shard {shard!r} for {name!r}, outside the folder")
        files.setdefault(path, []).append(name)
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"shard {path!r} named in {index_path} does not exist")
    return files


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------


def read_headers(folder) -> tuple[dict, dict]:
    """The headers of a checkpoint's safetensors files and where each canonical tensor is, nothing else read:
    ({path: (tensor infos, data start)}, {canonical key: (path, checkpoint key)}). Every name is checked: a key of
    no known layout, a tensor the index names but the shard lacks, a non-float tensor, two layouts mixed."""
    folder = os.fspath(folder)
    headers = {}  # path -> (tensor infos, data start)
    plan = {}  # canonical key -> (path, checkpoint key)
    for path, names in _checkpoint_files(folder).items():
        tensors, data_start = read_header(path)
        _refuse_prequantized(path, tensors)
        headers[path] = (tensors, data_start)
        if names is None:
            names = list(tensors)
        for name in names:
            if name not in tensors:
                raise ValueError(f"{path}: has no tensor {name!r}, which {INDEX_FILE} says it holds")
            try:
                key = canonical_key(name)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            if key is None:
                continue
            if tensors[name]["dtype"] not in FLOAT_DTYPES:
                found = tensors[name]["dtype"]
                raise ValueError(
                    f"{path}: tensor {name!r} has dtype {found}, expected a float type (a checkpoint saved quantized? "
                    "minillava reads float weights and quantizes them itself, with quantize='int8', 'int4' or 'nf4')"
                )
            if key in plan:
                other_path, other = plan[key]
                raise ValueError(
                    f"{path}: tensor {name!r} and {other!r} (in {other_path}) both map to {key!r}: "
                    "the checkpoint mixes key layouts"
                )
            plan[key] = (path, name)

    return headers, plan


def _refuse_prequantized(path: str, tensors: dict) -> None:
    """One clear error for a checkpoint saved already quantized (bitsandbytes, GPTQ, AWQ): minillava reads float
    weights and quantizes them itself, and does not read those formats' integers and their bookkeeping."""
    for name in tensors:
        for endings, fmt in _PREQUANTIZED:
            if name.endswith(endings):
                raise ValueError(
                    f"{path}: this checkpoint is already quantized, in the {fmt} format (tensor {name!r}): minillava "
                    "does not read that format. It reads float32, float16 or bfloat16 safetensors and quantizes them "
                    "itself: load the original checkpoint with quantize='int8', 'int4' or 'nf4'"
                )


def file_dtypes(folder) -> dict[str, str]:
    """{canonical key: the tensor's safetensors dtype ("F16", "BF16", ...)}, read from the headers alone."""
    headers, plan = read_headers(folder)
    return {key: headers[path][0][name]["dtype"] for key, (path, name) in plan.items()}


def _read_tensor(path: str, data_start: int, info: dict) -> np.ndarray:
    """One tensor copied into memory with a plain read of its bytes (bfloat16 decoded to float32), for a weight that
    is quantized and then dropped. Not through the memory map: pages read through a map stay counted in the
    process's resident memory as long as the file is mapped, so quantizing a 7B's 13 GB of float16 that way would
    look like 13 GB more in use (the kernel may drop those pages, but the figure and the squeeze are real)."""
    raw = np.fromfile(
        path, dtype=SAFETENSORS_DTYPES[info["dtype"]], count=math.prod(info["shape"]), offset=data_start + info["begin"]
    ).reshape(info["shape"])
    return bfloat16_to_float32(raw) if info["dtype"] == "BF16" else raw


class NonFiniteWeightsWarning(UserWarning):
    """A checkpoint's weights hold NaN or infinite values (``load_weights(..., strict=True)`` makes it an error)."""


def _holds_non_finite(weight) -> bool:
    """True when a weight holds a NaN or an infinity. A quantized weight's scales tell: each is the largest
    magnitude of its group (divided by a constant), and a NaN or inf in the group makes that maximum NaN or inf."""
    values = weight.scales if isinstance(weight, QuantizedWeight) else weight
    return not bool(np.isfinite(values).all())


def load_weights(folder, config=None, dtype="float32", progress=None, quantize=None, strict=False) -> dict:
    """Load a LLaVA checkpoint folder into a nested dict of arrays in the canonical layout.

    folder: a folder with ``model.safetensors`` or ``model.safetensors.index.json`` + shards
            (or the path of one ``.safetensors`` file).
    config: a minillava LlavaConfig. When given, a missing ``lm_head.weight`` with
            ``tie_word_embeddings`` becomes the embed_tokens array itself, and every tensor is checked
            against ``expected_shapes(config)`` before any data is read.
    dtype:  "float32" or "float16": every tensor cast to that dtype, in memory (float32 is what the
            CPU path computes in).
            None: float16/float32 tensors stay as they are in the file, as read-only np.memmap views,
            so opening a 14 GB checkpoint reads nothing until a weight is used; bfloat16 tensors, which
            NumPy cannot hold, are decoded to float32 in memory.

    progress: None, or a callable ``progress(bytes_done, bytes_total)`` called as tensors are read.
    quantize: None, or "int8", "int4" or "nf4": the language model's linear weights (``is_quantized``) become
            QuantizedWeights (model/quantize.py), each quantized as it is read, from the file's dtype, one matrix
            at a time: a float16 7B never exists in float32. ``dtype`` applies to the other tensors.
    strict: NaN or infinite values in a weight (a damaged file, a diverged training run) make every answer NaN.
            Every tensor read into memory (cast, decoded, quantized) is checked for them as it is read, and
            ``NonFiniteWeightsWarning`` names the first such tensor; with strict=True that is a ValueError, and
            the memory-mapped tensors, which are otherwise not read at load time, are scanned too (it reads
            the whole checkpoint once).

    Returns e.g. ``params["vision_tower"]["encoder"]["layers"][0]["mlp"]["fc1"]["weight"]`` [Fv, Dv] and
    ``params["language_model"]["layers"][3]["self_attn"]["q_proj"]["weight"]`` [H*hd, D].
    Raises FileNotFoundError for missing files and ValueError for corrupt files, unknown keys or a
    checkpoint that does not match the config; never returns a partial result.
    """
    folder = os.fspath(folder)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"dtype must be 'float32', 'float16' or None, got {dtype}")
    if quantize is not None and quantize not in QUANTIZE_FORMATS:
        raise ValueError(f"quantize must be None or one of {QUANTIZE_FORMATS}, got {quantize!r}")

    # 1. Every header, every name checked before any tensor data is touched.
    headers, plan = read_headers(folder)

    embed, head = "language_model.embed_tokens.weight", "lm_head.weight"
    stored, missing = None, None  # with tied embeddings, the one copy the file holds and the name it lacks
    if config is not None:
        shapes = {key: headers[path][0][name]["shape"] for key, (path, name) in plan.items()}
        # Tied embeddings: the file holds one of embed_tokens and lm_head (usually embed_tokens) and the model
        # uses it as both. When a file has both, Transformers keeps both as they are, and so do we.
        if config.tie_word_embeddings and (embed in plan) != (head in plan):
            stored, missing = (embed, head) if embed in plan else (head, embed)
            shapes[missing] = shapes[stored]
        _check_shapes(shapes, config, {key: f"{name!r} in {path}" for key, (path, name) in plan.items()})

    # 2. The data: mapped views, or cast copies.
    used = {path for path, _ in plan.values()}
    buffers = {path: map_buffer(path, headers[path][1]) for path in used}
    sizes = {key: headers[path][0][name]["end"] - headers[path][0][name]["begin"] for key, (path, name) in plan.items()}
    total, done = sum(sizes.values()), 0
    flat = {}
    non_finite = []  # "'name' in path" of each tensor holding NaN or inf
    for key, (path, name) in plan.items():
        info = headers[path][0][name]
        if quantize is not None and is_quantized(key):  # one matrix read in the file's dtype, quantized, let go
            with np.errstate(invalid="ignore", over="ignore"):  # NaN or inf in it: reported below, by name
                flat[key] = quantize_weight(_read_tensor(path, headers[path][1], info), quantize)
        else:
            flat[key] = tensor(buffers[path], info, dtype)
        at_rest = dtype is None and info["dtype"] != "BF16" and not isinstance(flat[key], QuantizedWeight)
        if (strict or not at_rest) and _holds_non_finite(flat[key]):
            non_finite.append(f"{name!r} in {path}")
        if progress is not None:
            done += sizes[key]
            progress(done, total)
    if non_finite:
        message = (
            f"{len(non_finite)} weight tensor(s) hold NaN or infinite values, the first {non_finite[0]}: the "
            "checkpoint is damaged (or was saved from a diverged training run), and every answer would be NaN"
        )
        if strict:
            raise ValueError(message)
        warnings.warn(message, NonFiniteWeightsWarning, stacklevel=2)
    if stored is not None:
        flat[missing] = flat[stored]  # the same array, not a copy
    return unflatten(flat)
