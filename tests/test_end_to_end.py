"""From pictures and a conversation to the answer: minillava's processor + generate against Transformers'
LlavaProcessor + LlavaForConditionalGeneration.generate() on the same checkpoint folder, for both families:
llava-1.5 (CLIP + Llama, its chat template and Llama tokenizer) and llava-interleave (SigLIP + Qwen2, its ChatML
template and Qwen's byte-level tokenizer, the processor files as the hub publishes them)."""

import numpy as np
import pytest
import torch
from PIL import Image

import minillava

from .fixtures import tiny_tokenizer

FAMILIES = {  # family -> tiny_checkpoint(variant, layout, dtype, shard)
    "llava-1.5": ("chat", "hub", "float16", True),
    # as llava-interleave-qwen-0.5b-hf: the hub's key layout, bfloat16, one file
    "llava-interleave": ("interleave_chat", "hub", "bfloat16", False),
}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def folder(tiny_checkpoint, family):
    return tiny_checkpoint(*FAMILIES[family])


@pytest.fixture(scope="module")
def ours(folder, device):
    return minillava.load_model(folder, device=device), minillava.load_processor(folder)


@pytest.fixture(scope="module")
def theirs(folder, hf_model):
    return hf_model(folder), tiny_tokenizer.reference_processor(folder, padding_side="left")


def photos():
    from skimage import data

    return [
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.chelsea()).resize((41, 29)),
        Image.fromarray(data.camera()),  # grayscale
    ]


def turn(text, n_images=0):
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


CONVERSATIONS = [  # (conversation, how many of the photos it shows)
    ([turn("What is shown in the image?", 1)], 1),
    ([turn("Compare the two pictures.", 2)], 2),
    (
        [
            {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
            turn("How many shapes are there?", 1),
            {"role": "assistant", "content": [{"type": "text", "text": "three"}]},
            turn("And which colour is the circle?"),
        ],
        1,
    ),
    ([turn("Say something in café style. 日本")], 0),
]

PROMPT_STARTS = {"llava-1.5": "USER: <image>\n", "llava-interleave": "<|im_start|>user\n<image>\n"}


def test_prompts_inputs_and_greedy_answers_equal_transformers(family, ours, theirs):
    """The four conversations in one left-padded batch: prompts, inputs, greedy ids and decoded answers equal."""
    model, processor = ours
    hf, hf_processor = theirs
    images = photos()
    prompts, batch_images = [], []
    for conversation, n_images in CONVERSATIONS:
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        assert prompt == hf_processor.apply_chat_template(conversation, add_generation_prompt=True)
        prompts.append(prompt)
        batch_images += images[:n_images]
    assert prompts[0].startswith(PROMPT_STARTS[family])

    inputs = processor(images=batch_images, text=prompts, padding=True)
    ref = hf_processor(images=batch_images, text=prompts, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values"):
        np.testing.assert_array_equal(inputs[key], ref[key].numpy(), err_msg=key)
    assert (inputs["attention_mask"][:, 0] == 0).any()  # left-padded

    ids = model.generate(**inputs, max_new_tokens=48)
    with torch.no_grad():
        ref_ids = hf.generate(**ref, max_new_tokens=48, do_sample=False).numpy()
    np.testing.assert_array_equal(ids, ref_ids)

    T = inputs["input_ids"].shape[1]
    assert len({tuple(row) for row in ids[:, T:].tolist()}) == len(prompts)  # answers that differ: a real test
    for skip in (True, False):
        answers = processor.batch_decode(ids[:, T:], skip_special_tokens=skip)
        assert answers == hf_processor.batch_decode(ref_ids[:, T:], skip_special_tokens=skip)


@pytest.mark.parametrize("case", range(len(CONVERSATIONS)), ids=["one-image", "two-images", "multi-turn", "text-only"])
def test_each_conversation_alone_equals_transformers(case, ours, theirs):
    """Each conversation alone (no padding): one image, two images in one prompt, a multi-turn one, text only."""
    model, processor = ours
    hf, hf_processor = theirs
    conversation, n_images = CONVERSATIONS[case]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    images = photos()[:n_images] or None
    inputs = processor(images=images, text=[prompt])
    ref = hf_processor(images=images, text=[prompt], return_tensors="pt")
    for key in inputs:
        np.testing.assert_array_equal(inputs[key], ref[key].numpy(), err_msg=key)
    ids = model.generate(**inputs, max_new_tokens=24)
    with torch.no_grad():
        ref_ids = hf.generate(**ref, max_new_tokens=24, do_sample=False).numpy()
    np.testing.assert_array_equal(ids, ref_ids)


def test_streamed_text_is_the_decoded_answer(ours):
    model, processor = ours
    conversation = [turn("What is shown in the image?", 1)]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=photos()[:1], text=[prompt])
    ids = model.generate(**inputs, max_new_tokens=40)
    pieces = list(model.stream(processor, **inputs, max_new_tokens=40))
    answer = processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "".join(pieces) == answer and len(pieces) > 1


def test_streaming_spelled_in_bytes_yields_whole_characters(ours):
    """Ω, 한국 and ✓ are not in either tiny tokenizer's vocabulary: they come as runs of byte tokens (byte fallback
    in the Llama tokenizer, single bytes in Qwen's byte-level one), and a character is yielded only once all its
    bytes are there."""
    from minillava.loading.processor import stream_text

    _, processor = ours
    text = "a café in 日本 🙂 ok, Ωmega 한국 ✓"
    ids = processor.tokenizer.encode(text, add_special_tokens=False).ids
    assert sum("\ufffd" in processor.decode([i]) for i in ids) >= 12  # tokens that are not whole characters
    pieces = list(stream_text(([i] for i in ids), processor.decode, processor.byte_token_ids))
    assert "".join(pieces) == processor.decode(ids) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_markers_and_images_must_agree_before_any_compute(ours):
    _, processor = ours
    prompt = processor.apply_chat_template([turn("What?", 1)], add_generation_prompt=True)
    with pytest.raises(ValueError, match="image"):
        processor(images=photos()[:2], text=[prompt])
    with pytest.raises(ValueError, match="image"):
        processor(text=[prompt])
