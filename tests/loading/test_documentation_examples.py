"""The examples of Transformers' LLaVA documentation (docs/source/en/model_doc/llava.md), run on the bundled demo
model as a user adapts them: ``minillava.load_processor()`` / ``minillava.load_model()`` for ``from_pretrained``
(torch_dtype and device_map dropped), ``return_tensors="np"`` for ``"pt"``, no ``.to(device)``, the demo's sample
pictures (under "path" or "image", or as PIL images) for the URLs this machine cannot fetch, and the demo's own
questions. Everything else is the documentation's code: the multi-turn chat template, single-image inference with
the picture inside the conversation, batched inference both ways (apply_chat_template on two conversations, and
processor(images=..., text=...) after ``processor.tokenizer.padding_side = "left"``), and the config's names.
The batched answers must equal the answers of each prompt alone (greedy)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minillava
from minillava.loading.config import load_config

SAMPLES = Path(minillava.__file__).resolve().parent / "demo" / "samples"
DATA = Path(__file__).resolve().parents[1] / "data"


def sample(name):
    """(the path of a demo sample picture, its question, its answer)."""
    qa = json.loads((SAMPLES / f"{name}.json").read_text())
    return str(SAMPLES / f"{name}.png"), qa["question"], qa["answer"]


@pytest.fixture(scope="module")
def model():
    return minillava.load_model()


def user_turn(question, picture=None, key="path"):
    image = {"type": "image"} if picture is None else {"type": "image", key: picture}
    return {"role": "user", "content": [image, {"type": "text", "text": question}]}


def answers(processor, generate_ids, prompt_length):
    return [text.strip() for text in processor.batch_decode(generate_ids[:, prompt_length:], skip_special_tokens=True)]


def test_multi_turn_chat_template_example():
    """ "Formatting Prompts with Chat Templates": the documentation's conversation and its prompt (the documentation
    prints it with </s> after the answer and a stray "<"; llava-hf's template, which Transformers renders, writes
    neither)."""
    processor = minillava.load_processor()
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "What’s shown in this image?"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "This image shows a red stop sign."},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe the image in more details."},
            ],
        },
    ]
    text_prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert text_prompt == (
        "USER: <image>\nWhat’s shown in this image? ASSISTANT: This image shows a red stop sign. "
        "USER: Describe the image in more details. ASSISTANT:"
    )
    # ... and the same conversation tokenized with its picture inside: what the prompt and the picture give
    path, _, _ = sample("0_colour")
    conversation[0]["content"][0]["path"] = path
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="np"
    )
    expected = processor(images=[path], text=[text_prompt], return_tensors="np")
    assert inputs.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(inputs[key], expected[key], err_msg=key)


@pytest.mark.parametrize("key", ["path", "image"])
def test_single_image_inference_example(model, key):
    """ "Single input inference": apply_chat_template(tokenize=True, return_dict=True) with the picture inside the
    conversation, then generate and batch_decode, as the documentation writes them; the demo answers its
    question."""
    path, question, answer = sample("0_colour")
    processor = minillava.load_processor()
    conversation = [user_turn(question, path if key == "path" else Image.open(path), key)]
    inputs = processor.apply_chat_template(
        conversation,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="np",
    )
    generate_ids = model.generate(**inputs, max_new_tokens=30)
    decoded = processor.batch_decode(generate_ids, skip_special_tokens=True)
    assert len(decoded) == 1 and decoded[0].endswith(f"ASSISTANT: {answer}")
    assert answers(processor, generate_ids, inputs["input_ids"].shape[1]) == [answer]


def test_batched_inference_examples_answer_as_each_prompt_alone(model):
    """ "Batched inference", both forms the documentation has shown: apply_chat_template on a list of two
    conversations with padding=True (5.x), and prompts from apply_chat_template given with PIL images to
    processor(images=..., text=..., padding=True) after processor.tokenizer.padding_side = "left" (4.4x). Both
    give the same inputs, left-padded, and the same greedy answers as each prompt generated alone."""
    samples = [sample("0_colour"), sample("3_count")]
    assert len({len(q) for _, q, _ in samples}) == 2  # prompts of different lengths: the batch needs padding

    processor = minillava.load_processor()
    conversations = [[user_turn(question, path)] for path, question, _ in samples]
    inputs = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        padding=True,
        return_tensors="np",
    )
    generate_ids = model.generate(**inputs, max_new_tokens=30)
    batched = answers(processor, generate_ids, inputs["input_ids"].shape[1])

    processor = minillava.load_processor(padding_side=None)  # tokenizer_config.json's side (right) ...
    processor.tokenizer.padding_side = "left"  # ... and the documentation's advice
    prompts = [
        processor.apply_chat_template([user_turn(question)], add_generation_prompt=True) for _, question, _ in samples
    ]
    images = [Image.open(path) for path, _, _ in samples]
    inputs_2 = processor(images=images, text=prompts, padding=True, return_tensors="np")
    for key in inputs:
        np.testing.assert_array_equal(inputs_2[key], inputs[key], err_msg=key)
    assert (inputs_2["attention_mask"][:, 0] == 0).any() and (inputs_2["attention_mask"][:, -1] == 1).all()
    generate_ids_2 = model.generate(**inputs_2, max_new_tokens=30)
    np.testing.assert_array_equal(generate_ids_2, generate_ids)

    one_by_one = []
    for path, question, _ in samples:
        alone = processor.apply_chat_template(
            [user_turn(question, path)], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        ids = model.generate(**alone, max_new_tokens=30)
        one_by_one += answers(processor, ids, alone["input_ids"].shape[1])
    assert batched == one_by_one == [answer for _, _, answer in samples]


def test_return_tensors_pt_refused_saying_what_to_write(model):
    """A user who keeps "pt" is told minillava returns NumPy arrays and to write "np" or leave it out."""
    processor = minillava.load_processor()
    path, question, _ = sample("0_colour")
    with pytest.raises(ValueError, match=r"return_tensors='pt': minillava returns NumPy arrays.*'np' or leave it out"):
        processor(images=[path], text=[f"USER: <image>\n{question} ASSISTANT:"], padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match=r"return_tensors='pt': minillava returns NumPy arrays.*'np' or leave it out"):
        processor.apply_chat_template(
            [user_turn(question, path)],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )


def test_conversation_url_unreachable_says_to_give_a_path():
    """The documentation's URL, where no network reaches it (as here): one ConnectionError naming the URL."""
    processor = minillava.load_processor()
    url = "http://127.0.0.1:9/stopsigns/australia.jpg"  # no server on port 9: refused at once, network or not
    with pytest.raises(ConnectionError, match=r"127.0.0.1:9/stopsigns/australia.jpg: cannot fetch.*give its path"):
        processor.apply_chat_template(
            [user_turn("What is shown in this image?", url, "url")], add_generation_prompt=True, tokenize=True
        )


def test_config_answers_to_transformers_names(model):
    """The usage tip's model.config.vision_config.patch_size, and the names every Transformers user reaches for:
    the same objects as minillava's short names (one value, not a copy), equal to Transformers' LlavaConfig on
    llava-1.5-7b-hf's config.json."""
    config = model.config
    assert config.vision_config is config.vision and config.text_config is config.text
    assert config.image_token_id == config.image_token_index == 439  # the demo's config.json
    assert (config.vision_config.patch_size, config.text_config.hidden_size) == (6, 192)
    processor = minillava.load_processor()  # the tip: the processor's settings from the model's config
    assert processor.patch_size == config.vision_config.patch_size
    assert processor.vision_feature_select_strategy == config.vision_feature_select_strategy
    with pytest.raises(AttributeError):  # read-only: the value lives in one field
        config.vision_config = config.vision

    import transformers  # (a test dependency: imported where it is used, as it takes seconds)

    ours = load_config(DATA / "llava-1.5-7b-hf")
    theirs = transformers.LlavaConfig.from_pretrained(DATA / "llava-1.5-7b-hf")
    for name in ("patch_size", "image_size", "hidden_size", "num_hidden_layers"):
        assert getattr(ours.vision_config, name) == getattr(theirs.vision_config, name), name
    for name in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"):
        assert getattr(ours.text_config, name) == getattr(theirs.text_config, name), name
    assert ours.image_token_id == theirs.image_token_id == 32000
