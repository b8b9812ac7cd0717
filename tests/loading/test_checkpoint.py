"""A checkpoint folder -> a model (minillava.loading.checkpoint): what a user types becomes a folder
(find_checkpoint: a folder, a hub id, nothing for the bundled demo), and load_model reads generation_config.json.
Broken folders given to load_model: tests/test_bad_input.py."""

import json
import shutil
import sys

import pytest

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
