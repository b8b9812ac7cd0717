"""A checkpoint folder -> a model (minillava.loading.checkpoint): what a user types becomes a folder
(find_checkpoint: a folder, a hub id, nothing for the bundled demo), and load_model reads generation_config.json.
Bad arguments and broken folders given to load_model: one clear error (the files' own checks: test_config.py,
test_weights.py, test_safetensors.py)."""

import json
import shutil
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minillava
from minillava.demo import demo_folder
from minillava.loading.checkpoint import find_checkpoint


def test_a_folder_or_nothing(tmp_path):
    assert find_checkpoint(None) == demo_folder()
    (tmp_path / "config.json").write_text("{}")
    assert find_checkpoint(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="not a folder"):
        find_checkpoint(str(tmp_path / "config.json"))
    with pytest.raises(FileNotFoundError, match="no config.json there"):
        find_checkpoint(str(tmp_path.parent))
    for name in ("no-such-folder", "./owner/name", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="^no such folder$"):
            find_checkpoint(name)


def test_a_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(FileNotFoundError, match="pip install huggingface_hub.*--local-dir llava-1.5-7b-hf"):
        find_checkpoint("llava-hf/llava-1.5-7b-hf")
    monkeypatch.undo()
    hub = pytest.importorskip("huggingface_hub")  # the download call, with snapshot_download replaced
    calls = []

    def download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", download)
    assert find_checkpoint("llava-hf/llava-1.5-7b-hf") == tmp_path
    assert calls == [("llava-hf/llava-1.5-7b-hf", ["*.json", "*.jinja", "*.safetensors", "*.model"])]
    assert "downloading llava-hf/llava-1.5-7b-hf" in capsys.readouterr().err

    def offline(repo_id, allow_patterns):
        raise OSError("network unreachable")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="^download failed: network unreachable$"):
        find_checkpoint("llava-hf/llava-1.5-7b-hf")


def test_generation_defaults_come_from_generation_config(tiny_checkpoint, tmp_path):
    folder = shutil.copytree(tiny_checkpoint("chat", "hub", "float16", True), tmp_path / "ckpt")
    defaults = minillava.load_model(folder).generation_defaults
    assert (defaults.eos_token_id, defaults.pad_token_id, defaults.bos_token_id) == ((2,), 381, 1)
    settings = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**settings, "eos_token_id": [2, 7], "pad_token_id": 0}))
    defaults = minillava.load_model(folder).generation_defaults
    assert (defaults.eos_token_id, defaults.pad_token_id) == ((2, 7), 0)
    (folder / "generation_config.json").unlink()  # then config.json's ids
    defaults = minillava.load_model(folder).generation_defaults
    config = minillava.load_config(folder)
    assert defaults.pad_token_id == config.pad_token_id == 381


@pytest.mark.parametrize(
    ("model_type", "family"),
    [("llava_next", "LLaVA-NeXT"), ("llava_onevision", "LLaVA-OneVision"), ("llava_next_video", "LLaVA-NeXT-Video"),
     ("video_llava", "Video-LLaVA"), ("mllama", "Llama 3.2 Vision")],
)  # fmt: skip
def test_other_families_are_refused_before_any_weight_is_read(tmp_path, capsys, model_type, family):
    """A folder of another LLaVA family gets one error naming it and what minillava supports, from config.json
    alone: its weights (here a file that is not safetensors at all) are never opened, by the library or the CLI."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError) as error:
        minillava.load_model(tmp_path)
    message = str(error.value)
    assert model_type in message and family in message and "minillava supports model_type 'llava'" in message
    assert "safetensors" not in message
    from minillava import cli

    assert cli.main(["--model", str(tmp_path), "--image", str(demo_folder() / "samples" / "0_colour.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and family in err and "minillava supports model_type 'llava'" in err


# ---------------------------------------------------------------------------------------------------------------
# Bad arguments and broken folders
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tiny_checkpoint, tmp_path):
    """A private copy of the tiny single-file float32 checkpoint, free to break."""
    return shutil.copytree(tiny_checkpoint("chat", "hub", "float32", False), tmp_path / "ckpt")


def test_a_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        minillava.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder: .*nowhere"):
        minillava.load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("file", ["config.json", "model.safetensors"])
def test_the_path_of_a_file_in_the_folder_names_the_folder(folder, file):
    with pytest.raises(ValueError, match=f"{file} is a file; load_model takes the checkpoint folder .* e.g. {folder}$"):
        minillava.load_model(folder / file)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(device="tpu"), "device"), (dict(dtype="bfloat16"), "dtype must be one of"),
     (dict(quantize="int3"), "quantize must be None or one of"), (dict(strict="yes"), "strict must be True or False"),
     (dict(strict=1), "strict must be True or False, got 1"), (dict(low_memory=0), "low_memory must be None .*got 0"),
     (dict(low_memory="auto"), "low_memory must be"), (dict(threads=0), "threads must be")],
)  # fmt: skip
def test_bad_arguments(folder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        minillava.load_model(folder, **kwargs)


def test_cuda_without_cupy_or_gpu_is_one_clear_error(folder):
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here; this checks the message when it is not")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="CuPy"):
        minillava.load_model(folder, device="cuda")


def test_a_config_of_2_to_the_70_layers_is_refused_before_anything_is_built(folder):
    """A size in config.json decides how much the loader builds: it is bounded before anything is (this used to
    loop until the memory ran out)."""
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 2**70
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=f"text_config.num_hidden_layers` must be an int between 1 and 1024, got {2**70}"
    ):
        minillava.load_model(folder)


@pytest.mark.parametrize(
    ("settings", "match"),
    [({"eos_token_id": "x"}, "`eos_token_id` must be an int, a list of ints or null, got 'x'"),
     ({"eos_token_id": [2, None]}, "`eos_token_id` must be an int, a list of ints or null, got \\[2, None\\]"),
     ({"pad_token_id": 1.5}, "`pad_token_id` must be an int or null, got 1.5"),
     ({"bos_token_id": [1]}, "`bos_token_id` must be an int or null, got \\[1\\]"),
     ({"eos_token_id": 2**40}, "`eos_token_id` must be an int")],
)  # fmt: skip
def test_bad_generation_config_values_name_the_file_and_field(folder, settings, match):
    (folder / "generation_config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=f"generation_config.json: {match}"):
        minillava.load_model(folder)


def test_non_finite_weights_warn_then_generation_refuses_their_nan_logits(folder):
    """NaN weights used to answer an empty string: the loader names the tensor, strict=True refuses it, and a model
    loaded anyway (or memory-mapped, which is not scanned) stops generation with one error instead of garbage."""
    weights = load_file(folder / "model.safetensors")
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    weights[key][1, 2] = np.nan
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(minillava.loading.weights.NonFiniteWeightsWarning, match=key):
        model = minillava.load_model(folder)
    with pytest.raises(ValueError, match=f"hold NaN or infinite values, the first '{key}'"):
        minillava.load_model(folder, strict=True)
    mapped = minillava.load_model(folder, low_memory=True)
    for loaded in (model, mapped):
        with pytest.raises(ValueError, match="logits at the prompt's last position are NaN or infinite"):
            loaded.generate(np.array([[1, 5, 6]]), max_new_tokens=3)


@pytest.mark.parametrize(
    ("keyword", "instead"),
    [("torch_dtype", "dtype='float32'"), ("device_map", "device='cpu' or 'cuda'"), ("load_in_4bit", "quantize='nf4'"),
     ("quantization_config", "quantize='int8', 'int4' or 'nf4'"), ("no_such_keyword", None)],
)  # fmt: skip
def test_from_pretrained_keywords_say_what_to_write(folder, keyword, instead):
    """A Transformers user's from_pretrained keywords: refused by name (before anything is read), with minillava's own
    way where there is one."""
    with pytest.raises(TypeError) as error:
        minillava.load_model(folder, **{keyword: "auto"})
    assert str(error.value).startswith(f"load_model() got an unexpected keyword argument {keyword!r}")
    assert (instead in str(error.value)) if instead else str(error.value).endswith(f"{keyword!r}")
