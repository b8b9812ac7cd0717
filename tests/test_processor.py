"""minillava.processor against Transformers' LlavaProcessor on tiny folders written by Transformers
(tools/make_tiny_tokenizer.py): token ids, attention masks, pixel values, chat templates, decoding,
the file forms of older checkpoints, and bad input."""

import json
import shutil
import sys

import make_tiny_tokenizer as tiny
import numpy as np
import pytest
from PIL import Image

from minillava.loading import chat_template as mp
from minillava.loading.processor import load_processor

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


def _images(n, seed=0):
    """Small RGB images of different sizes and aspect ratios (resized and cropped by the processor)."""
    rng = np.random.default_rng(seed)
    sizes = [(30, 40), (28, 28), (50, 33), (41, 29), (64, 64)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 5], 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Checkpoint folders with the processor files Transformers writes, in several forms."""
    root = tmp_path_factory.mktemp("processors")
    made = {}
    for name, kwargs in {
        "llama": {"style": "llama"},
        "metaspace": {"style": "metaspace"},
        "metaspace_decoder": {"style": "metaspace_decoder"},
        "old_files": {"style": "llama", "template_file": "json", "image_processor_file": "preprocessor"},
        "full": {"style": "llama", "strategy": "full", "image_size": 32, "patch_size": 8},
    }.items():
        made[name] = tiny.write_processor_files(root / name, **kwargs)
    return made


@pytest.fixture(scope="module")
def hf():
    """hf(folder, **kwargs) -> Transformers' LlavaProcessor.from_pretrained(folder, **kwargs), PIL backend."""
    return tiny.reference_processor


def _assert_same_inputs(ours, theirs):
    assert set(ours) == {k for k in theirs if k in ("input_ids", "attention_mask", "pixel_values")}
    for key, value in ours.items():
        reference = np.asarray(theirs[key])
        assert value.dtype == (np.float32 if key == "pixel_values" else np.int64), key
        assert value.shape == reference.shape, key
        np.testing.assert_array_equal(value, reference, err_msg=key)


# ---------------------------------------------------------------------------------------------------------------
# Token ids, attention masks, pixel values
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["llama", "metaspace", "metaspace_decoder"])
def test_inputs_match_transformers(folders, hf, style):
    ours, theirs = load_processor(folders[style]), hf(folders[style], padding_side="left")
    for text, n in zip(TEXTS, N_IMAGES, strict=True):  # one prompt at a time
        images = _images(n) or None
        _assert_same_inputs(ours(images=images, text=text), theirs(images=images, text=text, return_tensors="np"))
    images = _images(sum(N_IMAGES), seed=1)  # the whole batch, left-padded
    expected = theirs(images=images, text=TEXTS, padding=True, return_tensors="np")
    got = ours(images=images, text=TEXTS)
    _assert_same_inputs(got, expected)
    assert (got["attention_mask"][:, -1] == 1).all() and (got["attention_mask"][:, 0] == 0).any()
    assert (got["input_ids"] == ours.image_token_id).sum() == len(images) * ours.num_image_tokens


def test_right_padding_and_text_only_batches(folders, hf):
    ours, theirs = load_processor(folders["llama"], padding_side="right"), hf(folders["llama"])
    assert theirs.tokenizer.padding_side == "right"  # Transformers' default without padding_side in the files
    texts = [t for t in TEXTS if "<image>" not in t]
    _assert_same_inputs(ours(text=texts), theirs(text=texts, padding=True, return_tensors="np"))
    left = load_processor(folders["llama"])(text=texts, padding_side="right")  # per-call override
    _assert_same_inputs(left, theirs(text=texts, padding=True, return_tensors="np"))


def test_padding_side_from_tokenizer_config(folders, hf, tmp_path):
    folder = shutil.copytree(folders["llama"], tmp_path / "left")
    assert load_processor(folder, padding_side=None).padding_side == "right"  # nothing in the files
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    assert load_processor(folder, padding_side=None).padding_side == "left"
    assert load_processor(folder, padding_side="right").padding_side == "right"
    texts = ["short", "a somewhat longer prompt"]
    _assert_same_inputs(
        load_processor(folder, padding_side=None)(text=texts), hf(folder)(text=texts, padding=True, return_tensors="np")
    )


def test_images_alone_and_nested_image_lists(folders, hf):
    ours, theirs = load_processor(folders["llama"]), hf(folders["llama"])
    images = _images(3)
    _assert_same_inputs(ours(images=images), theirs(images=images, return_tensors="np"))
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
    _assert_same_inputs(got, theirs(text="What is shown?", return_tensors="np"))
    assert got["input_ids"][0, 0] == ours.bos_token_id


@pytest.mark.parametrize("name, count", [("llama", 16), ("full", 17)])
def test_image_token_count(folders, hf, name, count):
    """default: (28 // 7)**2 + 1 - 1 = 16; full keeps CLS: (32 // 8)**2 + 1 = 17."""
    ours, theirs = load_processor(folders[name]), hf(folders[name], padding_side="left")
    assert ours.num_image_tokens == count
    images = _images(2)
    text = ["<image>\nleft", "right <image>"]
    got = ours(images=images, text=text)
    _assert_same_inputs(got, theirs(images=images, text=text, padding=True, return_tensors="np"))
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
# Chat template
# ---------------------------------------------------------------------------------------------------------------

IMAGE, TEXT = {"type": "image"}, lambda s: {"type": "text", "text": s}
CONVERSATIONS = {
    "single turn with image": [{"role": "user", "content": [IMAGE, TEXT("What is shown in the image?")]}],
    "text before image": [{"role": "user", "content": [TEXT("Describe"), IMAGE]}],
    "multi-turn": [
        {"role": "user", "content": [IMAGE, TEXT("What is shown?")]},
        {"role": "assistant", "content": [TEXT("A red car.")]},
        {"role": "user", "content": [TEXT("And the house?")]},
        {"role": "assistant", "content": [TEXT("It is blue.")]},
    ],
    "several images": [{"role": "user", "content": [IMAGE, TEXT("Compare"), IMAGE, TEXT("these."), IMAGE]}],
    "system message": [
        {"role": "system", "content": [TEXT("You are a helpful assistant.")]},
        {"role": "user", "content": [IMAGE, TEXT("Count the cats.")]},
    ],
    "non-ascii and newlines": [{"role": "user", "content": [TEXT("café?\nyes 🎈")]}],
    "openai image_url": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}, TEXT("hi")]}],
}


@pytest.mark.parametrize("case", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("use_jinja", [False, True])
def test_chat_template_matches_transformers(folders, hf, case, add_generation_prompt, use_jinja):
    conversation = CONVERSATIONS[case]
    expected = _hf_processor(hf, folders["llama"]).apply_chat_template(
        conversation, add_generation_prompt=add_generation_prompt
    )
    ours = load_processor(folders["llama"])
    assert ours.apply_chat_template(conversation, add_generation_prompt, use_jinja=use_jinja) == expected


_HF_CACHE = {}


def _hf_processor(hf, folder):
    if folder not in _HF_CACHE:
        _HF_CACHE[folder] = hf(folder)
    return _HF_CACHE[folder]


def test_chat_template_prompt_tokenizes_like_transformers(folders, hf):
    ours, theirs = load_processor(folders["llama"]), _hf_processor(hf, folders["llama"])
    conversation = CONVERSATIONS["several images"]
    prompt = ours.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == "USER: <image>\n<image>\n<image>\nCompare these. ASSISTANT:"
    images = _images(3)
    _assert_same_inputs(ours(images=images, text=prompt), theirs(images=images, text=prompt, return_tensors="np"))
    batch = ours.apply_chat_template([CONVERSATIONS["multi-turn"], CONVERSATIONS["system message"]], True)
    assert batch == [ours.apply_chat_template(CONVERSATIONS[c], True) for c in ("multi-turn", "system message")]


def test_string_content(folders, hf):
    """A string content is one text part for the native renderer. Transformers' llava-1.5 template only reads
    typed parts and renders nothing for it; the Jinja path reproduces that exactly."""
    theirs, ours = _hf_processor(hf, folders["llama"]), load_processor(folders["llama"])
    as_string = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is shown?"}]
    as_parts = [{"role": m["role"], "content": [TEXT(m["content"])]} for m in as_string]
    native = ours.apply_chat_template(as_string, add_generation_prompt=True)
    assert native == theirs.apply_chat_template(as_parts, add_generation_prompt=True)
    assert native == "Be brief. USER: What is shown? ASSISTANT:"
    transformers_string = theirs.apply_chat_template(as_string, add_generation_prompt=True)
    assert transformers_string == "USER: ASSISTANT:"
    assert ours.apply_chat_template(as_string, add_generation_prompt=True, use_jinja=True) == transformers_string


def test_other_templates_go_through_jinja(folders, hf):
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['content'] is string %}{{ m['role'] }}: {{ m['content'] }}\n"
        "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] | tojson }}"
        "{% endif %}{% endfor %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    theirs, ours = _hf_processor(hf, folders["llama"]), load_processor(folders["llama"])
    ours.chat_template = template
    assert not mp.is_llava_15_template(template)
    for conversation in (CONVERSATIONS["multi-turn"], [{"role": "user", "content": "café ☕"}]):
        for add in (True, False):
            expected = theirs.apply_chat_template(conversation, chat_template=template, add_generation_prompt=add)
            assert ours.apply_chat_template(conversation, add) == expected


def test_template_recognition():
    assert mp.is_llava_15_template(tiny.LLAVA_15_CHAT_TEMPLATE)
    assert mp.is_llava_15_template(mp.LLAVA_15_CHAT_TEMPLATE_PLAIN)
    spaced = tiny.LLAVA_15_CHAT_TEMPLATE.replace("{% for", "{%  for").replace("'].upper()", "'] .upper()") + "\n"
    assert mp.is_llava_15_template(spaced)
    assert not mp.is_llava_15_template(tiny.LLAVA_15_CHAT_TEMPLATE.replace("'ASSISTANT:'", "'ASSISTANT: '"))
    assert not mp.is_llava_15_template(tiny.LLAVA_15_CHAT_TEMPLATE.replace("<image>\n", "<image>"))
    # The equivalent older form renders like the current one.
    for conversation in CONVERSATIONS.values():
        for add in (True, False):
            assert mp.render_jinja(mp.LLAVA_15_CHAT_TEMPLATE_PLAIN, conversation, add) == mp.render_llava_15(
                conversation, add
            )


def test_native_renderer_needs_no_jinja(folders, monkeypatch):
    ours = load_processor(folders["llama"])
    monkeypatch.setitem(sys.modules, "jinja2", None)  # import jinja2 now raises ImportError
    assert ours.apply_chat_template(CONVERSATIONS["single turn with image"], True).endswith("ASSISTANT:")
    ours.chat_template = "{{ messages[0]['content'] }}"
    with pytest.raises(ImportError, match="install jinja2"):
        ours.apply_chat_template([{"role": "user", "content": "hi"}])


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
    images, text = _images(2), ["<image>\nWhat?", "two <image>"]
    _assert_same_inputs(
        old(images=images, text=text),
        hf(folders["old_files"], padding_side="left")(images=images, text=text, padding=True, return_tensors="np"),
    )


def test_chat_template_precedence(folders, hf, tmp_path):
    """processor_config.json's key > chat_template.json > chat_template.jinja (Transformers 5.24); minillava
    falls back on tokenizer_config.json's template, where Transformers' processor has none."""
    folder = shutil.copytree(folders["llama"], tmp_path / "both")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "from json"}))
    (folder / "chat_template.jinja").write_text("from jinja")
    assert load_processor(folder).chat_template == hf(folder).chat_template == "from json"
    (folder / "chat_template.json").unlink()
    assert load_processor(folder).chat_template == hf(folder).chat_template == "from jinja"
    config = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps({**config, "chat_template": "from processor_config"}))
    assert load_processor(folder).chat_template == hf(folder).chat_template == "from processor_config"
    (folder / "processor_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink()
    assert load_processor(folder).chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        load_processor(folder).apply_chat_template(CONVERSATIONS["single turn with image"])
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "chat_template": "from tokenizer"}))
    assert load_processor(folder).chat_template == "from tokenizer"


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_bad_conversations(folders):
    processor = load_processor(folders["llama"])
    bad = {
        "non-empty list": [],
        "unknown role": [{"role": "robot", "content": "hi"}],
        "has no 'content'": [{"role": "user"}],
        "has no 'role'": [{"content": "hi"}],
        "must be a dict": ["hello"],
        "'type' 'text' or 'image'": [{"role": "user", "content": [{"type": "video"}]}],
        "no string 'text'": [{"role": "user", "content": [{"type": "text"}]}],
        "string or a list of parts": [{"role": "user", "content": 42}],
    }
    for message, conversation in bad.items():
        with pytest.raises(ValueError, match=message):
            processor.apply_chat_template(conversation)
    with pytest.raises(ValueError, match="non-empty list"):
        processor.apply_chat_template([], use_jinja=True)


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
