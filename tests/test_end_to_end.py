"""From pictures and a conversation to the answer: minillava's processor + generate against Transformers'
LlavaProcessor + LlavaForConditionalGeneration.generate() on the same checkpoint folder."""

import numpy as np
import pytest
import torch
from PIL import Image

import minillava

from .fixtures import tiny_tokenizer


@pytest.fixture(scope="module")
def folder(tiny_checkpoint):
    return tiny_checkpoint("chat", "hub", "float16", True)


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


def test_prompts_inputs_and_greedy_answers_equal_transformers(ours, theirs):
    model, processor = ours
    hf, hf_processor = theirs
    images = photos()
    prompts, batch_images = [], []
    for conversation, n_images in CONVERSATIONS:
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        assert prompt == hf_processor.apply_chat_template(conversation, add_generation_prompt=True)
        prompts.append(prompt)
        batch_images += images[:n_images]

    inputs = processor(images=batch_images, text=prompts, padding=True)
    ref = hf_processor(images=batch_images, text=prompts, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values"):
        np.testing.assert_array_equal(inputs[key], ref[key].numpy(), err_msg=key)

    ids = model.generate(**inputs, max_new_tokens=48)
    with torch.no_grad():
        ref_ids = hf.generate(**ref, max_new_tokens=48, do_sample=False).numpy()
    np.testing.assert_array_equal(ids, ref_ids)

    T = inputs["input_ids"].shape[1]
    for skip in (True, False):
        answers = processor.batch_decode(ids[:, T:], skip_special_tokens=skip)
        assert answers == hf_processor.batch_decode(ref_ids[:, T:], skip_special_tokens=skip)


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
    """Ω, 한국 and ✓ are not in the tiny tokenizer's vocabulary: they come as runs of byte tokens, and a
    character is yielded only once all its bytes are there."""
    from minillava.loading.processor import stream_text

    _, processor = ours
    text = "a café in 日本 🙂 ok, Ωmega 한국 ✓"
    ids = processor.tokenizer.encode(text, add_special_tokens=False).ids
    assert sum(i in processor.byte_token_ids for i in ids) >= 12
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
