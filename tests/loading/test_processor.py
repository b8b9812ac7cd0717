"""minillava.loading.processor against Transformers' LlavaProcessor on tiny folders written by Transformers
(tests/fixtures/tiny_tokenizer.py): token ids, attention masks, pixel values, decoding and streamed text, the
file forms of older checkpoints, and bad input. The chat template: test_chat_template.py."""

import json
import shutil

import numpy as np
import pytest

from minillava.loading.processor import load_processor, stream_text

from ..fixtures import tiny_tokenizer as tiny
from .processor_folders import assert_same_inputs, small_images

TEXTS = [
    "USER: <image>\nWhat is shown in the image? ASSISTANT:",
    "What color is the ball?",
    "  leading and trailing spaces  ",
    " one leading space",
    "trailing newline\n",
    "line one\nline two\n\n\ttabbed",
    "café, naïve, 日本 and 東京",
    "emoji 🎈😀🌸 and Ångström, Zürich, ½",
    "<image>What is this?",
    "word<image>word",
    "<image> <image>\nTwo images: compare them.",
    "special tokens in text: </s> and <s>x<pad> <unk>",
    "UPPER CASE BYTES: QXJ",
    "",
    "a",
]

N_IMAGES = [text.count("<image>") for text in TEXTS]


@pytest.fixture(scope="module")
def hf():
    """hf(folder, **kwargs) -> Transformers' LlavaProcessor.from_pretrained(folder, **kwargs), PIL backend."""
    return tiny.reference_processor


# ---------------------------------------------------------------------------------------------------------------
# Token ids, attention masks, pixel values
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["llama", "metaspace", "metaspace_decoder"])
def test_inputs_match_transformers(folders, hf, style):
    ours, theirs = load_processor(folders[style]), hf(folders[style], padding_side="left")
    for text, n in zip(TEXTS, N_IMAGES, strict=True):  # one prompt at a time
        images = small_images(n) or None
        assert_same_inputs(ours(images=images, text=text), theirs(images=images, text=text, return_tensors="np"))
    images = small_images(sum(N_IMAGES), seed=1)  # the whole batch, left-padded
    expected = theirs(images=images, text=TEXTS, padding=True, return_tensors="np")
    got = ours(images=images, text=TEXTS)
    assert_same_inputs(got, expected)
    assert (got["attention_mask"][:, -1] == 1).all() and (got["attention_mask"][:, 0] == 0).any()
    assert (got["input_ids"] == ours.image_token_id).sum() == len(images) * ours.num_image_tokens


def test_right_padding_and_text_only_batches(folders, hf):
    ours, theirs = load_processor(folders["llama"], padding_side="right"), hf(folders["llama"])
    assert theirs.tokenizer.padding_side == "right"  # Transformers' default without padding_side in the files
    texts = [t for t in TEXTS if "<image>" not in t]
    assert_same_inputs(ours(text=texts), theirs(text=texts, padding=True, return_tensors="np"))
    left = load_processor(folders["llama"])(text=texts, padding_side="right")  # per-call override
    assert_same_inputs(left, theirs(text=texts, padding=True, return_tensors="np"))


def test_padding_side_from_tokenizer_config(folders, hf, tmp_path):
    folder = shutil.copytree(folders["llama"], tmp_path / "left")
    assert load_processor(folder, padding_side=None).padding_side == "right"  # nothing in the files
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    assert load_processor(folder, padding_side=None).padding_side == "left"
    assert load_processor(folder, padding_side="right").padding_side == "right"
    texts = ["short", "a somewhat longer prompt"]
    assert_same_inputs(
        load_processor(folder, padding_side=None)(text=texts), hf(folder)(text=texts, padding=True, return_tensors="np")
    )


def test_images_alone_and_nested_image_lists(folders, hf):
    ours, theirs = load_processor(folders["llama"]), hf(folders["llama"])
    images = small_images(3)
    assert_same_inputs(ours(images=images), theirs(images=images, return_tensors="np"))
    nested = ours(images=[images[:2], images[2:]], text=["<image><image>a", "<image>b"])
    np.testing.assert_array_equal(nested["pixel_values"], ours(images=images)["pixel_values"])


def test_bos_comes_from_tokenizer_json(folders, hf, tmp_path):
    """Transformers 5.24 ignores tokenizer_config.json's add_bos_token when a tokenizer.json exists: the
    post-processor there adds <s>. minillava does the same."""
    folder = shutil.copytree(folders["llama"], tmp_path / "no_bos")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": False}))
    ours, theirs = load_processor(folder), hf(folder)
    assert ours.bos_token_id == 1 and ours.eos_token_id == 2 and ours.pad_token_id == 381 and ours.unk_token_id == 0
    got = ours(text="What is shown?")
    assert_same_inputs(got, theirs(text="What is shown?", return_tensors="np"))
    assert got["input_ids"][0, 0] == ours.bos_token_id


@pytest.mark.parametrize("name, count", [("llama", 16), ("full", 17)])
def test_image_token_count(folders, hf, name, count):
    """default: (28 // 7)**2 + 1 - 1 = 16; full keeps CLS: (32 // 8)**2 + 1 = 17."""
    ours, theirs = load_processor(folders[name]), hf(folders[name], padding_side="left")
    assert ours.num_image_tokens == count
    images = small_images(2)
    text = ["<image>\nleft", "right <image>"]
    got = ours(images=images, text=text)
    assert_same_inputs(got, theirs(images=images, text=text, padding=True, return_tensors="np"))
    assert ((got["input_ids"] == ours.image_token_id).sum(axis=1) == count).all()


def test_image_tokens_from_config_json_when_processor_config_lacks_them(folders, tmp_path):
    """Older folders have no processor fields: patch size and strategy come from config.json, with CLIP's
    one extra (CLS) token, so the count equals the model's number of image features."""
    from minillava.loading.config import load_config

    folder = shutil.copytree(folders["old_files"], tmp_path / "oldest")
    (folder / "processor_config.json").unlink()
    processor = load_processor(folder)
    assert (processor.patch_size, processor.vision_feature_select_strategy) == (7, "default")
    assert processor.num_image_tokens == load_config(folder).num_image_tokens == 16
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match="patch_size"):
        load_processor(folder)


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["llama", "metaspace", "metaspace_decoder"])
def test_decode_matches_transformers(folders, hf, style):
    ours, theirs = load_processor(folders[style]), hf(folders[style])
    encoded = theirs(text=[t for t in TEXTS if "<image>" not in t], padding=True, return_tensors="np")["input_ids"]
    byte = lambda b: 3 + b  # noqa: E731  <0xNN> is id 3 + NN
    rows = [
        *encoded.tolist(),
        [1, *(byte(b) for b in "é🎈".encode())],  # complete multi-byte characters as bytes
        [byte(0xE6), byte(0x97)],  # a cut-off character
        [byte(0xFF), 300, byte(0x41), 380, 380, 2, 381],  # invalid byte, text, image, eos, pad
        [],
    ]
    for skip in (False, True):
        assert ours.batch_decode(encoded, skip_special_tokens=skip) == theirs.batch_decode(
            encoded, skip_special_tokens=skip
        )
        for row in rows:
            assert ours.decode(row, skip_special_tokens=skip) == theirs.decode(row, skip_special_tokens=skip), row
        assert ours.batch_decode(rows, skip_special_tokens=skip) == [
            theirs.decode(r, skip_special_tokens=skip) for r in rows
        ]
    assert ours.decode(np.int64(300)) == theirs.decode(300)


def test_stream_text_holds_back_split_multibyte_characters():
    text = "naïve café 日本 🙂!"
    byte_tokens = list(text.encode("utf-8"))  # one token per byte, as byte-fallback tokens are

    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    pieces = list(stream_text(([t] for t in byte_tokens), decode))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "日" in pieces and "🙂" in pieces  # a 3- and a 4-byte character, each yielded whole


# ---------------------------------------------------------------------------------------------------------------
# File forms
# ---------------------------------------------------------------------------------------------------------------


def test_old_and_new_file_forms(folders, hf):
    """chat_template.json + preprocessor_config.json (older folders) read like chat_template.jinja +
    processor_config.json (what Transformers 5.x writes)."""
    assert (folders["old_files"] / "chat_template.json").is_file()
    assert (folders["old_files"] / "preprocessor_config.json").is_file()
    assert not (folders["old_files"] / "chat_template.jinja").exists()
    new, old = load_processor(folders["llama"]), load_processor(folders["old_files"])
    assert old.chat_template == new.chat_template == tiny.LLAVA_15_CHAT_TEMPLATE
    assert old.image_processor_config == new.image_processor_config
    assert old.num_image_tokens == new.num_image_tokens
    images, text = small_images(2), ["<image>\nWhat?", "two <image>"]
    assert_same_inputs(
        old(images=images, text=text),
        hf(folders["old_files"], padding_side="left")(images=images, text=text, padding=True, return_tensors="np"),
    )


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_bad_calls(folders, tmp_path):
    processor = load_processor(folders["llama"])
    missing = str(tmp_path / "no_such_image.png")  # the count check must come before any image is read
    with pytest.raises(ValueError, match=r"0 <image> marker\(s\) but 1 image\(s\).*`images`"):
        processor(images=[missing], text="no marker")
    with pytest.raises(ValueError, match=r"2 <image> marker\(s\) but 1 image"):
        processor(images=missing, text=["<image>", "<image>"])
    with pytest.raises(ValueError, match=r"1 <image> marker\(s\) but 0 image"):
        processor(text="<image> without an image")
    with pytest.raises(ValueError, match=r"`text`.*text\[1\] is a int"):
        processor(text=["fine", 3])
    with pytest.raises(ValueError, match="`text` must be a string"):
        processor(text=[])
    with pytest.raises(ValueError, match="`images` must hold"):
        processor(images=[np.zeros((4, 4, 3))], text="<image>")
    with pytest.raises(ValueError, match="give text"):
        processor()
    with pytest.raises(ValueError, match="padding_side"):
        processor(text="x", padding_side="middle")
    with pytest.raises(ValueError, match=r"padding=False.*different lengths \[\d+, \d+\]"):
        processor(text=["short", "a much longer prompt here"], padding=False)
    with pytest.raises(ValueError, match="padding must be"):
        processor(text="x", padding="max_length")
    same = processor(text=["one", "two"], padding=False)  # equal lengths need no padding
    assert same["attention_mask"].all()
    with pytest.raises(ValueError, match="shape"):
        processor.decode([[1, 2]])
    with pytest.raises(ValueError, match=">= 0"):
        processor.decode([1, -1])
    assert processor.decode([298, 999]) == processor.decode([298])  # past the vocabulary: nothing, as Transformers


def test_bad_folders(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_processor(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_processor(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="padding_side"):
        load_processor(folders["llama"], padding_side="top")
    folder = shutil.copytree(folders["llama"], tmp_path / "no_pad")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    processor = load_processor(folder)
    assert processor.pad_token_id is None
    with pytest.raises(ValueError, match="no pad token"):
        processor(text=["short", "a longer prompt"])
