"""The chat template (minillava.loading.chat_template, through the processor's apply_chat_template) against
Transformers' LlavaProcessor: the native llava-1.5 and llava-interleave renderers and the Jinja one give
Transformers' prompt on every conversation tried here, other templates go through Jinja, where a folder's template
comes from, bad conversations."""

import json
import re
import shutil
import sys

import numpy as np
import pytest

from minillava.loading import chat_template as mp
from minillava.loading.processor import load_processor

from ..fixtures import tiny_tokenizer as tiny
from .images import INTERLEAVE_FOLDER
from .processor_folders import assert_same_inputs, small_images


@pytest.fixture(scope="module")
def hf():
    """hf(folder, **kwargs) -> Transformers' LlavaProcessor.from_pretrained(folder, **kwargs), PIL backend."""
    return tiny.reference_processor


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


TEMPLATES = {"llava-1.5": "llama", "llava-interleave": "qwen2"}  # -> the folder (processor_folders.FORMS)


@pytest.mark.parametrize("case", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("use_jinja", [False, True])
@pytest.mark.parametrize("template", TEMPLATES)
def test_chat_template_matches_transformers(folders, hf, template, case, add_generation_prompt, use_jinja):
    folder = folders[TEMPLATES[template]]
    conversation = CONVERSATIONS[case]
    expected = _hf_processor(hf, folder).apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
    ours = load_processor(folder)
    assert mp.native_renderer(ours.chat_template) is not None  # both are rendered natively without use_jinja
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
    images = small_images(3)
    assert_same_inputs(ours(images=images, text=prompt), theirs(images=images, text=prompt, return_tensors="np"))
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


def test_interleave_prompts(folders, hf):
    """llava-interleave's format, literally: images of a message first, each text on a new line, ChatML markers;
    the conversation and Transformers' output of the research note on issue 14 (verified with Transformers 5.24);
    the prompt tokenizes as in Transformers; chat_template.json wins over the tokenizer's own (Qwen1.5's)
    template in tokenizer_config.json."""
    folder = folders["qwen2"]
    ours, theirs = load_processor(folder), _hf_processor(hf, folder)
    assert ours.chat_template == mp.LLAVA_INTERLEAVE_CHAT_TEMPLATE
    assert mp.native_renderer(ours.chat_template) is mp.render_llava_interleave
    assert "You are a helpful assistant" in json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    conversation = [
        {"role": "system", "content": [TEXT("You are terse.")]},
        {"role": "user", "content": [TEXT("What is shown?"), IMAGE, IMAGE]},
        {"role": "assistant", "content": [TEXT("Two cats.")]},
        {"role": "user", "content": [IMAGE, TEXT("And this?"), TEXT("Second text.")]},
    ]
    prompt = ours.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\n\nYou are terse.<|im_end|>\n<|im_start|>user\n<image><image>\nWhat is shown?<|im_end|>\n"
        "<|im_start|>assistant\n\nTwo cats.<|im_end|>\n<|im_start|>user\n<image>\nAnd this?\nSecond text.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt == theirs.apply_chat_template(conversation, add_generation_prompt=True)
    images = small_images(3)
    assert_same_inputs(ours(images=images, text=prompt), theirs(images=images, text=prompt, return_tensors="np"))
    tool = [{"role": "tool", "content": [TEXT("42")]}, {"role": "user", "content": [TEXT("ok?")]}]  # any role
    assert ours.apply_chat_template(tool, True) == theirs.apply_chat_template(tool, add_generation_prompt=True)


def test_interleave_string_content(folders, hf):
    """As for llava-1.5: a string content is one text part for the native renderer; Transformers' template only
    reads typed parts and renders an empty message for it; the Jinja path reproduces that exactly."""
    theirs, ours = _hf_processor(hf, folders["qwen2"]), load_processor(folders["qwen2"])
    as_string = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is shown?"}]
    as_parts = [{"role": m["role"], "content": [TEXT(m["content"])]} for m in as_string]
    native = ours.apply_chat_template(as_string, add_generation_prompt=True)
    assert native == theirs.apply_chat_template(as_parts, add_generation_prompt=True)
    assert native == (
        "<|im_start|>system\n\nBe brief.<|im_end|>\n<|im_start|>user\n\nWhat is shown?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    transformers_string = theirs.apply_chat_template(as_string, add_generation_prompt=True)
    assert (
        transformers_string == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    )
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


def test_interleave_template_recognition():
    """The published template (chat_template.json of llava-interleave-qwen-0.5b-hf, 699 bytes), its earlier form
    without the assistant branch (485 bytes), spaced or with the newlines written as the escape \\n in the Jinja
    strings (which Jinja reads alike) are recognised; a changed output is not; each template is only its own."""
    interleave, plain = mp.LLAVA_INTERLEAVE_CHAT_TEMPLATE, mp.LLAVA_INTERLEAVE_CHAT_TEMPLATE_PLAIN
    published = (INTERLEAVE_FOLDER / "chat_template.json").read_text(encoding="utf-8")  # tests/data
    assert json.dumps({"chat_template": interleave}, indent=2) == published and len(published) == 699
    assert len(json.dumps({"chat_template": plain}, indent=2)) == 485
    escaped = interleave.replace("\n", "\\n")
    spaced = interleave.replace("{{'<|im_end|>'", "{{ '<|im_end|>'").replace("{% for", "{%  for") + "\n"
    for template in (interleave, plain, escaped, spaced):
        assert mp.is_llava_interleave_template(template) and not mp.is_llava_15_template(template)
        assert mp.native_renderer(template) is mp.render_llava_interleave
    for changed in (
        interleave.replace("'<|im_end|>' + '\n'", "'<|im_end|>'"),
        interleave.replace("{{ '<image>' }}", "{{ '<image>\n' }}"),
        interleave.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant'"),
    ):
        assert not mp.is_llava_interleave_template(changed) and mp.native_renderer(changed) is None
    assert not mp.is_llava_interleave_template(tiny.LLAVA_15_CHAT_TEMPLATE)
    assert mp.native_renderer(tiny.LLAVA_15_CHAT_TEMPLATE) is mp.render_llava_15
    for conversation in CONVERSATIONS.values():
        for add in (True, False):
            native = mp.render_llava_interleave(conversation, add)
            assert mp.render_jinja(plain, conversation, add) == mp.render_jinja(escaped, conversation, add) == native


def test_native_renderer_needs_no_jinja(folders, monkeypatch):
    ours = load_processor(folders["llama"])
    interleave = load_processor(folders["qwen2"])
    monkeypatch.setitem(sys.modules, "jinja2", None)  # import jinja2 now raises ImportError
    assert ours.apply_chat_template(CONVERSATIONS["single turn with image"], True).endswith("ASSISTANT:")
    assert interleave.apply_chat_template(CONVERSATIONS["single turn with image"], True).endswith("assistant\n")
    ours.chat_template = "{{ messages[0]['content'] }}"
    with pytest.raises(ImportError, match="install jinja2"):
        ours.apply_chat_template([{"role": "user", "content": "hi"}])


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
# apply_chat_template(tokenize=True): the pictures inside the conversation, as Transformers takes them
# ---------------------------------------------------------------------------------------------------------------


def _with_pictures(conversation, pictures, key="image"):
    """The conversation with each bare image part given its picture under `key`, in order."""
    pictures = iter(pictures)
    return [
        {**m, "content": [{**p, key: next(pictures)} if p == IMAGE else p for p in m["content"]]} for m in conversation
    ]


@pytest.mark.parametrize("template", TEMPLATES)
def test_tokenize_with_pil_images_in_the_conversation_like_transformers(folders, hf, template):
    """One conversation and a batch of two (padded on the right, Transformers' side for these files), the pictures
    as PIL images inside the conversations: the same input_ids, attention_mask and pixel_values as Transformers'
    apply_chat_template(tokenize=True, return_dict=True); without return_dict, input_ids alone."""
    folder = folders[TEMPLATES[template]]
    ours, theirs = load_processor(folder, padding_side="right"), _hf_processor(hf, folder)
    one = _with_pictures(CONVERSATIONS["multi-turn"], small_images(1))
    two = _with_pictures(CONVERSATIONS["several images"], small_images(3, seed=1))
    kwargs = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "np"}
    for conversation in (one, [one, two], [CONVERSATIONS["non-ascii and newlines"], one]):
        expected = theirs.apply_chat_template(conversation, padding=True, **kwargs)
        assert_same_inputs(ours.apply_chat_template(conversation, **kwargs), expected)
    ids = ours.apply_chat_template([one, two], add_generation_prompt=True, tokenize=True)
    np.testing.assert_array_equal(ids, theirs.apply_chat_template([one, two], padding=True, **kwargs)["input_ids"])


def test_tokenize_with_paths_under_image_and_path_keys(folders, tmp_path):
    """A path under "image" or "path" gives the pixels of the file, as processor(images=[path]) does."""
    processor = load_processor(folders["llama"])
    file = tmp_path / "picture.png"
    small_images(1)[0].save(file)
    expected = processor(images=[file], text=processor.apply_chat_template(CONVERSATIONS["multi-turn"], True))
    for key, value in (("image", file), ("image", str(file)), ("path", str(file))):
        conversation = _with_pictures(CONVERSATIONS["multi-turn"], [value], key)
        got = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert_same_inputs(got, expected)


def test_tokenize_does_not_add_a_second_bos_when_the_template_writes_one(folders, hf):
    """A template that writes {{ bos_token }}: Transformers does not add the tokenizer's <s> again, nor do we."""
    template = (
        "{{ bos_token }}{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    )
    ours, theirs = load_processor(folders["llama"]), _hf_processor(hf, folders["llama"])
    ours.chat_template = template
    conversation = _with_pictures(CONVERSATIONS["single turn with image"], small_images(1))
    expected = theirs.apply_chat_template(
        conversation, chat_template=template, tokenize=True, return_dict=True, return_tensors="np"
    )
    got = ours.apply_chat_template(conversation, tokenize=True, return_dict=True)
    assert_same_inputs(got, expected)
    assert (got["input_ids"][0] == ours.bos_token_id).sum() == 1


def test_tokenize_refuses_an_image_part_without_a_picture_naming_it(folders):
    processor = load_processor(folders["llama"])
    with pytest.raises(ValueError, match=r"conversation\[0\]\['content'\]\[0\] is an image part with no picture"):
        processor.apply_chat_template(CONVERSATIONS["multi-turn"], tokenize=True)
    batch = [_with_pictures(CONVERSATIONS["multi-turn"], small_images(1)), CONVERSATIONS["system message"]]
    with pytest.raises(ValueError, match=r"conversations\[1\]\[1\]\['content'\]\[0\] is an image part with no pic"):
        processor.apply_chat_template(batch, tokenize=True)
    two_keys = [{"role": "user", "content": [{"type": "image", "image": small_images(1)[0], "url": "http://x/y.png"}]}]
    with pytest.raises(ValueError, match=r"\['content'\]\[0\] is an image part with both image and url"):
        processor.apply_chat_template(two_keys, tokenize=True)
    base64 = [{"role": "user", "content": [{"type": "image", "base64": "iVBORw0KGgo="}]}]
    with pytest.raises(ValueError, match=r"\['content'\]\[0\]: minillava does not read 'base64' images"):
        processor.apply_chat_template(base64, tokenize=True)
    wrong_type = [{"role": "user", "content": [{"type": "image", "image": np.zeros((4, 4, 3))}]}]
    with pytest.raises(TypeError, match=r"\['content'\]\[0\]\['image'\] must be a PIL image, a path or a URL, got nd"):
        processor.apply_chat_template(wrong_type, tokenize=True)


def test_tokenize_arguments_are_checked(folders):
    processor = load_processor(folders["llama"])
    conversation = [{"role": "user", "content": [TEXT("hi")]}]
    with pytest.raises(ValueError, match="return_dict and return_tensors describe token ids, but tokenize is False"):
        processor.apply_chat_template(conversation, return_dict=True)
    with pytest.raises(ValueError, match="but tokenize is False"):
        processor.apply_chat_template(conversation, return_tensors="np")
    with pytest.raises(
        ValueError, match=r"return_tensors='pt': minillava returns NumPy arrays.*use return_tensors='np'"
    ):
        processor.apply_chat_template(conversation, tokenize=True, return_tensors="pt")
    with pytest.raises(ValueError, match="tokenize and return_dict must be True or False, got 'yes'"):
        processor.apply_chat_template(conversation, tokenize="yes")
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'up'"):
        processor.apply_chat_template(conversation, tokenize=True, padding_side="up")
    ids = processor.apply_chat_template(conversation, tokenize=True, return_tensors="np")  # input_ids alone
    np.testing.assert_array_equal(ids, processor(text=processor.apply_chat_template(conversation))["input_ids"])


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


def test_conversation_nested_5000_deep(folders):
    """A batch is one level of lists: a list nested 5000 deep is one bad message, not 5000 nested calls."""
    processor = load_processor(folders["llama"])
    deep = [{"role": "user", "content": "x"}]
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match=r"^conversation\[0\] must be a dict with 'role' and 'content', got list$"):
        processor.apply_chat_template(deep)


def test_content_part_nested_5000_deep_and_a_role_of_a_megabyte(folders):
    """The message shows a shortened form of what it names: a part nested 5000 deep, a role of a million
    characters."""
    processor = load_processor(folders["llama"])
    part = "x"
    for _ in range(5000):
        part = [part]
    with pytest.raises(ValueError, match=r"content part 0 must be a dict .*, got \[\[\[") as caught:
        processor.apply_chat_template([{"role": "user", "content": [part]}])
    assert len(str(caught.value)) < 200
    with pytest.raises(ValueError, match=r"conversation\[0\] has the unknown role 'rrr") as caught:
        processor.apply_chat_template([{"role": "r" * 10**6, "content": "x"}])
    assert len(str(caught.value)) < 200


def test_missing_chat_template_names_the_folder_and_the_files(folders, tmp_path):
    folder = shutil.copytree(folders["llama"], tmp_path / "no_template")
    (folder / "chat_template.jinja").unlink()
    processor = load_processor(folder)
    with pytest.raises(ValueError) as caught:
        processor.apply_chat_template(CONVERSATIONS["single turn with image"])
    message = str(caught.value)
    assert message.startswith(f"{folder}: no chat template")
    for name in ("processor_config.json", "chat_template.json", "chat_template.jinja", "tokenizer_config.json"):
        assert name in message


OTHER_TEMPLATE = (  # a template of another kind: refuses unknown roles, prints each content as JSON
    "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('unknown role ' + "
    "m['role']) }}{% endif %}{{ m['role'] }}: {{ m['content'] | tojson }}\n{% endfor %}"
)


@pytest.mark.parametrize(
    "template, conversation, words",
    [
        (OTHER_TEMPLATE, [{"role": "system", "content": "x"}], "TemplateError: unknown role system"),
        (OTHER_TEMPLATE, [{"role": "user", "content": [b"bytes"]}], "TypeError: Object of type bytes"),
        (OTHER_TEMPLATE, [{"role": "user", "content": [[[["x"]]]]}], None),  # fine: printed as JSON
        (mp.LLAVA_15_CHAT_TEMPLATE, [{"role": "user", "content": [{"type": "text", "text": ["a list"]}]}],
         "TypeError: can only concatenate list"),
        ("{% for m in messages %}{{ m['role'] }", [{"role": "user", "content": "x"}], "not valid Jinja (line 1"),
    ],
    ids=["raise-exception", "unprintable", "nested-printable", "text-not-a-string", "syntax-error"],
)  # fmt: skip
def test_jinja_templates_refuse_with_one_value_error(template, conversation, words):
    """A template is a program: whatever it raises on a conversation it does not expect is a ValueError that says
    what the template met."""
    if words is None:
        assert mp.render_jinja(template, conversation).startswith("user: [[[")
        return
    with pytest.raises(ValueError, match=re.escape(words)):
        mp.render_jinja(template, conversation)


def test_jinja_template_on_a_text_nested_5000_deep():
    text = "x"
    for _ in range(5000):
        text = [text]
    with pytest.raises(ValueError, match=r"the chat template cannot render this conversation \(RecursionError"):
        mp.render_jinja(OTHER_TEMPLATE, [{"role": "user", "content": [{"type": "text", "text": text}]}])


def random_conversations(n, seed=0):
    """n conversations of every shape the llava-1.5 and llava-interleave formats meet: an optional system message,
    1-4 turns that may end on either side, each message with 0-3 images and 1-3 texts in any order (OpenAI
    image_url parts too), texts with spaces at the ends, newlines, non-ASCII and template-looking characters
    (ChatML markers too)."""
    import random

    rng = random.Random(seed)
    words = ["What", "is", "shown?", " lead ", "trail ", "café", "🎈", "{{ x }}", "{% if %}", "\n", "ASSISTANT:", "<s>"]
    words += ["<|im_end|>", "日本", "\r\n", ""]

    def text():
        return TEXT("".join(rng.choice(words) + rng.choice(["", " "]) for _ in range(rng.randint(1, 5))))

    def image():
        return IMAGE if rng.random() < 0.8 else {"type": "image_url", "image_url": {"url": "http://x/y.png"}}

    for _ in range(n):
        messages = [{"role": "system", "content": [text()]}] if rng.random() < 0.3 else []
        for turn in range(rng.randint(1, 4)):
            role = "user" if turn % 2 == 0 else "assistant"
            parts = [image() for _ in range(rng.randint(0, 3) if role == "user" else 0)]
            parts += [text() for _ in range(rng.randint(1, 3))]
            rng.shuffle(parts)
            messages.append({"role": role, "content": parts})
        yield messages


NATIVE = {  # native renderer -> the templates it stands for
    mp.render_llava_15: (tiny.LLAVA_15_CHAT_TEMPLATE, mp.LLAVA_15_CHAT_TEMPLATE_PLAIN),
    mp.render_llava_interleave: (mp.LLAVA_INTERLEAVE_CHAT_TEMPLATE, mp.LLAVA_INTERLEAVE_CHAT_TEMPLATE_PLAIN),
}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("render", NATIVE, ids=["llava-1.5", "llava-interleave"])
def test_native_and_jinja_renderers_agree(render, add_generation_prompt):
    """The two renderers of each known template (the native reference and Jinja, which Transformers runs) give the
    same prompt on every conversation this suite tries with typed content parts: the named cases above and 300
    random ones. Their one difference is by design: a plain-string content is one text part for the native
    renderer and nothing for the template (test_string_content, test_interleave_string_content)."""
    pytest.importorskip("jinja2")
    tried = list(CONVERSATIONS.values()) + list(random_conversations(300))
    for conversation in tried:
        native = render(conversation, add_generation_prompt)
        for template in NATIVE[render]:
            assert mp.render_jinja(template, conversation, add_generation_prompt) == native, conversation
    as_string = [{"role": "user", "content": "What is shown?"}]
    as_parts = [{"role": "user", "content": [TEXT("What is shown?")]}]
    assert render(as_string, add_generation_prompt) == mp.render_jinja(
        NATIVE[render][0], as_parts, add_generation_prompt
    )
