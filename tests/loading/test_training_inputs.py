"""LlavaProcessor.training_inputs: whole conversations -> input_ids, attention_mask, pixel_values and labels in
LLaVA's training format. Checked against the format the demo model was trained in (tools/train_demo.py writes
"USER: <image>\\n{question} ASSISTANT: {answer}</s>" with the loss on the answer and </s>: the same ids, mask,
labels and pixels), on conversations of several turns (every answer and its </s> learnt, nothing else), on
llava-interleave's template (whose <|im_end|> ends each answer already), and the bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

import minillava
from minillava.demo import demo_folder

from ..tools import load_tool

td = load_tool("train_demo")


def turn(role, text, image=False):
    return {"role": role, "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}


def learnt(processor, out, row):
    """The labelled tokens of a row, decoded with the special tokens, one string per run of labelled tokens."""
    labels = out["labels"][row]
    runs, current = [], []
    for label in labels.tolist() + [-100]:
        if label == -100 and current:
            runs.append(processor.decode(current))
            current = []
        elif label != -100:
            current.append(label)
    return runs


def test_the_demo_training_format():
    processor = minillava.load_processor()
    examples = td.heldout_examples(10)
    conversations = [[turn("user", e.question, image=True), turn("assistant", e.answer)] for e in examples]
    ours = processor.training_inputs(conversations, images=[e.image for e in examples], padding_side="right")
    encoder = td.Encoder(Tokenizer.from_file(str(demo_folder() / "tokenizer.json")))
    input_ids, attention_mask, labels = encoder.batch(examples)
    np.testing.assert_array_equal(ours["input_ids"], input_ids)
    np.testing.assert_array_equal(ours["attention_mask"], attention_mask)
    np.testing.assert_array_equal(ours["labels"], labels)
    np.testing.assert_allclose(ours["pixel_values"], td.pixel_values([e.image for e in examples]), atol=1e-6)
    loss = minillava.load_model().loss(**ours)
    assert 0 < loss < 0.05  # the demo model answers these held-out questions (nearly all right)


def test_several_turns_every_answer_learnt_and_nothing_else():
    processor = minillava.load_processor()
    image = td.heldout_examples(1)[0].image
    long = [turn("user", "What colour is the star?", image=True), turn("assistant", "blue"),
            turn("user", "Where is it?"), turn("assistant", "top left")]  # fmt: skip
    short = [turn("user", "How many shapes are there?", image=True), turn("assistant", "two")]
    out = processor.training_inputs([long, short], images=[image, image])  # left-padded, the processor's default
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape
    assert learnt(processor, out, 0) == ["blue</s>", "top left</s>"]
    assert learnt(processor, out, 1) == ["two</s>"]
    assert out["attention_mask"][1, 0] == 0 and (out["labels"][out["attention_mask"] == 0] == -100).all()
    text = processor.decode(out["input_ids"][0])  # (the decoder writes the "▁" of "▁USER:" after </s> as a space)
    assert text.endswith("What colour is the star? ASSISTANT: blue</s> USER: Where is it? ASSISTANT: top left</s>")
    assert (out["labels"][out["input_ids"] == processor.image_token_id] == -100).all()


def test_interleave_answers_end_with_their_own_eos(tiny_checkpoint):
    processor = minillava.load_processor(tiny_checkpoint("interleave_chat", "hub", "float32", False))
    conversation = [turn("user", "What is this?", image=True), turn("assistant", "a cat"),
                    turn("user", "Sure?"), turn("assistant", "yes")]  # fmt: skip
    out = processor.training_inputs(conversation, images=[td.heldout_examples(1)[0].image])
    assert processor.eos_token == "<|im_end|>"
    # The template writes each answer after a newline ("<|im_start|>assistant\n" + "\na cat"), then <|im_end|>,
    # the eos: what the model says, newline included, and its end are learnt; no second eos is added.
    assert learnt(processor, out, 0) == ["\na cat<|im_end|>", "\nyes<|im_end|>"]
    assert out["pixel_values"].shape[0] == 1


@pytest.mark.parametrize(
    ("conversations", "n_images", "match"),
    [([turn("user", "Hi", image=True)], 1, r"conversations\[0\] must end with an assistant message"),
     ([turn("user", "Hi", image=True), turn("assistant", "a")], 0, "hold 1 image"),
     ([turn("user", "Hi"), turn("assistant", "a")], 1, r"hold 0 image\(s\) but 1 were given"),
     ([], 0, "conversations must be a conversation")],
)  # fmt: skip
def test_bad_conversations(conversations, n_images, match):
    processor = minillava.load_processor()
    images = [td.heldout_examples(1)[0].image] * n_images or None
    with pytest.raises(ValueError, match=match):
        processor.training_inputs(conversations, images=images)
