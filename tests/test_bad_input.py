"""Bad input to load_model and forward: one clear exception naming what is wrong, before any compute."""

import json
import shutil

import numpy as np
import pytest

import minillava


@pytest.fixture
def folder(tiny_checkpoint, tmp_path):
    """A private copy of the tiny sharded hub-layout checkpoint, free to break."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("base", "hub", "float16", True), copy)
    return copy


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False))


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        minillava.load_model(tmp_path)


def test_folder_without_weights(folder):
    for f in folder.glob("*.safetensors*"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        minillava.load_model(folder)


def test_unsupported_model_type(folder):
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llava_next"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type.*llava_next"):
        minillava.load_model(folder)


def test_missing_shard(folder):
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        minillava.load_model(folder)


def test_truncated_shard(folder):
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=shard.name):
        minillava.load_model(folder)


def test_tensor_shape_disagrees_with_config(folder):
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 80  # the checkpoint's MLP is 96 wide
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"mlp\.(gate|up|down)_proj\.weight"):
        minillava.load_model(folder)


def test_bad_device_and_dtype(tiny_checkpoint):
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    with pytest.raises(ValueError, match="device"):
        minillava.load_model(folder, device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        minillava.load_model(folder, dtype="bfloat16")


def test_cuda_without_cupy_or_gpu_is_one_clear_error(tiny_checkpoint):
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here; this checks the message when it is not")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="CuPy"):
        minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False), device="cuda")


def image_prompt(model, n_image_tokens):
    cfg = model.config
    return np.array([[1, 5] + [cfg.image_token_index] * n_image_tokens + [7, 8]])


def test_pixel_values_of_the_wrong_size(model):
    side = model.config.vision.image_size
    ids = image_prompt(model, model.config.num_image_tokens)
    for shape in [(1, 3, side + 14, side), (3, side, side), (1, 1, side, side)]:
        with pytest.raises(ValueError, match="pixel_values must have shape"):
            model.forward(ids, pixel_values=np.zeros(shape, np.float32))


@pytest.mark.parametrize("n_images,n_tokens", [(1, 15), (1, 17), (2, 16), (1, 32)])
def test_image_tokens_do_not_match_images(model, n_images, n_tokens):
    side = model.config.vision.image_size
    pixel_values = np.zeros((n_images, 3, side, side), np.float32)
    with pytest.raises(ValueError, match=f"{n_tokens} image tokens.*{n_images} image"):
        model.forward(image_prompt(model, n_tokens), pixel_values=pixel_values)


def test_image_tokens_without_pixel_values(model):
    with pytest.raises(ValueError, match="no pixel_values"):
        model.forward(image_prompt(model, 16))


def test_bad_input_ids(model):
    vocab = model.config.text.vocab_size
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 128\)"):
        model.forward(np.array([[1, vocab]]))
    with pytest.raises(ValueError, match=r"input_ids must be a non-empty integer array \[B, T\]"):
        model.forward(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="input_ids must be"):
        model.forward(np.array([[1.0, 2.0]]))


def test_bad_attention_mask_and_too_long_sequence(model):
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model.forward(np.array([[1, 2, 3]]), attention_mask=np.ones((1, 2)))
    too_long = np.ones((1, model.config.text.max_position_embeddings + 1), dtype=np.int64)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.forward(too_long)
    cache = model.new_cache(1, max_len=4)
    model.forward(np.array([[1, 2, 3, 4]]), cache=cache)
    with pytest.raises(ValueError, match="KV cache is full"):
        model.forward(np.array([[5]]), cache=cache)
