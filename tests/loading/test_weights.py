"""minillava.loading.weights against checkpoints that Transformers writes, and against hand-made broken files.

Tiny LlavaForConditionalGeneration models are built once per module; each is saved in every key layout
(Transformers' own save_pretrained, the hub's llava-hf names, the in-memory state_dict names), single-file
and sharded, in float32, float16 and bfloat16. The loaded canonical params must equal the model's
state_dict bit for bit after the same casts. (The safetensors reader itself: test_safetensors.py.)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from minillava.loading.config import load_config  # noqa: E402
from minillava.loading.weights import (  # noqa: E402
    NonFiniteWeightsWarning,
    canonical_key,
    check_params,
    expected_shapes,
    flatten,
    load_weights,
    unflatten,
)

from .weight_files import (  # noqa: E402
    F32_ONES,
    KEY,
    LAYOUTS,
    TEXT,
    TORCH_DTYPES,
    VISION,
    build_model,
    canonical_from_memory,
    raw_safetensors,
    save_layout,
    write_checkpoint,
)

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def model():
    return build_model()


@pytest.fixture(scope="module")
def checkpoints(model, tmp_path_factory):
    """(layout, sharded, file dtype) -> folder, for the module's model."""
    root = tmp_path_factory.mktemp("checkpoints")
    folders = {}
    for dtype_name, torch_dtype in TORCH_DTYPES.items():
        cast = copy.deepcopy(model).to(torch_dtype)
        for layout in LAYOUTS:
            for sharded in (False, True):
                folder = root / f"{layout}-{'sharded' if sharded else 'single'}-{dtype_name}"
                save_layout(cast, folder, layout, sharded)
                folders[layout, sharded, dtype_name] = folder
    return folders


@pytest.fixture(scope="module")
def config(checkpoints):
    return load_config(checkpoints["save_pretrained", False, "float32"])


# --------------------------------------------------------------------------------------------------
# Layouts x sharding x file dtype x load dtype
# --------------------------------------------------------------------------------------------------


def test_layouts_are_what_transformers_writes(checkpoints):
    """The save_pretrained layout of 5.x: no vision_model., language_model.model.*, sharded via an index."""
    with open(checkpoints["save_pretrained", True, "float32"] / "model.safetensors.index.json") as f:
        keys = set(json.load(f)["weight_map"])
    assert "vision_tower.embeddings.patch_embedding.weight" in keys
    assert "language_model.model.embed_tokens.weight" in keys
    assert "language_model.lm_head.weight" in keys
    assert "multi_modal_projector.linear_1.weight" in keys
    assert not any(k.startswith(("model.", "vision_tower.vision_model.")) for k in keys)


@pytest.mark.parametrize("load_dtype", ["float32", "float16", None])
@pytest.mark.parametrize("file_dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_params_equal_state_dict(model, checkpoints, config, layout, sharded, file_dtype, load_dtype):
    params = load_weights(checkpoints[layout, sharded, file_dtype], config, dtype=load_dtype)
    flat = flatten(params)
    state = model.state_dict()
    assert set(flat) == {canonical_from_memory(k) for k in state}

    # What the loaded arrays must be: the file's dtype, then the asked-for cast. Without a cast, float16
    # and float32 stay memory-mapped and bfloat16 is decoded to float32.
    stored = TORCH_DTYPES[file_dtype]
    target = {"float32": torch.float32, "float16": torch.float16}.get(load_dtype)
    if target is None:
        target = torch.float32 if stored is torch.bfloat16 else stored
    for key, tensor in state.items():
        got = flat[canonical_from_memory(key)]
        want = tensor.to(stored).to(target).numpy()
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert np.array_equal(got, want), key
        if load_dtype is None and stored is not torch.bfloat16:
            assert isinstance(got, np.memmap) and not got.flags.writeable, key
        else:  # cast or decoded: an in-memory array
            assert not isinstance(got, np.memmap), key
        if load_dtype is not None:  # cast: a copy that owns its data, never a view on the file
            assert got.flags.owndata and got.flags.writeable, key


def test_nested_layout(checkpoints, config):
    """The nested dict reads like the module tree; layers are lists."""
    params = load_weights(checkpoints["hub", False, "float32"], config)
    assert isinstance(params["language_model"]["layers"], list)
    assert len(params["language_model"]["layers"]) == 2
    assert len(params["vision_tower"]["encoder"]["layers"]) == 2
    q = params["language_model"]["layers"][1]["self_attn"]["q_proj"]["weight"]
    k = params["language_model"]["layers"][1]["self_attn"]["k_proj"]["weight"]
    assert q.shape == (32, 32) and k.shape == (16, 32)  # 4 heads, 2 key/value heads of 8
    assert params["vision_tower"]["embeddings"]["patch_embedding"]["weight"].shape == (32, 3, 14, 14)
    assert params["vision_tower"]["embeddings"]["position_embedding"]["weight"].shape == (5, 32)
    assert params["lm_head"]["weight"].shape == (100, 32)


def test_without_config_loads_everything_as_is(checkpoints):
    flat = flatten(load_weights(checkpoints["memory", True, "float16"], dtype=None))
    assert len(flat) == 64 and all(a.dtype == np.float16 for a in flat.values())


def test_biases_gqa_and_feature_layer_list(tmp_path):
    """attention_bias, mlp_bias, no projector bias, and two feature layers (linear_1 twice as wide)."""
    model = build_model(
        seed=1,
        text=dict(attention_bias=True, mlp_bias=True),
        multimodal_projector_bias=False,
        vision_feature_layer=[-2, -1],
    )
    model.save_pretrained(tmp_path)
    config = load_config(tmp_path)
    shapes = expected_shapes(config)
    state = model.state_dict()
    assert shapes == {canonical_from_memory(k): tuple(v.shape) for k, v in state.items()}
    assert shapes["multi_modal_projector.linear_1.weight"] == (32, 64)
    assert "multi_modal_projector.linear_1.bias" not in shapes
    assert shapes["language_model.layers.0.self_attn.k_proj.bias"] == (16,)
    assert shapes["language_model.layers.0.mlp.down_proj.bias"] == (32,)

    flat = flatten(load_weights(tmp_path, config))
    for key, tensor in state.items():
        assert np.array_equal(flat[canonical_from_memory(key)], tensor.numpy()), key

    # The same checkpoint with a config that expects no attention biases: the biases are unexpected.
    other = dataclasses.replace(config, text=dataclasses.replace(config.text, attention_bias=False))
    with pytest.raises(ValueError, match=r"unexpected tensor 'language_model.layers.0.self_attn.q_proj.bias'"):
        load_weights(tmp_path, other)


@pytest.mark.parametrize("use_head", [False, True])
def test_siglip_and_qwen2_shapes(tmp_path, use_head):
    """llava-interleave's towers: SigLIP (a conv with bias, no CLS, no pre-LayerNorm; its pooling head when the
    config has one) and Qwen2 (q/k/v biases, o_proj without, tied embeddings): exactly the tensors of
    Transformers' model, loaded equal."""
    vision = dict(VISION, model_type="siglip_vision_model", image_size=30, patch_size=7, vision_use_head=use_head)
    text = dict(TEXT, model_type="qwen2", tie_word_embeddings=True)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=99)
    torch.manual_seed(3)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_()
    model.save_pretrained(tmp_path)
    ours = load_config(tmp_path)
    shapes = expected_shapes(ours)
    state = {canonical_from_memory(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == state
    assert shapes["vision_tower.embeddings.patch_embedding.bias"] == (VISION["hidden_size"],)
    assert shapes["vision_tower.embeddings.position_embedding.weight"] == (16, VISION["hidden_size"])  # 4 x 4, no CLS
    assert "vision_tower.embeddings.class_embedding" not in shapes and "vision_tower.pre_layrnorm.weight" not in shapes
    assert ("vision_tower.head.probe" in shapes) == use_head
    assert "language_model.layers.0.self_attn.q_proj.bias" in shapes
    assert "language_model.layers.0.self_attn.o_proj.bias" not in shapes
    flat = flatten(load_weights(tmp_path, ours))  # tied: lm_head is embed_tokens, as in the model
    assert flat["lm_head.weight"] is flat["language_model.embed_tokens.weight"]
    for key, tensor in model.state_dict().items():
        assert np.array_equal(flat[canonical_from_memory(key)], tensor.numpy()), key


def test_expected_shapes_llava_7b():
    """The published llava-1.5-7b-hf config gives its 7,063,427,072 parameters."""
    shapes = expected_shapes(load_config(DATA / "llava-1.5-7b-hf"))
    assert sum(int(np.prod(s)) for s in shapes.values()) == 7_063_427_072
    assert shapes["vision_tower.embeddings.position_embedding.weight"] == (577, 1024)
    assert shapes["multi_modal_projector.linear_1.weight"] == (4096, 1024)
    assert shapes["lm_head.weight"] == (32064, 4096)


# --------------------------------------------------------------------------------------------------
# Keys and nesting
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, canonical",
    [
        ("language_model.model.layers.3.mlp.up_proj.weight", "language_model.layers.3.mlp.up_proj.weight"),
        ("language_model.lm_head.weight", "lm_head.weight"),
        (
            "vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias",
            "vision_tower.encoder.layers.0.mlp.fc1.bias",
        ),
        ("vision_tower.pre_layrnorm.weight", "vision_tower.pre_layrnorm.weight"),
        ("multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.weight"),
        ("model.language_model.norm.weight", "language_model.norm.weight"),
        ("model.vision_tower.embeddings.class_embedding", "vision_tower.embeddings.class_embedding"),
        ("model.vision_tower.vision_model.post_layernorm.bias", "vision_tower.post_layernorm.bias"),
        ("model.multi_modal_projector.linear_1.bias", "multi_modal_projector.linear_1.bias"),
        ("lm_head.weight", "lm_head.weight"),
        ("language_model.embed_tokens.weight", "language_model.embed_tokens.weight"),
        ("vision_tower.vision_model.embeddings.position_ids", None),
        ("language_model.model.layers.0.self_attn.rotary_emb.inv_freq", None),
    ],
)
def test_canonical_key(key, canonical):
    assert canonical_key(key) == canonical


@pytest.mark.parametrize("key", ["image_newline", "model.image_newline", "text_model.embeddings.weight"])
def test_canonical_key_rejects_unknown(key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        canonical_key(key)


def test_unflatten_and_flatten():
    a, b, c = np.zeros(1), np.ones(2), np.full(3, 2.0)
    tree = unflatten({"m.layers.1.w": b, "m.layers.0.w": a, "m.norm": c})
    assert tree["m"]["layers"][0]["w"] is a and tree["m"]["layers"][1]["w"] is b and tree["m"]["norm"] is c
    assert flatten(tree) == {"m.layers.0.w": a, "m.layers.1.w": b, "m.norm": c}
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        unflatten({"m.layers.0.w": a, "m.layers.2.w": b})
    with pytest.raises(ValueError, match="both a tensor and a module"):
        unflatten({"m.w": a, "m.w.x": b})


def test_check_params_accepts_nested_and_flat(checkpoints, config):
    params = load_weights(checkpoints["memory", False, "float32"], config)
    check_params(params, config)
    flat = flatten(params)
    check_params(flat, config)
    flat["language_model.norm.weight"] = np.zeros(31, np.float32)
    with pytest.raises(ValueError, match=r"'language_model.norm.weight' has shape \(31,\), expected \(32,\)"):
        check_params(flat, config)


# --------------------------------------------------------------------------------------------------
# Tied embeddings
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tied_folder(tmp_path_factory):
    model = build_model(seed=2, text=dict(tie_word_embeddings=True), tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tied")
    model.save_pretrained(folder)
    return folder


def test_tied_embeddings(tied_folder):
    with open(tied_folder / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert not any("lm_head" in k for k in header)  # Transformers leaves the tied copy out

    config = load_config(tied_folder)
    assert config.tie_word_embeddings
    params = load_weights(tied_folder, config)
    assert params["lm_head"]["weight"] is params["language_model"]["embed_tokens"]["weight"]
    mapped = load_weights(tied_folder, config, dtype=None)
    assert mapped["lm_head"]["weight"] is mapped["language_model"]["embed_tokens"]["weight"]

    assert "lm_head" not in load_weights(tied_folder)  # without a config nothing is resolved
    untied = dataclasses.replace(config, tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"missing tensor 'lm_head.weight', expected shape \(100, 32\)"):
        load_weights(tied_folder, untied)


def test_tied_copy_stored_as_lm_head(tied_folder, tmp_path):
    """A tied checkpoint whose one copy is stored under lm_head's name instead of embed_tokens' (which
    llava-interleave's is, is not known): both names get it, as in Transformers."""
    folder = tmp_path / "as_head"
    shutil.copytree(tied_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    stored = [k for k in tensors if k.endswith("embed_tokens.weight")]
    assert len(stored) == 1
    tensors["language_model.lm_head.weight"] = weight = tensors.pop(stored[0])
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    params = load_weights(folder, load_config(folder))
    assert params["lm_head"]["weight"] is params["language_model"]["embed_tokens"]["weight"]
    assert np.array_equal(params["lm_head"]["weight"], weight.numpy())
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    assert np.array_equal(hf.model.language_model.embed_tokens.weight.detach().numpy(), weight.numpy())


def test_tied_config_with_its_own_lm_head(tied_folder, tmp_path):
    """Tied config but the file has a different lm_head: Transformers keeps the file's, so do we."""
    folder = tmp_path / "both"
    shutil.copytree(tied_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    torch.manual_seed(3)
    tensors["language_model.lm_head.weight"] = torch.randn(100, 32)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    params = load_weights(folder, load_config(folder))
    assert np.array_equal(params["lm_head"]["weight"], tensors["language_model.lm_head.weight"].numpy())
    assert not np.array_equal(params["lm_head"]["weight"], params["language_model"]["embed_tokens"]["weight"])


# --------------------------------------------------------------------------------------------------
# Bad input: one clear exception naming what is wrong
# --------------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        load_weights(tmp_path / "nowhere")


def test_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_weights(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "model.safetensors" in str(err.value) and "model.safetensors.index.json" in str(err.value)


def copy_of(checkpoints, tmp_path, *key):
    folder = tmp_path / "copy"
    shutil.copytree(checkpoints[key], folder)
    return folder


def test_index_not_json(checkpoints, tmp_path):
    folder = copy_of(checkpoints, tmp_path, "memory", True, "float32")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {')
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: not valid JSON"):
        load_weights(folder)


def test_index_without_weight_map(checkpoints, tmp_path):
    folder = copy_of(checkpoints, tmp_path, "memory", True, "float32")
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: needs a 'weight_map'"):
        load_weights(folder)


@pytest.mark.parametrize("outside", ["../elsewhere.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_shards_outside_the_folder_are_refused(checkpoints, tmp_path, outside):
    """The index names files for the loader to open: none may lie outside the checkpoint folder."""
    folder = copy_of(checkpoints, tmp_path, "memory", True, "float32")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = outside
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"weight_map names the shard '{re.escape(outside)}' .* outside the folder"):
        load_weights(folder)


def test_missing_shard(checkpoints, tmp_path):
    folder = copy_of(checkpoints, tmp_path, "save_pretrained", True, "float16")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_weights(folder)
    assert shard.name in str(err.value) and "model.safetensors.index.json" in str(err.value)


def test_shard_without_the_tensor_the_index_names(checkpoints, tmp_path):
    folder = copy_of(checkpoints, tmp_path, "memory", True, "float32")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = "model.language_model.norm.weight"
    wrong = next(s for s in set(index["weight_map"].values()) if s != index["weight_map"][key])
    index["weight_map"][key] = wrong
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"{wrong}: has no tensor '{key}'"):
        load_weights(folder)


def test_integer_weight(tmp_path):
    raw_safetensors(tmp_path / "model.safetensors", {KEY: ("I32", (4,), bytes(16))})
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor '{KEY}' has dtype I32"):
        load_weights(tmp_path)


def test_unknown_key(tmp_path):
    raw_safetensors(tmp_path / "model.safetensors", {KEY: F32_ONES, "image_newline": F32_ONES})
    with pytest.raises(ValueError, match=r"model\.safetensors: checkpoint key 'image_newline' is not part"):
        load_weights(tmp_path)


def test_two_layouts_in_one_file(tmp_path):
    raw_safetensors(tmp_path / "model.safetensors", {KEY: F32_ONES, "model." + KEY: F32_ONES})
    with pytest.raises(ValueError, match=f"both map to '{KEY}'"):
        load_weights(tmp_path)


def hub_copy_with(checkpoints, folder, edit):
    """The float32 hub-layout checkpoint, its tensors changed by `edit(dict)`, written to `folder`."""
    source = checkpoints["hub", False, "float32"]
    tensors = load_file(source / "model.safetensors")
    edit(tensors)
    write_checkpoint(folder, tensors, transformers.LlavaConfig.from_pretrained(source))
    return folder


def test_missing_tensor(checkpoints, config, tmp_path):
    key = "language_model.model.layers.1.mlp.down_proj.weight"
    folder = hub_copy_with(checkpoints, tmp_path / "missing", lambda tensors: tensors.pop(key))
    expected = r"missing tensor 'language_model.layers.1.mlp.down_proj.weight', expected shape \(32, 48\)"
    with pytest.raises(ValueError, match=expected):
        load_weights(folder, config)


def test_wrong_shape(checkpoints, config, tmp_path):
    key = "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    folder = hub_copy_with(checkpoints, tmp_path / "shape", lambda t: t.update({key: torch.zeros(64, 31)}))
    with pytest.raises(ValueError) as err:
        load_weights(folder, config)
    message = str(err.value)
    assert "'vision_tower.encoder.layers.0.mlp.fc1.weight'" in message and key in message
    assert "model.safetensors" in message and "(64, 31)" in message and "expected (64, 32)" in message


def test_many_mismatches_say_the_count_and_the_first_on_one_line(checkpoints, config, tmp_path):
    """A config of another width mismatches dozens of tensors: the first line has the count and the first (what
    the command line shows), the following lines the others."""
    folder = hub_copy_with(checkpoints, tmp_path / "wide", lambda tensors: None)
    wide = dataclasses.replace(config, text=dataclasses.replace(config.text, intermediate_size=64))
    with pytest.raises(ValueError) as err:
        load_weights(folder, wide)
    first, *others = str(err.value).splitlines()
    assert re.fullmatch(
        r"checkpoint does not match the config: 6 problem\(s\), the first: tensor .* expected .*", first
    )
    assert len(others) == 5 and all(line.startswith("  tensor 'language_model.layers.") for line in others)


# --------------------------------------------------------------------------------------------------
# Weights holding NaN or inf: a warning naming the tensor, an error with strict=True
# --------------------------------------------------------------------------------------------------

NAN_KEY = "language_model.model.layers.1.mlp.up_proj.weight"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    ("file_dtype", "load_dtype", "quantize"),
    [("float32", "float32", None), ("float16", "float32", None), ("bfloat16", None, None),
     ("float16", "float16", None), ("float16", None, "int8"), ("float32", "float32", "nf4")],
)  # fmt: skip
def test_non_finite_weights_read_into_memory_are_named(checkpoints, config, tmp_path, bad, file_dtype, load_dtype,
                                                       quantize):  # fmt: skip
    """Every tensor that is read at load time (cast, bfloat16 decoded, quantized) is checked as it is read."""
    source = checkpoints["hub", False, file_dtype]
    tensors = load_file(source / "model.safetensors")
    tensors[NAN_KEY] = tensors[NAN_KEY].clone()
    tensors[NAN_KEY][3, 5] = bad
    folder = tmp_path / "bad"
    write_checkpoint(folder, tensors, transformers.LlavaConfig.from_pretrained(source))
    with pytest.warns(NonFiniteWeightsWarning, match=rf"1 weight tensor\(s\) hold NaN or infinite values, the first "
                      rf"'{NAN_KEY}' in .*model.safetensors"):  # fmt: skip
        load_weights(folder, config, dtype=load_dtype, quantize=quantize)
    with pytest.raises(ValueError, match=f"the first '{NAN_KEY}'"):
        load_weights(folder, config, dtype=load_dtype, quantize=quantize, strict=True)


def test_memory_mapped_weights_are_scanned_only_when_strict(checkpoints, config, tmp_path, recwarn):
    """A memory-mapped weight is not read at load time (a 14 GB checkpoint opens in a second): scanning it is
    strict=True's choice. (Generation then refuses the NaN logits: test_generate.py.)"""
    source = checkpoints["hub", False, "float16"]
    tensors = load_file(source / "model.safetensors")
    tensors[NAN_KEY] = tensors[NAN_KEY].clone()
    tensors[NAN_KEY][0, 0] = float("nan")
    folder = tmp_path / "bad"
    write_checkpoint(folder, tensors, transformers.LlavaConfig.from_pretrained(source))
    params = load_weights(folder, config, dtype=None)
    assert isinstance(params["language_model"]["layers"][1]["mlp"]["up_proj"]["weight"], np.memmap)
    assert not [w for w in recwarn if issubclass(w.category, NonFiniteWeightsWarning)]
    with pytest.raises(ValueError, match=NAN_KEY):
        load_weights(folder, config, dtype=None, strict=True)


def test_bad_dtype_argument(checkpoints):
    with pytest.raises(ValueError, match="dtype must be"):
        load_weights(checkpoints["memory", False, "float32"], dtype="int8")
