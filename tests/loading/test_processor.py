"""minillava.loading.processor against Transformers' LlavaProcessor on tiny folders written by Transformers
(tests/fixtures/tiny_tokenizer.py): token ids, attention masks, pixel values, decoding and streamed text, the
file forms of older checkpoints, and bad input; for llava-1.5's files and for llava-interleave's (SigLIP image
processor, Qwen's byte-level tokenizer) on real photographs in several sizes and modes. The chat template:
test_chat_template.py."""

import functools
import http.server
import json
import re
import shutil
import threading

import numpy as np
import pytest

from minillava.loading.processor import load_processor, stream_text

from ..fixtures import tiny_tokenizer as tiny
from .images import INTERLEAVE_FOLDER, MODES, in_mode, photo_at
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


def test_tokenizer_padding_side_set_left_or_right_is_honoured(folders, hf):
    """Transformers' documentation advises processor.tokenizer.padding_side = "left" before batched generation:
    the processor pads on that side (right and left both), as Transformers' processor does after the same line;
    processor.padding_side is the same value."""
    processor, theirs = load_processor(folders["llama"], padding_side=None), hf(folders["llama"])
    texts = ["short", "a somewhat longer prompt"]
    for side in ("left", "right", "left"):
        processor.tokenizer.padding_side = side
        theirs.tokenizer.padding_side = side
        assert processor.padding_side == side
        assert_same_inputs(processor(text=texts), theirs(text=texts, padding=True, return_tensors="np"))
    processor.padding_side = "right"  # the other way round: the processor's name sets the tokenizer's
    assert processor.tokenizer.padding_side == "right"
    assert (processor(text=texts)["attention_mask"][0, -1] == 0).all()


def test_tokenizer_is_the_tokenizers_library_one_with_padding_side(folders):
    """processor.tokenizer forwards to tokenizer.json's tokenizers.Tokenizer; a padding side other than left or
    right, or any other setting, is refused naming it, not accepted and ignored."""
    processor = load_processor(folders["llama"])
    assert processor.tokenizer.encode("hello").ids == processor.tokenizer.backend.encode("hello").ids
    assert processor.tokenizer.token_to_id("<image>") == processor.image_token_id
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'middle'"):
        processor.tokenizer.padding_side = "middle"
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got None"):
        processor.padding_side = None
    assert processor.padding_side == "left"  # unchanged by the refused values
    with pytest.raises(AttributeError, match="processor.tokenizer.pad_token cannot be set.*takes padding_side only"):
        processor.tokenizer.pad_token = "<pad>"
    with pytest.raises(AttributeError, match="has no attribute 'eos_token_id'; the processor has it: processor.eos_"):
        processor.tokenizer.eos_token_id  # noqa: B018


@pytest.mark.parametrize("return_tensors", ["pt", "tf", "jax", "mlx"])
def test_return_tensors_of_other_frameworks_refused_naming_np(folders, return_tensors):
    processor = load_processor(folders["llama"])
    message = f"return_tensors='{return_tensors}': minillava returns NumPy arrays.*use return_tensors='np' or leave it"
    with pytest.raises(ValueError, match=message):
        processor(text="x", return_tensors=return_tensors)


def test_return_tensors_np_or_none_give_numpy_arrays(folders, hf):
    processor, theirs = load_processor(folders["llama"]), hf(folders["llama"], padding_side="left")
    images, texts = small_images(2), ["<image> one", "two <image> and more words"]
    expected = theirs(images=images, text=texts, padding=True, return_tensors="np")
    assert_same_inputs(processor(images=images, text=texts, padding=True, return_tensors="np"), expected)
    assert_same_inputs(processor(images=images, text=texts, padding=True, return_tensors=None), expected)
    with pytest.raises(ValueError, match=r"return_tensors must be 'np' or None \(NumPy arrays\), got 'numpy'"):
        processor(text="x", return_tensors="numpy")
    with pytest.raises(ValueError, match=r"return_tensors must be 'np' or None \(NumPy arrays\), got \['np'\]"):
        processor(text="x", return_tensors=["np"])


def test_image_url_is_fetched_where_the_machine_can_reach_it(folders, tmp_path):
    """An http:// URL (here a server on this machine, in a thread) gives the pixels of the file it serves."""
    processor = load_processor(folders["llama"])
    small_images(1)[0].save(tmp_path / "picture.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/picture.png"
        try:
            from_url = processor(images=[url], text="<image> hi")
            with pytest.raises(ValueError, match=r"/missing.png: the server answered HTTP 404"):
                processor(images=[url.replace("picture", "missing")], text="<image> hi")
        finally:
            server.shutdown()
    assert_same_inputs(from_url, processor(images=[tmp_path / "picture.png"], text="<image> hi"))


def test_image_url_unreachable_says_so_and_what_to_give_instead(folders):
    """No server listens on port 9 of this machine (as no network reaches the docs' URLs here): one
    ConnectionError naming the URL and saying to give a path or a PIL image."""
    processor = load_processor(folders["llama"])
    url = "http://127.0.0.1:9/stop-sign.jpg"
    with pytest.raises(
        ConnectionError, match=r"http://127.0.0.1:9/stop-sign.jpg: cannot fetch the image .*give its path"
    ):
        processor(images=[url], text="<image> hi")


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
    assert "日" in pieces and any(
        piece.endswith("🙂") for piece in pieces
    )  # a 3- and a 4-byte character, each yielded whole


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


def test_images_per_prompt_must_match_each_prompt(folders):
    """A list of images per prompt whose counts match only in total (both images to prompt 0) used to be accepted."""
    processor = load_processor(folders["llama"])
    one, two = small_images(2)
    with pytest.raises(ValueError, match=r"prompt 0 holds 1 <image> marker\(s\) but its list in `images` has 2"):
        processor(images=[[one, two], []], text=["<image> a", "<image> b"])
    with pytest.raises(ValueError, match="`images` holds 3 lists but there are 2 prompts"):
        processor(images=[[one], [two], []], text=["<image> a", "<image> b"])
    nested = processor(images=[[one], [two]], text=["<image> a", "<image> b"])
    flat = processor(images=[one, two], text=["<image> a", "<image> b"])
    for key in flat:
        np.testing.assert_array_equal(nested[key], flat[key])


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
    with pytest.raises(ValueError, match=r"\[0, 384\).*ids\[1\] is -1"):
        processor.decode([1, -1])
    # past the tokenizer's ids (382) but within the model's embedding (384 rows): nothing, as in Transformers
    assert processor.decode([298, 383]) == processor.decode([298])


def test_bad_folders(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_processor(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_processor(tmp_path / "nowhere")
    for file in ("tokenizer.json", "config.json"):  # a file of the folder: the folder is named
        with pytest.raises(ValueError, match=f"{file} is a file; load_processor takes the checkpoint folder"):
            load_processor(folders["llama"] / file)
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


@pytest.mark.parametrize("content", ["{not json", "", "{}", "[]", '{"model": 5}'])
def test_corrupt_or_empty_tokenizer_json(folders, tmp_path, content):
    """The tokenizers library raises a bare Exception naming no file: one ValueError naming tokenizer.json."""
    folder = shutil.copytree(folders["llama"], tmp_path / "broken")
    (folder / "tokenizer.json").write_text(content)
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'tokenizer.json'))}: not a tokenizer the"):
        load_processor(folder)


BAD_PROCESSOR_FIELDS = {  # id: (field, value, words of the message)
    "patch-list": ("patch_size", [14], "'patch_size' must be a positive int (pixels); got [14]"),
    "patch-zero": ("patch_size", 0, "'patch_size' must be a positive int (pixels); got 0"),
    "patch-true": ("patch_size", True, "'patch_size' must be a positive int (pixels); got True"),
    "strategy": ("vision_feature_select_strategy", "cls", "'vision_feature_select_strategy' must be one of"),
    "extra-negative": ("num_additional_image_tokens", -5, "'num_additional_image_tokens' must be 0 or 1"),
    "extra-string": ("num_additional_image_tokens", "a", "'num_additional_image_tokens' must be 0 or 1"),
    "extra-many": ("num_additional_image_tokens", 10**9, "'num_additional_image_tokens' must be 0 or 1"),
    "token-empty": ("image_token", "", "'image_token' must be a non-empty string; got ''"),
    "token-number": ("image_token", 5, "'image_token' must be a non-empty string; got 5"),
}


@pytest.mark.parametrize("case", BAD_PROCESSOR_FIELDS)
def test_bad_value_in_processor_config_json(folders, tmp_path, case):
    field, value, words = BAD_PROCESSOR_FIELDS[case]
    folder = shutil.copytree(folders["llama"], tmp_path / "bad")
    config = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'processor_config.json'}: {words}")):
        load_processor(folder)


def test_patch_size_larger_than_the_image(folders, tmp_path):
    """28 x 28 pixels in patches of 29: no patch, no image token; the <image> markers would vanish."""
    folder = shutil.copytree(folders["llama"], tmp_path / "big_patch")
    config = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps({**config, "patch_size": 29}))
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: a preprocessed image of 28x28 pixels makes 0"):
        load_processor(folder)


def test_image_token_missing_from_the_tokenizer(folders, tmp_path):
    folder = shutil.copytree(folders["llama"], tmp_path / "other_token")
    config = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps({**config, "image_token": "<img>"}))
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: the image token '<img>' is not in the"):
        load_processor(folder)


def test_lone_surrogate_in_the_text(folders):
    """Half of a UTF-16 pair (a broken JSON escape gives one) is no character: the tokenizer would raise a TypeError
    naming nothing."""
    processor = load_processor(folders["llama"])
    with pytest.raises(ValueError, match=r"text\[1\] holds the lone surrogate '\\ud800' at position 4"):
        processor(text=["fine", "bad \ud800 here"])
    with pytest.raises(ValueError, match=r"text\[0\] holds the lone surrogate '\\udcff' at position 0"):
        processor(text="\udcff")
    conversation = [{"role": "user", "content": "x \udc80"}, {"role": "assistant", "content": "y"}]
    with pytest.raises(ValueError, match=r"conversations\[0\] holds the lone surrogate '\\udc80'"):
        processor.training_inputs(conversation)


@pytest.mark.parametrize("ids, where", [([5, 2**40], "ids[1] is 1099511627776"), ([10**6], "ids[0] is 1000000"),
                                        ([3, 384], "ids[1] is 384"), (np.array([2**63], np.uint64), "ids[0] is 2**63"),
                                        (-1, "ids[0] is -1")])  # fmt: skip
def test_decode_ids_outside_the_vocabulary(folders, ids, where):
    """The tiny model's embedding has 384 rows (the tokenizer 382 ids): ids past it are no token of it."""
    processor = load_processor(folders["llama"])
    assert processor.vocab_size == 384
    where = where.replace("2**63", str(2**63))
    with pytest.raises(ValueError, match=re.escape(f"token ids must lie in [0, 384) (the vocabulary), but {where}")):
        processor.decode(ids)
    with pytest.raises(ValueError, match=re.escape(where)):
        processor.batch_decode([[1, 2], np.atleast_1d(ids).tolist()])


def test_decode_and_batch_decode_of_the_wrong_shapes(folders):
    processor = load_processor(folders["llama"])
    with pytest.raises(ValueError, match="decode takes one row of token ids; use batch_decode"):
        processor.decode([[1, 2], [3]])
    with pytest.raises(ValueError, match="token ids must be integers, got dtype float64"):
        processor.decode([1.5])
    with pytest.raises(TypeError, match=r"batch_decode takes ids \[B, T\] .* got int"):
        processor.batch_decode(7)


def test_padding_arguments_of_other_types(folders):
    processor = load_processor(folders["llama"])
    with pytest.raises(ValueError, match=r"padding must be True, False, 'longest' or 'do_not_pad', got array"):
        processor(text="x", padding=np.array([1, 2]))
    with pytest.raises(ValueError, match=r"padding_side must be 'left' or 'right', got \['left'\]"):
        processor(text="x", padding_side=["left"])


def test_chat_template_jinja_that_is_not_utf8(folders, tmp_path):
    folder = shutil.copytree(folders["llama"], tmp_path / "latin1")
    (folder / "chat_template.jinja").write_bytes(b"\xff\xfe{{ messages }}")
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'chat_template.jinja'))}: not UTF-8 text"):
        load_processor(folder)


# ---------------------------------------------------------------------------------------------------------------
# llava-interleave: SigLIP image processing, Qwen's byte-level BPE (no BOS), ChatML special tokens, 0 extra tokens
# ---------------------------------------------------------------------------------------------------------------

INTERLEAVE_TEXTS = [
    "<|im_start|>user\n<image>\nWhat is shown in this image?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\n\nBe terse.<|im_end|>\n<|im_start|>user\n<image><image>\nCompare.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "What color is the ball?",
    "  leading and trailing spaces  ",
    " one leading space",
    "line one\nline two\n\n\ttabbed\r\n",
    "café, naïve, 日本 and 東京",
    "cafe\u0301 decomposed (NFC makes it café)",
    "emoji 🎈😀🌸 and Ångström, Zürich, ½",
    "<image>What is this?",
    "word<image>word",
    "special tokens in text: <|endoftext|> and <|im_end|>x<|im_start|> <unk> <s>",
    "numbers 12345, it's, we'LL, I'M",
    "",
    "a",
]
INTERLEAVE_N_IMAGES = [text.count("<image>") for text in INTERLEAVE_TEXTS]


def rgb_photos(n):
    """Real photographs (scikit-image) in RGB, of several sizes and aspect ratios."""
    cases = [("astronaut", (512, 512)), ("chelsea", (451, 300)), ("coffee", (13, 7)), ("rocket", (300, 640))]
    cases += [("chelsea", (30, 30)), ("astronaut", (1, 1)), ("coffee", (1024, 768))]
    return [photo_at(*cases[i % len(cases)]) for i in range(n)]


def mode_photos():
    """The astronaut in the PIL modes other than RGB (transparency, palette, grey, 16 bit, CMYK, ...)."""
    return [image for image in map(in_mode, MODES) if image.mode != "RGB"]


@pytest.fixture(scope="module")
def interleave(folders, hf):
    """(minillava's processor, Transformers' as published, Transformers' with do_convert_rgb=True) for the folder
    with llava-interleave's files, all padding left."""
    folder = folders["qwen2"]
    converting = hf(folder, padding_side="left")
    converting.image_processor.do_convert_rgb = True
    return load_processor(folder), hf(folder, padding_side="left"), converting


def test_interleave_inputs_match_transformers(interleave):
    """RGB photographs against the published settings: input_ids and attention_mask identical, pixel_values bit
    for bit; one prompt at a time, then the whole batch left-padded."""
    ours, theirs, _ = interleave
    assert type(theirs.image_processor).__name__ == "SiglipImageProcessorPil"
    assert type(theirs.tokenizer).__name__ == "TokenizersBackend"  # tokenizer.json as it is, as minillava reads it
    for text, n in zip(INTERLEAVE_TEXTS, INTERLEAVE_N_IMAGES, strict=True):
        images = rgb_photos(n) or None
        assert_same_inputs(ours(images=images, text=text), theirs(images=images, text=text, return_tensors="np"))
    images = rgb_photos(sum(INTERLEAVE_N_IMAGES) - 1) + [in_mode("RGB+transparency")]  # RGB, a colour key too
    expected = theirs(images=images, text=INTERLEAVE_TEXTS, padding=True, return_tensors="np")
    got = ours(images=images, text=INTERLEAVE_TEXTS)
    assert_same_inputs(got, expected)
    assert got["pixel_values"].shape == (len(images), 3, 30, 30)
    assert got["attention_mask"][INTERLEAVE_TEXTS.index(""), :].sum() == 0  # no BOS: an empty prompt has no tokens
    assert (got["attention_mask"][:, -1] == 1).sum() == len(INTERLEAVE_TEXTS) - 1
    assert (got["input_ids"][got["attention_mask"] == 0] == ours.pad_token_id).all()
    assert (got["input_ids"] == ours.image_token_id).sum() == len(images) * ours.num_image_tokens


def test_interleave_non_rgb_photos_match_transformers_converting(interleave):
    """Other PIL modes: with the published do_convert_rgb null Transformers refuses them (or reads YCbCr's bands
    as RGB); minillava converts them, and equals Transformers with do_convert_rgb=True."""
    ours, theirs, converting = interleave
    images = mode_photos()
    text = [f"<|im_start|>user\n<image>\nPicture {i}?<|im_end|>\n" for i in range(len(images))]
    got = ours(images=images, text=text)
    assert_same_inputs(got, converting(images=images, text=text, padding=True, return_tensors="np"))
    with pytest.raises(ValueError):
        theirs(images=images[:1], text=text[:1], return_tensors="np")  # RGBA, as published


def test_interleave_right_padding_and_text_only(folders, hf):
    """tokenizer_config.json has no padding_side (as published): Transformers pads right, and so does minillava
    with padding_side=None; its default stays left, for batched generation."""
    folder = folders["qwen2"]
    theirs = hf(folder)
    assert theirs.tokenizer.padding_side == "right" and load_processor(folder).padding_side == "left"
    texts = [t for t in INTERLEAVE_TEXTS if "<image>" not in t]
    expected = theirs(text=texts, padding=True, return_tensors="np")
    assert_same_inputs(load_processor(folder, padding_side=None)(text=texts), expected)
    assert_same_inputs(load_processor(folder)(text=texts, padding_side="right"), expected)


def test_interleave_special_tokens_and_no_bos(interleave):
    ours, theirs, _ = interleave
    ids = tiny.QWEN2_IDS
    assert (ours.bos_token, ours.bos_token_id, ours.unk_token, ours.unk_token_id) == (None, None, None, None)
    assert (ours.eos_token, ours.eos_token_id) == ("<|im_end|>", ids["<|im_end|>"]) == (theirs.tokenizer.eos_token, 372)
    assert (
        (ours.pad_token, ours.pad_token_id)
        == ("<|endoftext|>", ids["<|endoftext|>"])
        == (theirs.tokenizer.pad_token, 370)
    )
    assert ours.image_token_id == theirs.image_token_id == ids["<image>"] == 373
    got = ours(text="What is shown?")
    assert_same_inputs(got, theirs(text="What is shown?", return_tensors="np"))
    assert got["input_ids"][0, 0] < tiny.QWEN2_BASE_VOCAB_SIZE  # a text token: nothing is added in front
    assert ours.decode(got["input_ids"][0]) == "What is shown?"  # nor at the end
    marked = ours(text="<|im_start|>user\n<|im_end|><|endoftext|>")["input_ids"][0].tolist()
    assert marked[0] == ids["<|im_start|>"] and marked[-2:] == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert ours.byte_token_ids == frozenset()  # no <0xNN> tokens: every byte is in the base alphabet


def test_interleave_image_token_count(interleave, folders, tmp_path):
    """(30 // 7)**2 + 0 extra (SigLIP has no CLS), "full" keeps them all: 16, the model's number of image features
    (729 for the real 384 px / 14 px). Older folders without processor fields take them from config.json: SigLIP
    adds no extra token there either (Transformers fails: no patch size)."""
    from minillava.loading.config import load_config

    ours, theirs, _ = interleave
    folder = folders["qwen2"]
    assert (ours.patch_size, ours.num_additional_image_tokens, ours.vision_feature_select_strategy) == (7, 0, "full")
    assert ours.num_image_tokens == load_config(folder).num_image_tokens == 16
    images = rgb_photos(3)
    text = ["<image>\nleft", "right <image><image>"]
    got = ours(images=images, text=text)
    assert_same_inputs(got, theirs(images=images, text=text, padding=True, return_tensors="np"))
    assert ((got["input_ids"] == ours.image_token_id).sum(axis=1) == [16, 32]).all()

    oldest = shutil.copytree(folder, tmp_path / "oldest")
    (oldest / "processor_config.json").unlink()
    processor = load_processor(oldest)
    assert (processor.patch_size, processor.num_additional_image_tokens, processor.num_image_tokens) == (7, 0, 16)
    assert processor.vision_feature_select_strategy == "full"
    assert_same_inputs(processor(images=images, text=text), got)
    with pytest.raises(TypeError):
        tiny.reference_processor(oldest)(images=images[:1], text="<image>", return_tensors="np")
    partial = shutil.copytree(folder, tmp_path / "partial")  # patch size given, the extra count left out
    (partial / "processor_config.json").write_text(json.dumps({"patch_size": 7, "image_token": "<image>"}))
    assert load_processor(partial).num_image_tokens == 16


def test_published_interleave_files_give_729_image_tokens(interleave, folders, tmp_path):
    """llava-interleave-qwen-0.5b-hf's published files (tests/data: config.json, preprocessor_config.json,
    processor_config.json, chat_template.json, special_tokens_map.json) with the tiny tokenizer beside them:
    pixel_values 384 x 384 and 729 image tokens per image (27 x 27 patches of 14 px, no CLS, "full"), as
    Transformers counts and as config.json's model needs. Without processor_config.json (snapshots before
    November 2024) the same count comes from config.json, where Transformers fails (no patch size)."""
    from minillava.loading.config import load_config

    folder = shutil.copytree(INTERLEAVE_FOLDER, tmp_path / "published")
    for name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):  # the tiny tokenizer's ids
        shutil.copy(folders["qwen2"] / name, folder / name)
    ours, theirs = load_processor(folder), tiny.reference_processor(folder, padding_side="left")
    assert ours.num_image_tokens == load_config(folder).num_image_tokens == 729
    assert ours.chat_template == theirs.chat_template
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Hi"}]}]
    prompt = ours.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == theirs.apply_chat_template(conversation, add_generation_prompt=True)
    images = [photo_at("coffee", (640, 480)), photo_at("chelsea", (451, 300))]
    got = ours(images=images, text=[prompt, "no image"])
    assert_same_inputs(got, theirs(images=images, text=[prompt, "no image"], padding=True, return_tensors="np"))
    assert got["pixel_values"].shape == (2, 3, 384, 384) and (got["input_ids"] == ours.image_token_id).sum() == 1458
    (folder / "processor_config.json").unlink()
    assert load_processor(folder).num_image_tokens == 729


def test_interleave_decode_matches_transformers(interleave):
    ours, theirs, _ = interleave
    encoded = theirs(text=[t for t in INTERLEAVE_TEXTS if "<image>" not in t], padding=True, return_tensors="np")
    encoded = encoded["input_ids"]
    cjk = ours.tokenizer.encode("日本", add_special_tokens=False).ids  # 6 tokens of one byte each
    assert len(cjk) == 6
    rows = [
        *encoded.tolist(),
        cjk,
        cjk[:2],  # a cut-off character
        cjk[:1] + [300] + cjk[3:],  # an invalid sequence in the middle
        [371, 300, 373, 373, 372, 370, 374, 383],  # specials, image tokens, ids past the tokenizer (the padded rows)
        [],
    ]
    for skip in (False, True):
        assert ours.batch_decode(encoded, skip_special_tokens=skip) == theirs.batch_decode(
            encoded, skip_special_tokens=skip
        )
        for row in rows:
            assert ours.decode(row, skip_special_tokens=skip) == theirs.decode(row, skip_special_tokens=skip), row
    assert ours.decode(cjk) == "日本" and ours.decode(cjk[:2]) == "\ufffd"


def test_interleave_stream_text_holds_back_split_characters(interleave):
    """Byte-level tokens may hold part of a character ("Ġcaf" + the first byte of "é" is one token of the tiny
    vocabulary): the text is held back while it ends in an incomplete character, so every piece is whole."""
    ours, _, _ = interleave
    text = "a café in 日本 🙂 ok, Ωmega 한국 ✓ naïve"
    ids = ours.tokenizer.encode(text, add_special_tokens=False).ids
    assert sum("\ufffd" in ours.decode([i]) for i in ids) >= 12  # tokens that are not whole characters
    pieces = list(ours.stream_text([i] for i in ids))
    assert "".join(pieces) == ours.decode(ids) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert "日" in pieces and any(piece.endswith("🙂") for piece in pieces)
